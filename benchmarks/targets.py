"""The performance targets, each evaluated as a ratio of figures measured in the same run."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .metrics import Point

__all__ = ["Target", "evaluate", "evaluate_overhead"]

PRODUCT = "batcher-decompose"


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    model: str
    description: str
    value: float | None
    reference: float | None
    #: value / reference; compared with ``threshold`` (``>=`` or ``<=`` per ``higher_is_better``).
    ratio: float | None
    threshold: float
    higher_is_better: bool
    #: None when it could not be measured (``note`` says why).
    met: bool | None
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _target(
    name: str,
    model: str,
    description: str,
    value: float | None,
    reference: float | None,
    threshold: float,
    higher_is_better: bool = True,
    note: str = "",
) -> Target:
    ratio: float | None = None
    met: bool | None = None
    if value is not None and reference and math.isfinite(value) and math.isfinite(reference):
        ratio = value / reference
        met = ratio >= threshold if higher_is_better else ratio <= threshold
    return Target(name, model, description, value, reference, ratio, threshold, higher_is_better,
                  met, note)  # fmt: skip


def _best(points: Sequence[Point], contender: str) -> float | None:
    rates = [p.throughput for p in points if p.contender == contender]
    return max(rates) if rates else None


def _at(points: Sequence[Point], contender: str, mode: str, level: float) -> Point | None:
    for p in points:
        if p.contender == contender and p.mode == mode and p.level == level:
            return p
    return None


def evaluate(
    model: str,
    points: Sequence[Point],
    physical_limit: float,
    raw_batch1_latency_s: float,
    errors: dict[str, str],
) -> list[Target]:
    """Every per-model target; ``errors`` gives why a contender has no points."""
    best = _best(points, PRODUCT)
    targets = [
        _target(
            "saturated_vs_physical",
            model,
            "saturated throughput >= 0.95 x physical limit",
            best,
            physical_limit,
            0.95,
        )
    ]
    for other, threshold in (("naive", 3.0), ("ov-async-b1", 1.0), ("ov-auto-batch", 1.0)):
        targets.append(
            _target(
                f"vs_{other}",
                model,
                f"saturated throughput >= {threshold:g} x {other}",
                best,
                _best(points, other),
                threshold,
                note=f"{other} did not run: {errors[other]}" if other in errors else "",
            )
        )
    single = _at(points, PRODUCT, "closed", 1)
    targets.append(
        _target(
            "low_load_p50",
            model,
            "p50 latency with 1 caller <= 1.1 x raw batch-1 infer() (THROUGHPUT hint)",
            single.p50_ms / 1e3 if single else None,
            raw_batch1_latency_s,
            1.1,
            higher_is_better=False,
        )
    )
    return targets


def evaluate_overhead(best_rps: float) -> Target:
    return _target(
        "scheduler_overhead",
        "identity",
        "requests/s through the Batcher on the identity model >= 100k",
        best_rps,
        100_000.0,
        1.0,
    )
