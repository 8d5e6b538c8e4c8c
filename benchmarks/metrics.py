"""From a raw :class:`~benchmarks.load.Run` to the figures reported for one load point."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from .load import Run

__all__ = ["Mode", "Point", "summarize"]

Mode = Literal["closed", "open"]


@dataclass(frozen=True, slots=True)
class Point:
    """One contender at one load point; latencies in milliseconds, rates per second."""

    model: str
    contender: str
    mode: Mode
    #: Callers (closed loop) or offered load as a fraction of the physical limit (open loop).
    level: float
    #: Arrivals per second actually offered in the window (open loop; closed: throughput).
    offered_rate: float
    throughput: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    #: Real samples per inference; None when the contender cannot see its inferences.
    mean_chunk_size: float | None
    chunks_per_s: float | None
    cpu_us_per_sample: float
    completed: int
    dropped: int
    unfinished: int
    window_s: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def summarize(run: Run, model: str, contender: str, mode: Mode, level: float) -> Point:
    window = run.window_end - run.window_start
    starts = np.asarray(run.starts)
    ends = np.asarray(run.ends)
    done_in_window = int(np.count_nonzero((ends >= run.window_start) & (ends < run.window_end)))
    # Latency of requests that began in the window, wherever they ended (open loop: even in
    # the drain), so a backlog built in the window is charged in full.
    began = (starts >= run.window_start) & (starts < run.window_end)
    latencies_ms = (ends[began] - starts[began]) * 1e3
    p50, p95, p99 = (
        np.percentile(latencies_ms, [50, 95, 99]) if latencies_ms.size else (np.nan,) * 3
    )
    mean_chunk: float | None = None
    chunks_per_s: float | None = None
    if run.counters is not None:
        before, after = run.counters
        chunks = after.chunks - before.chunks
        chunks_per_s = chunks / window
        mean_chunk = (after.samples - before.samples) / chunks if chunks else 0.0
    throughput = done_in_window / window
    return Point(
        model=model,
        contender=contender,
        mode=mode,
        level=level,
        offered_rate=run.arrivals / window if mode == "open" else throughput,
        throughput=throughput,
        p50_ms=float(p50),
        p95_ms=float(p95),
        p99_ms=float(p99),
        mean_chunk_size=mean_chunk,
        chunks_per_s=chunks_per_s,
        cpu_us_per_sample=run.cpu_seconds / done_in_window * 1e6 if done_in_window else np.nan,
        completed=done_in_window,
        dropped=run.dropped,
        unfinished=run.unfinished,
        window_s=window,
    )
