"""PNG plots: throughput and latency against load, one line per contender, per model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on CI or servers
import matplotlib.pyplot as plt

__all__ = ["plot"]


def _series(model: dict[str, Any], mode: str, contender: str) -> list[dict[str, Any]]:
    points = [p for p in model["points"] if p["mode"] == mode and p["contender"] == contender]
    return sorted(points, key=lambda p: p["level"])


def _plot_mode(name: str, model: dict[str, Any], mode: str, out: Path) -> Path:
    limit = model["physical_limit"]["samples_per_s"]
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    for contender in model["contenders"]:
        points = _series(model, mode, contender)
        if not points:
            continue
        # Open loop: x is the rate actually offered in the window, so saturation reads off
        # directly against the diagonal.
        xs = [p["level"] if mode == "closed" else p["offered_rate"] for p in points]
        style = "-" if contender.startswith("batcher") else "--"
        width = 2.5 if contender == "batcher-decompose" else 1.3
        for ax, key in zip(axes, ("throughput", "p50_ms", "p99_ms"), strict=True):
            ax.plot(xs, [p[key] for p in points], style, marker="o", ms=3, lw=width,
                    label=contender)  # fmt: skip
    axes[0].axhline(limit, color="black", lw=1, ls=":", label="physical limit")
    raw_ms = model["raw_batch1_latency_ms"]["throughput_hint"]
    axes[1].axhline(raw_ms, color="black", lw=1, ls=":", label="raw batch-1 infer()")
    axes[1].legend(fontsize=7, loc="upper left")
    if mode == "open":
        top = max(model["offered_rates"].values())
        axes[0].plot([0, top], [0, top], color="grey", lw=0.8, ls=":", label="offered")
    xlabel = "concurrent callers" if mode == "closed" else "offered load (samples/s)"
    titles = ("throughput (samples/s)", "p50 latency (ms)", "p99 latency (ms)")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
        if mode == "closed":
            ax.set_xscale("log", base=2)
    for ax in axes[1:]:
        ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    loop = "closed loop" if mode == "closed" else "open loop, Poisson arrivals"
    fig.suptitle(f"{name}: {model['description']} ({loop})")
    fig.tight_layout()
    path = out / f"{name}_{mode}.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot(results: dict[str, Any], out: Path) -> list[Path]:
    """One PNG per model and loop kind; returns the files written."""
    return [
        _plot_mode(name, model, mode, out)
        for name, model in results["models"].items()
        for mode in ("closed", "open")
        if model["points"]
    ]
