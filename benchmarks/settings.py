"""How long and at which load points a run measures: the full run and the quick one."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .contenders import ContenderSpec

__all__ = ["FULL", "QUICK", "Settings", "point_seconds", "setup_seconds"]


@dataclass(frozen=True, slots=True)
class Settings:
    """Durations and load points of one run."""

    quick: bool
    warmup_s: float
    window_s: float
    callers: tuple[int, ...]
    #: Open-loop offered load as fractions of the measured physical limit.
    load_factors: tuple[float, ...]
    physical_s: float
    latency_s: float
    max_outstanding: int
    drain_timeout_s: float
    overhead_callers: tuple[int, ...]
    profile_budget_s: float
    auto_batch_timeout_ms: int
    seed: int


FULL = Settings(
    quick=False,
    warmup_s=0.3,
    window_s=2.0,
    callers=(1, 4, 16, 64, 256),
    load_factors=(0.1, 0.3, 0.6, 0.9, 1.2),
    physical_s=6.0,
    latency_s=2.0,
    max_outstanding=2048,
    drain_timeout_s=10.0,
    overhead_callers=(256, 1024),
    profile_budget_s=1.0,
    auto_batch_timeout_ms=1,
    seed=0,
)
QUICK = dataclasses.replace(
    FULL,
    quick=True,
    warmup_s=0.05,
    window_s=0.2,
    callers=(1, 32),
    load_factors=(0.3, 1.2),
    physical_s=0.6,
    latency_s=0.2,
    max_outstanding=256,
    drain_timeout_s=2.0,
    overhead_callers=(256,),
    profile_budget_s=0.1,
)


def point_seconds(s: Settings) -> float:
    """Planned seconds of one load point, for the ETA."""
    return s.warmup_s + s.window_s + 0.1


def setup_seconds(s: Settings, spec: ContenderSpec) -> float:
    """Planned seconds to get a contender ready, for the ETA."""
    return 1.0 + (s.profile_budget_s if spec.name == "batcher-auto" else 0.0)
