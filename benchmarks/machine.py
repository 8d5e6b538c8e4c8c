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

__all__ = ["describe"]


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


def describe(core: ov.Core) -> dict[str, Any]:
    """Date, machine, library versions and the commit measured (``+dirty``: uncommitted)."""
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": str(core.get_property("CPU", "FULL_DEVICE_NAME")),
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
