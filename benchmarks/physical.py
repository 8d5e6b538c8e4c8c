"""What the hardware does without any request handling: the yardsticks for every contender.

These run synchronously, with no event loop and no per-request Python work, as
``benchmark_app`` would: pre-batched inputs written into each infer request once, then
``AsyncInferQueue.start_async()`` as fast as requests free up.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import openvino as ov

from batcher._model import compile_for_batch

from .workloads import Sample, Workload

__all__ = [
    "PhysicalLimit",
    "RawLatency",
    "measure_physical_limit",
    "measure_raw_latency",
    "reference_outputs",
]

_THROUGHPUT = {"PERFORMANCE_HINT": "THROUGHPUT"}
_LATENCY = {"PERFORMANCE_HINT": "LATENCY"}


@dataclass(frozen=True, slots=True)
class PhysicalLimit:
    """Samples/s of each static batch size (median of repeats) and the best of them."""

    per_size: dict[int, float]
    best_size: int
    best: float
    infer_requests: int


@dataclass(frozen=True, slots=True)
class RawLatency:
    """Median seconds of one synchronous batch-1 inference, per performance hint."""

    throughput_hint: float
    latency_hint: float


def _median_rate(run: Callable[[float], float], seconds: float, repeats: int) -> float:
    run(seconds / (2 * repeats))  # warm-up: first runs pay one-off allocation
    return statistics.median(run(seconds / repeats) for _ in range(repeats))


def _queue_rate(compiled: Any, batch: npt.NDArray[Any], jobs: int) -> Callable[[float], float]:
    queue = ov.AsyncInferQueue(compiled, jobs)
    for i in range(len(queue)):
        queue[i].get_input_tensor(0).data[...] = batch

    def run(seconds: float) -> float:
        count = 0
        started = time.perf_counter()
        deadline = started + seconds
        while time.perf_counter() < deadline:
            queue.start_async()  # blocks while every request is busy: that is the pacing
            count += 1
        queue.wait_all()
        return float(count * batch.shape[0] / (time.perf_counter() - started))

    return run


def measure_physical_limit(
    core: ov.Core,
    workload: Workload,
    samples: list[Sample],
    sizes: Sequence[int],
    seconds: float,
    repeats: int = 3,
) -> PhysicalLimit:
    """The best static batch size's throughput with the THROUGHPUT hint, pre-batched data."""
    model = workload.build()
    per_size: dict[int, float] = {}
    jobs: dict[int, int] = {}
    for size in sizes:
        compiled = compile_for_batch(core, model, size, "CPU", _THROUGHPUT)
        jobs[size] = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        rate = _queue_rate(compiled, workload.batch_of(samples, size), jobs[size])
        per_size[size] = _median_rate(rate, seconds / len(sizes), repeats)
    best_size = max(per_size, key=lambda s: per_size[s])
    return PhysicalLimit(per_size, best_size, per_size[best_size], jobs[best_size])


def _sync_latency(compiled: Any, sample: Sample, seconds: float) -> float:
    request = compiled.create_infer_request()
    request.get_input_tensor(0).data[...] = sample[None]
    request.infer()
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < 20 or time.perf_counter() < deadline:
        started = time.perf_counter()
        request.infer()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure_raw_latency(
    core: ov.Core, workload: Workload, sample: Sample, seconds: float
) -> RawLatency:
    """Batch-1 ``infer()`` latency under both hints; the batcher compiles with THROUGHPUT."""
    model = workload.build()
    by_hint = [
        _sync_latency(compile_for_batch(core, model, 1, "CPU", hint), sample, seconds / 2)
        for hint in (_THROUGHPUT, _LATENCY)
    ]
    return RawLatency(throughput_hint=by_hint[0], latency_hint=by_hint[1])


def reference_outputs(core: ov.Core, workload: Workload, samples: list[Sample]) -> list[Any]:
    """Each sample's output from a plain batch-1 model, to check every contender against."""
    compiled = compile_for_batch(core, workload.build(), 1, "CPU", {})
    request = compiled.create_infer_request()
    outputs = []
    for sample in samples:
        request.infer({0: sample[None]})
        outputs.append(np.array(request.get_output_tensor(0).data[0]))
    return outputs
