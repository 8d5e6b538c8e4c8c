"""Load generators: closed loop (C callers back to back) and open loop (Poisson arrivals).

Both run a warm-up, then a measurement window whose bounds, process CPU time and inference
counters are snapshotted by a marker task, then let outstanding requests finish. Every
request's start and end are recorded; :mod:`benchmarks.metrics` turns them into figures.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import anyio
import numpy as np

from .contenders import Counters
from .workloads import Sample

__all__ = ["MIN_COMPLETIONS", "Infer", "LoadTiming", "Run", "closed_loop", "open_loop", "run_load"]

#: Requests that must finish inside a window for its figures to mean anything.
MIN_COMPLETIONS = 5

Infer = Callable[[Sample], Awaitable[Any]]
CounterSource = Callable[[], Counters | None]


@dataclass(slots=True)
class Run:
    """Raw record of one load point; times are ``perf_counter`` seconds."""

    #: When each finished request was issued (closed) or was due to arrive (open).
    starts: list[float]
    ends: list[float]
    window_start: float = 0.0
    window_end: float = 0.0
    cpu_seconds: float = 0.0
    counters: tuple[Counters, Counters] | None = None
    #: Arrivals in the window shed because ``max_outstanding`` requests were in flight.
    dropped: int = 0
    #: Arrivals in the window (open loop), issued or dropped.
    arrivals: int = 0
    #: Requests still running when the drain bound passed (cancelled, not counted).
    unfinished: int = 0


class _Window:
    """Snapshots taken at the window's bounds, by a task sleeping until each.

    The window stays open past its planned end until ``MIN_COMPLETIONS`` requests finished
    in it (bounded by ``extend_limit``): a stall of the shared machine during a short quick
    window must not leave a point without any figure.
    """

    def __init__(self, run: Run, counters: CounterSource, extend_limit: float) -> None:
        self._run = run
        self._counters = counters
        self._extend_limit = extend_limit
        self._completed = 0
        self._enough = anyio.Event()
        self.open = False
        #: Set once the window closed: closed-loop callers stop issuing then.
        self.closed = anyio.Event()

    def completed(self) -> None:
        """Count one request that finished now."""
        if self.open:
            self._completed += 1
            if self._completed >= MIN_COMPLETIONS:
                self._enough.set()

    async def mark(self, start: float, end: float) -> None:
        run = self._run
        await anyio.sleep(max(0.0, start - time.perf_counter()))
        run.window_start = time.perf_counter()
        cpu = time.process_time()
        before = self._counters()
        self.open = True
        await anyio.sleep(max(0.0, end - time.perf_counter()))
        if self._completed < MIN_COMPLETIONS:
            with anyio.move_on_after(self._extend_limit):
                await self._enough.wait()
        self.open = False
        run.window_end = time.perf_counter()
        run.cpu_seconds = time.process_time() - cpu
        after = self._counters()
        if before is not None and after is not None:
            run.counters = (before, after)
        self.closed.set()


async def closed_loop(
    infer: Infer,
    samples: Sequence[Sample],
    callers: int,
    warmup: float,
    window: float,
    counters: CounterSource,
    drain_timeout: float,
) -> Run:
    """``callers`` tasks, each issuing its next request as soon as the previous returns."""
    run = Run([], [])
    started = time.perf_counter()
    marker = _Window(run, counters, drain_timeout)
    in_flight = 0

    async def caller(first: int) -> None:
        nonlocal in_flight
        index = first
        while not marker.closed.is_set():
            issued = time.perf_counter()
            in_flight += 1
            await infer(samples[index % len(samples)])
            in_flight -= 1
            run.starts.append(issued)
            run.ends.append(time.perf_counter())
            marker.completed()
            index += callers

    async with anyio.create_task_group() as group:
        group.start_soon(marker.mark, started + warmup, started + warmup + window)
        async with anyio.create_task_group() as callers_group:
            for k in range(callers):
                callers_group.start_soon(caller, k)
            await marker.closed.wait()
            # Callers stop issuing now and leave after their last request; the deadline only
            # cuts off requests that hang.
            callers_group.cancel_scope.deadline = anyio.current_time() + drain_timeout
        run.unfinished = in_flight
    return run


def _arrival_times(rate: float, duration: float, seed: int) -> list[float]:
    """Poisson arrival offsets in ``[0, duration)``, the same for every contender."""
    rng = np.random.default_rng(seed)
    expected = rate * duration
    gaps = rng.exponential(1.0 / rate, int(expected + 6 * math.sqrt(expected) + 16))
    offsets = np.cumsum(gaps)
    while offsets[-1] < duration:
        more = np.cumsum(rng.exponential(1.0 / rate, len(offsets))) + offsets[-1]
        offsets = np.concatenate([offsets, more])
    return [float(t) for t in offsets[offsets < duration]]


class _Worker:
    """A parked task that runs one request each time the generator hands it an arrival."""

    __slots__ = ("arrival", "go", "sample")

    def __init__(self) -> None:
        self.go = anyio.Event()
        self.arrival = 0.0
        self.sample: Sample | None = None


async def open_loop(
    infer: Infer,
    samples: Sequence[Sample],
    rate: float,
    warmup: float,
    window: float,
    counters: CounterSource,
    drain_timeout: float,
    max_outstanding: int,
    seed: int,
) -> Run:
    """Requests arrive as a Poisson process at ``rate``/s whether or not earlier ones finished.

    Latency runs from the scheduled arrival, so time lost by a generator falling behind is
    charged to the request (no coordinated omission). Arrivals while ``max_outstanding``
    requests are in flight are shed and counted, as a server with a bounded queue would.

    Requests run on a pool of ``max_outstanding`` parked tasks: waking one costs a fraction
    of spawning a task per arrival (anyio's ``start_soon`` is ~60 us on the reference
    machine), which would cap the offered rate below the fastest contenders.
    """
    run = Run([], [])
    marker = _Window(run, counters, drain_timeout)
    idle: list[_Worker] = []
    busy = 0
    generating = True
    drained = anyio.Event()

    async def work(me: _Worker) -> None:
        nonlocal busy
        while True:
            await me.go.wait()
            me.go = anyio.Event()
            try:
                assert me.sample is not None
                await infer(me.sample)
                run.starts.append(me.arrival)
                run.ends.append(time.perf_counter())
                marker.completed()
            finally:
                busy -= 1
                idle.append(me)
                if not busy and not generating:
                    drained.set()

    async with anyio.create_task_group() as group, anyio.create_task_group() as pool:
        for _ in range(max_outstanding):
            idle.append(_Worker())
            pool.start_soon(work, idle[-1])
        started = time.perf_counter()
        due = [started + t for t in _arrival_times(rate, warmup + window, seed)]
        window_start = started + warmup
        stop = window_start + window
        group.start_soon(marker.mark, window_start, stop)
        index = 0
        while index < len(due):
            now = time.perf_counter()
            # Catch up in a burst: sleeps are coarser than arrival gaps at high rates.
            while index < len(due) and due[index] <= now:
                arrival = due[index]
                in_window = arrival >= window_start
                run.arrivals += in_window
                if idle:
                    worker = idle.pop()
                    worker.arrival = arrival
                    worker.sample = samples[index % len(samples)]
                    busy += 1
                    worker.go.set()
                else:
                    run.dropped += in_window
                index += 1
            if index < len(due):
                await anyio.sleep(due[index] - now)
        generating = False
        await marker.closed.wait()
        if busy:
            with anyio.move_on_after(drain_timeout):
                await drained.wait()
        run.unfinished = busy
        pool.cancel_scope.cancel()
    return run


class LoadTiming(Protocol):
    """The durations and bounds a load point runs with (each suite's settings have them)."""

    @property
    def warmup_s(self) -> float: ...
    @property
    def window_s(self) -> float: ...
    @property
    def drain_timeout_s(self) -> float: ...
    @property
    def max_outstanding(self) -> int: ...


async def run_load(
    infer: Infer,
    samples: Sequence[Sample],
    counters: CounterSource,
    timing: LoadTiming,
    mode: Literal["closed", "open"],
    level: float,
    rate: float,
    seed: int,
) -> Run:
    """One load point: ``level`` callers back to back (closed), or ``rate`` arrivals/s (open)."""
    if mode == "closed":
        return await closed_loop(
            infer,
            samples,
            int(level),
            timing.warmup_s,
            timing.window_s,
            counters,
            timing.drain_timeout_s,
        )
    return await open_loop(
        infer,
        samples,
        rate,
        timing.warmup_s,
        timing.window_s,
        counters,
        timing.drain_timeout_s,
        timing.max_outstanding,
        seed,
    )
