"""Scheduler overhead: requests/s through the Batcher when inference costs almost nothing.

The same closed-loop generator drives a no-op "contender" first: its rate is the ceiling
this Python process can measure at all, so the Batcher's figure is read against it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio.lowlevel
import numpy as np
import numpy.typing as npt
import openvino as ov

from batcher import BatcherConfig

from .contenders import SIZES, BatcherContender, ContenderSpec, Options
from .load import closed_loop, open_loop
from .metrics import Point, summarize
from .workloads import IDENTITY, Sample

__all__ = ["Overhead", "measure_overhead"]

SPEC = ContenderSpec(
    "batcher-decompose",
    "batcher",
    "Batcher on the identity model, sizes 1..32, decompose",
    BatcherConfig(batch_sizes=SIZES, strategy="decompose"),
)


@dataclass(frozen=True, slots=True)
class Overhead:
    #: Requests/s of the load generator awaiting nothing, per caller count.
    generator_ceiling: dict[int, float]
    #: The highest open-loop rate offered in the run, and what the generator completed of
    #: it awaiting nothing: when these differ, no contender could have reached that rate.
    open_loop_offered: float
    open_loop_ceiling: float
    points: list[Point]

    @property
    def best(self) -> Point:
        return max(self.points, key=lambda p: p.throughput)

    def to_json(self) -> dict[str, Any]:
        best = self.best
        return {
            "model": IDENTITY.description,
            "contender": SPEC.description,
            "generator_ceiling_rps": {str(k): v for k, v in self.generator_ceiling.items()},
            "open_loop_generator_offered_rps": self.open_loop_offered,
            "open_loop_generator_ceiling_rps": self.open_loop_ceiling,
            "points": [p.to_json() for p in self.points],
            "best_rps": best.throughput,
            # Per-request cost beyond the generator's own, at the best caller count.
            "scheduler_us_per_request": 1e6 / best.throughput
            - 1e6 / self.generator_ceiling[int(best.level)],
        }


async def _nothing(sample: Sample) -> npt.NDArray[Any]:
    await anyio.lowlevel.checkpoint()
    return sample


async def measure_overhead(
    core: ov.Core,
    callers: list[int],
    warmup: float,
    window: float,
    options: Options,
    seed: int,
    open_rate: float,
    max_outstanding: int,
    on_point: Callable[[Point], None],
) -> Overhead:
    samples = IDENTITY.samples(64, seed)
    ceiling = {}
    for count in callers:
        run = await closed_loop(_nothing, samples, count, warmup, window, lambda: None, 5.0)
        point = summarize(run, "identity", "no-op", "closed", count)
        ceiling[count] = point.throughput
        on_point(point)
    run = await open_loop(
        _nothing, samples, open_rate, warmup, window, lambda: None, 5.0, max_outstanding, seed
    )
    point = summarize(run, "identity", "no-op", "open", open_rate)
    on_point(point)
    points = []
    async with BatcherContender(SPEC, IDENTITY, core, options) as contender:
        expected = samples[0]
        got = await contender.infer(expected)
        np.testing.assert_allclose(got, expected)
        for count in callers:
            run = await closed_loop(
                contender.infer, samples, count, warmup, window, contender.counters, 5.0
            )
            points.append(summarize(run, "identity", SPEC.name, "closed", count))
            on_point(points[-1])
    return Overhead(ceiling, open_rate, point.throughput, points)
