"""Where and with what a run was measured, recorded with its results."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

import batcher

__all__ = ["describe", "headline"]


def _commit() -> str:
    try:
        here = Path(__file__).resolve().parent
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "../batcher"],
            cwd=here,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return (sha or "unknown") + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"


def _cpu_name(core: ov.Core | None) -> str:
    if core is not None:
        return str(core.get_property("CPU", "FULL_DEVICE_NAME"))
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(core: ov.Core | None = None) -> dict[str, Any]:
    """Date, machine, library versions and the commit measured (``+dirty``: uncommitted).

    ``core``: OpenVINO's name for the CPU, when the caller has a core open anyway.
    """
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_name(core),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "openvino": ov.get_version(),
        "numpy": np.__version__,
        "anyio": metadata.version("anyio"),
        "batcher": batcher.__version__,
        "commit": _commit(),
        "load_average_at_start": os.getloadavg(),
    }


def headline(machine: dict[str, Any]) -> str:
    """The one line every results file opens with: when, where, and what was measured."""
    return (
        f"{machine['date']} on {machine['cpu']} ({machine['cores']} cores), Python "
        f"{machine['python']}, OpenVINO {machine['openvino']}, batcher {machine['batcher']} "
        f"({machine['commit']})"
    )
