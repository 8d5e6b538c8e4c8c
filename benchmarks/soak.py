"""Soak test: a million single-sample requests with cancellations, bad samples and faults.

``python -m benchmarks.soak [--requests N] [--out DIR] [--seed S] [--backend trio]`` pushes
N requests through one :class:`~batcher.Batcher` serving a small MLP and then checks that

* every request was resolved exactly once (a result, its specific error, or cancellation);
* every result equals batch-1 inference of the same sample (relative error <= 1e-5);
* every malformed sample got :class:`~batcher.InvalidSample`, every request in a chunk whose
  inference was made to fail got :class:`~batcher.InferenceError` chained to that fault,
  ``QueueFull`` and ``DeadlineExceeded`` came only to requests that could get them;
* ``Batcher.statistics()`` adds up and agrees with the caller-side tallies;
* resident memory at the end is within 10 % of what it was after warm-up.

It writes ``soak.json`` and ``soak.md`` to ``benchmarks/results/`` (or ``--out``) and exits
with status 1 when any invariant is broken. ``tests/test_soak.py`` runs a short version.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import math
import random
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import numpy as np
import numpy.typing as npt
import openvino as ov
import psutil

from batcher import (
    Batcher,
    BatcherConfig,
    BatcherStatistics,
    Chunk,
    DeadlineExceeded,
    InferenceError,
    InvalidSample,
    QueueFull,
    models,
)

from .machine import describe, headline

__all__ = ["InjectedFault", "Invariant", "SoakConfig", "SoakReport", "main", "run_soak"]

Array = npt.NDArray[Any]

# Per-request outcome codes, as seen by the caller.
UNRESOLVED, OK, INVALID, REJECTED, EXPIRED, FAILED, CANCELLED, OTHER = range(8)
OUTCOME_NAMES = (
    "unresolved",
    "completed",
    "invalid",
    "rejected",
    "expired",
    "failed",
    "cancelled",
    "other",
)

# Batch-1 and batched kernels may sum in different orders; the brief's bound, taken relative
# to each sample's largest output so that outputs near zero do not need absolute slack.
RELATIVE_TOLERANCE = 1e-5
# Keep a handful of examples per broken invariant: enough to debug, bounded in memory.
_MAX_EXAMPLES = 5
# OpenVINO may pick bf16/f16 kernels on CPUs that have them; results must be f32 to compare.
_F32 = (("INFERENCE_PRECISION_HINT", "f32"),)
# Concurrency levels the load phases switch between: idle-ish to overloaded.
_LOAD_LEVELS = (1, 4, 16, 64, 256, 1_000_000)
_LOAD_WEIGHTS = (0.04, 0.08, 0.13, 0.2, 0.25, 0.3)


class InjectedFault(RuntimeError):
    """The error the soak's chunk hook raises to fail a whole chunk on purpose."""


@dataclass(frozen=True, slots=True)
class SoakConfig:
    """What the soak sends and how the Batcher under test is configured."""

    requests: int = 1_000_000
    seed: int = 0
    #: Concurrent caller tasks; each sends one request at a time.
    callers: int = 384
    #: Distinct good samples; request i uses sample ``i % pool``.
    pool: int = 2048
    model_sizes: tuple[int, ...] = (16, 32, 8)
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    strategy: str = "auto"
    max_queue_size: int = 192
    priority_levels: int = 3
    max_delay: float = 0.0002
    max_inflight_chunks: int | None = None
    profile_budget: float = 0.5
    #: Shares of requests: cancelled callers, malformed samples, short deadlines, and
    #: (of the rest) callers using ``submit_nowait``.
    cancel_fraction: float = 0.20
    malformed_fraction: float = 0.01
    deadline_fraction: float = 0.05
    nowait_fraction: float = 0.10
    #: Share of chunks whose inference the hook fails.
    fault_rate: float = 0.005
    #: Resident memory may grow by at most this share between warm-up and the end.
    memory_tolerance: float = 0.10
    #: Requests after which the memory baseline is taken (default: 5 %, 1,000 to 50,000).
    warmup_requests: int | None = None
    #: Fail (and stop) when no request finishes for this many seconds.
    stall_seconds: float = 120.0
    progress_every: float = 5.0

    @property
    def warmup(self) -> int:
        if self.warmup_requests is not None:
            return min(self.warmup_requests, self.requests)
        return min(max(self.requests // 20, 1_000), 50_000, self.requests)


@dataclass(frozen=True, slots=True)
class Invariant:
    name: str
    ok: bool
    detail: str


@dataclass(slots=True)
class SoakReport:
    """Everything a run measured; :attr:`passed` is False when any invariant broke."""

    config: dict[str, Any]
    backend: str
    machine: dict[str, Any]
    started_at: str
    duration_s: float
    rate_per_s: float
    outcomes: dict[str, int]
    statistics: dict[str, Any]
    derived: dict[str, Any]
    memory: dict[str, float]
    invariants: list[Invariant] = field(default_factory=list)
    #: Free text from ``--note``, e.g. which changes to the batcher were applied.
    note: str = ""

    @property
    def passed(self) -> bool:
        return all(inv.ok for inv in self.invariants)

    def failures(self) -> str:
        return "\n".join(f"{i.name}: {i.detail}" for i in self.invariants if not i.ok)

    def to_json(self) -> str:
        data = asdict(self)
        data["passed"] = self.passed
        return json.dumps(data, indent=2, default=str) + "\n"

    def to_markdown(self) -> str:
        status = "PASSED" if self.passed else "FAILED"
        lines = [
            f"# Soak: {self.config['requests']:,} requests ({self.backend}) - {status}",
            "",
            f"{headline(self.machine)}.",
            "",
            f"Duration {self.duration_s:.1f} s, {self.rate_per_s:,.0f} requests/s.",
            "",
            *([f"Note: {self.note}", ""] if self.note else []),
            "| outcome (caller side) | requests |",
            "|---|---:|",
            *(f"| {name} | {count:,} |" for name, count in self.outcomes.items()),
            "",
            "| statistics() | value |",
            "|---|---:|",
            *(
                f"| {name} | {value:,} |"
                for name, value in self.statistics.items()
                if isinstance(value, int)
            ),
            "",
            "| batch size | chunks | samples | failed chunks |",
            "|---:|---:|---:|---:|",
            *(
                f"| {size} | {chunks:,} | {self.statistics['samples_per_size'].get(size, 0):,} "
                f"| {self.statistics['failed_chunks_per_size'].get(size, 0):,} |"
                for size, chunks in sorted(self.statistics["chunks_per_size"].items())
            ),
            "",
            "| derived | value |",
            "|---|---:|",
            *(f"| {name} | {_fmt(value)} |" for name, value in self.derived.items()),
            "",
            "| memory | value |",
            "|---|---:|",
            *(f"| {name} | {_fmt(value)} |" for name, value in self.memory.items()),
            "",
            "| invariant | result | detail |",
            "|---|---|---|",
            *(
                f"| {i.name} | {'pass' if i.ok else '**FAIL**'} | {i.detail} |"
                for i in self.invariants
            ),
            "",
        ]
        return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


# --------------------------------------------------------------------------- the workload


class _Plan:
    """Every request's sample, role and timing, drawn up front from the seed."""

    def __init__(self, cfg: SoakConfig) -> None:
        n = cfg.requests
        rng = np.random.default_rng(cfg.seed)
        self.samples = rng.standard_normal((cfg.pool, cfg.model_sizes[0])).astype(np.float32)
        self.samples64 = self.samples.astype(np.float64)
        self.malformed = rng.random(n) < cfg.malformed_fraction
        good = ~self.malformed
        self.cancel = good & (rng.random(n) < cfg.cancel_fraction)
        self.deadline = good & (rng.random(n) < cfg.deadline_fraction)
        # Cancelled callers never wait for queue room: whether the Batcher counts a caller
        # cancelled while waiting for room as submitted depends on an instant the soak cannot
        # see, and the submitted count could no longer be checked exactly.
        self.nowait = self.cancel | (good & (rng.random(n) < cfg.nowait_fraction))
        self.priority = rng.integers(0, cfg.priority_levels, n, dtype=np.int8)
        # Half the cancellations after a number of event-loop passes, half after a time.
        self.cancel_by_steps = rng.random(n) < 0.5
        self.cancel_steps = np.minimum(rng.geometric(1 / 12, n) - 1, 200).astype(np.int16)
        self.cancel_after = np.exp(rng.uniform(math.log(1e-5), math.log(3e-3), n))
        self.timeout = np.exp(rng.uniform(math.log(1e-4), math.log(1e-2), n))
        # Arrival jitter: a few event-loop passes between a caller's requests.
        self.gap = rng.choice(4, n, p=(0.55, 0.25, 0.12, 0.08)).astype(np.int8)
        # Good samples also arrive as float64 (cast) or as an {"x": ...} mapping.
        self.form = rng.choice(3, n, p=(0.9, 0.05, 0.05)).astype(np.int8)
        self.bad_kind = rng.integers(0, 1 << 30, n)
        # Load phases: the number of callers allowed to be active changes every few
        # thousand requests, so the queue runs empty, moderate and full in turn.
        self.phase_starts: list[int] = []
        self.phase_levels: list[int] = []
        start = 0
        while start < n:
            self.phase_starts.append(start)
            level = int(rng.choice(_LOAD_LEVELS, p=_LOAD_WEIGHTS))
            self.phase_levels.append(min(level, cfg.callers))
            start += int(rng.integers(200, 4000))


def _malformed_samples(features: int) -> list[object]:
    good = np.zeros(features, np.float32)
    return [
        np.zeros(features - 1, np.float32),  # wrong length
        np.zeros((features, 1), np.float32),  # extra axis
        np.zeros((1, features), np.float32),  # a batch axis added by mistake
        np.float32(1.0),  # scalar
        np.zeros(features, np.complex64),  # dtype that cannot be cast to float32
        np.full(features, "a"),  # strings
        {},  # no inputs at all
        {"y": good},  # wrong input name
        {"x": good, "extra": good},  # an unknown extra input
        None,
        [[1.0, 2.0], [3.0]],  # ragged: not an array at all
    ]


def _reference_outputs(model: ov.Model, samples: Array) -> Array:
    """Batch-1 inference of every pool sample on a separately compiled model."""
    copy = model.clone()
    copy.reshape({port: [1, *list(port.get_partial_shape())[1:]] for port in copy.inputs})
    compiled = ov.Core().compile_model(copy, "CPU", dict(_F32))
    request = compiled.create_infer_request()
    rows = []
    for sample in samples:
        request.infer({0: sample[None]})
        rows.append(np.array(request.get_output_tensor(0).data[0]))
    return np.stack(rows)


class _FaultInjector:
    """The chunk hook: fails a seeded share of chunks and counts every chunk it sees."""

    def __init__(self, rate: float, seed: int) -> None:
        self._rate = rate
        self._rng = random.Random(seed)
        # The hook runs in worker threads, several at once.
        self._lock = threading.Lock()
        self.chunks = 0
        self.faults = 0
        self.fault_samples = 0

    def __call__(self, chunk: Chunk) -> None:
        with self._lock:
            self.chunks += 1
            fail = self._rng.random() < self._rate
            if fail:
                self.faults += 1
                self.fault_samples += chunk.samples
                number = self.faults
        if fail:
            raise InjectedFault(f"injected fault #{number} in a {chunk.size}-row chunk")


class _Cancellation:
    __slots__ = ("scope", "wanted")

    def __init__(self, scope: anyio.CancelScope) -> None:
        self.scope = scope
        self.wanted = True


class _Reaper:
    """Cancels registered scopes after a given number of its own event-loop passes."""

    def __init__(self) -> None:
        self._tick = 0
        self._due: dict[int, list[_Cancellation]] = {}
        self._pending = 0
        self._wake = anyio.Event()

    def schedule(self, scope: anyio.CancelScope, steps: int) -> _Cancellation:
        entry = _Cancellation(scope)
        self._due.setdefault(self._tick + steps, []).append(entry)
        self._pending += 1
        self._wake.set()
        return entry

    async def run(self) -> None:
        while True:
            if not self._pending:
                self._wake = anyio.Event()
                await self._wake.wait()
                continue
            await anyio.lowlevel.checkpoint()
            self._tick += 1
            for entry in self._due.pop(self._tick, ()):
                self._pending -= 1
                if entry.wanted:
                    entry.scope.cancel()


def _rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


class _Run:
    """The callers, their per-request outcomes and the checks made on them."""

    def __init__(self, cfg: SoakConfig, plan: _Plan, batcher: Batcher) -> None:
        self.cfg = cfg
        self.plan = plan
        self.b = batcher
        n = cfg.requests
        # Allocated and touched before the memory baseline, so they do not read as growth.
        self.outcomes = np.zeros(n, np.int8)
        self.results = np.full((n, cfg.model_sizes[-1]), np.nan, np.float32)
        self.bad_pool = _malformed_samples(cfg.model_sizes[0])
        self.next_id = 0
        self.done = 0
        self.phase = 0
        self.limiter = anyio.CapacityLimiter(plan.phase_levels[0])
        self.reaper = _Reaper()
        self.examples: dict[str, list[str]] = {}
        self.problems: dict[str, int] = {}
        self.rss_warm = 0
        self.rss_peak = 0
        self.callers_scope: anyio.CancelScope | None = None

    def problem(self, name: str, example: str) -> None:
        self.problems[name] = self.problems.get(name, 0) + 1
        examples = self.examples.setdefault(name, [])
        if len(examples) < _MAX_EXAMPLES:
            examples.append(example)

    # ------------------------------------------------------------------ callers

    async def caller(self) -> None:
        plan = self.plan
        n = self.cfg.requests
        while self.next_id < n:
            i = self.next_id
            self.next_id += 1
            if self.phase + 1 < len(plan.phase_starts) and i >= plan.phase_starts[self.phase + 1]:
                self.phase += 1
                self.limiter.total_tokens = plan.phase_levels[self.phase]
            async with self.limiter:
                for _ in range(plan.gap[i]):
                    await anyio.lowlevel.checkpoint()
                await self.one(i)

    async def one(self, i: int) -> None:
        plan = self.plan
        sample: object
        if plan.malformed[i]:
            sample = self.bad_pool[plan.bad_kind[i] % len(self.bad_pool)]
        else:
            k = i % self.cfg.pool
            form = plan.form[i]
            sample = (
                plan.samples[k]
                if form == 0
                else plan.samples64[k]
                if form == 1
                else {"x": plan.samples[k]}
            )
        timeout = float(plan.timeout[i]) if plan.deadline[i] else None
        priority = int(plan.priority[i])
        submit = self.b.submit_nowait if plan.nowait[i] else self.b.submit
        # The Batcher's own clock: it reads it after this, so expiry must come >= timeout later.
        start = anyio.current_time()
        if not plan.cancel[i]:
            try:
                result = await submit(sample, timeout=timeout, priority=priority)
            except Exception as exc:
                self.record(i, self.classify(i, exc, start))
            else:
                self.record_result(i, result)
            return
        entry: _Cancellation | None = None
        scope: anyio.CancelScope
        if plan.cancel_by_steps[i]:
            scope = anyio.CancelScope()
            steps = int(plan.cancel_steps[i])
            if steps == 0:
                scope.cancel()  # cancelled before submit even starts
            else:
                entry = self.reaper.schedule(scope, steps)
        else:
            scope = anyio.move_on_after(float(plan.cancel_after[i]))
        code = CANCELLED
        got: Any = None
        with scope:
            try:
                got = await submit(sample, timeout=timeout, priority=priority)
            except Exception as exc:
                code = self.classify(i, exc, start)
            else:
                code = OK
        if entry is not None:
            entry.wanted = False
        if code == OK:
            self.record_result(i, got)
        else:
            self.record(i, code)

    def classify(self, i: int, exc: Exception, start: float) -> int:
        if isinstance(exc, InvalidSample):
            if not isinstance(exc, ValueError):
                self.problem("InvalidSample is not a ValueError", repr(exc))
            return INVALID
        if isinstance(exc, QueueFull):
            return REJECTED
        if isinstance(exc, DeadlineExceeded):
            waited = anyio.current_time() - start
            if self.plan.deadline[i] and waited < self.plan.timeout[i] - 1e-9:
                self.problem(
                    "DeadlineExceeded before the deadline",
                    f"request {i}: after {waited:.6f} s of {self.plan.timeout[i]:.6f} s",
                )
            return EXPIRED
        if isinstance(exc, InferenceError):
            if not isinstance(exc.__cause__, InjectedFault):
                self.problem(
                    "InferenceError not caused by an injected fault",
                    f"request {i}: {exc!r} caused by {exc.__cause__!r}",
                )
            # Each caller must get an exception object of its own.
            if getattr(exc, "_soak_seen", False):
                self.problem("InferenceError instance shared by callers", f"request {i}")
            exc._soak_seen = True  # type: ignore[attr-defined]
            return FAILED
        self.problem("unexpected exception", f"request {i}: {exc!r}")
        return OTHER

    def record_result(self, i: int, result: object) -> None:
        if (
            not isinstance(result, np.ndarray)
            or result.shape != self.results.shape[1:]
            or result.dtype != self.results.dtype
        ):
            self.problem("malformed result", f"request {i}: {result!r}")
            self.record(i, OTHER)
            return
        self.results[i] = result
        self.record(i, OK)

    def record(self, i: int, code: int) -> None:
        if self.outcomes[i] != UNRESOLVED:
            self.problem("request resolved twice", f"request {i}")
        self.outcomes[i] = code
        self.done += 1
        if self.done == self.cfg.warmup:
            self.rss_warm = _rss()

    # ------------------------------------------------------------------ watching

    async def watch(self, progress: Callable[[str], None] | None, t0: float) -> None:
        cfg = self.cfg
        last_done, last_change, last_print = 0, t0, t0
        while True:
            await anyio.sleep(min(1.0, cfg.progress_every))
            now = time.perf_counter()
            self.rss_peak = max(self.rss_peak, int(psutil.Process().memory_info().rss))
            if self.done != last_done:
                last_done, last_change = self.done, now
            elif now - last_change > cfg.stall_seconds:
                stats = self.b.statistics()
                self.problem(
                    "stalled",
                    f"no request finished for {cfg.stall_seconds} s at {self.done:,} done; "
                    f"queue_depth={stats.queue_depth} inflight_chunks={stats.inflight_chunks} "
                    f"inflight_samples={stats.inflight_samples}",
                )
                assert self.callers_scope is not None
                self.callers_scope.cancel()
                return
            if progress is not None and now - last_print >= cfg.progress_every:
                last_print = now
                elapsed = now - t0
                rate = self.done / elapsed if elapsed > 0 else 0.0
                eta = (cfg.requests - self.done) / rate if rate > 0 else math.inf
                stats = self.b.statistics()
                progress(
                    f"[soak] {self.done:,}/{cfg.requests:,} requests "
                    f"({100 * self.done / cfg.requests:.1f} %), {rate:,.0f} req/s, "
                    f"ETA {eta:,.0f} s, queue {stats.queue_depth}, "
                    f"peak RSS {self.rss_peak / 2**20:,.0f} MiB"
                )

    # ------------------------------------------------------------------ checking

    def check(
        self,
        stats: BatcherStatistics,
        hook: _FaultInjector,
        expected: Array,
        rss_end: int,
    ) -> tuple[list[Invariant], dict[str, int], dict[str, Any]]:
        cfg, plan, out = self.cfg, self.plan, self.outcomes
        n = cfg.requests
        counts = np.bincount(out, minlength=len(OUTCOME_NAMES))
        tally = {name: int(counts[code]) for code, name in enumerate(OUTCOME_NAMES)}
        inv: list[Invariant] = []

        def check(name: str, ok: bool, detail: str) -> None:
            inv.append(Invariant(name, bool(ok), detail))

        # --- per request, caller side
        unresolved = int(counts[UNRESOLVED])
        check("every request resolved", unresolved == 0, f"{unresolved:,} never resolved")
        for name, count in sorted(self.problems.items()):
            check(name, False, f"{count:,} times, e.g. {self.examples[name]}")

        def allowed_only(code: int, allowed: Array, what: str) -> None:
            wrong = np.flatnonzero((out == code) & ~allowed)
            check(
                f"{OUTCOME_NAMES[code]} only where possible",
                wrong.size == 0,
                f"{wrong.size:,} requests {what} got {OUTCOME_NAMES[code]}"
                + (f", e.g. request {int(wrong[0])}" if wrong.size else ""),
            )

        bad_missed = np.flatnonzero(plan.malformed & (out != INVALID))
        check(
            "malformed samples get InvalidSample",
            bad_missed.size == 0,
            f"{int(plan.malformed.sum()):,} malformed, {bad_missed.size:,} did not get it",
        )
        allowed_only(INVALID, plan.malformed, "with a valid sample")
        allowed_only(REJECTED, plan.nowait, "that waited for room")
        allowed_only(EXPIRED, plan.deadline, "without a deadline")
        allowed_only(CANCELLED, plan.cancel, "never cancelled")
        check(
            "nothing else raised",
            counts[OTHER] == 0,
            f"{int(counts[OTHER]):,} unexpected outcomes",
        )

        done = np.flatnonzero(out == OK)
        got = self.results[done]
        want = expected[done % cfg.pool]
        scale = np.maximum(np.abs(want).max(axis=1), np.finfo(np.float32).tiny)
        rel = np.abs(got - want).max(axis=1) / scale
        bad = np.flatnonzero(~(rel <= RELATIVE_TOLERANCE))  # NaN counts as wrong
        worst = float(np.nanmax(rel)) if rel.size else 0.0
        check(
            "results equal batch-1 inference",
            bad.size == 0 and done.size > 0,
            f"{done.size:,} results, {bad.size:,} off by > {RELATIVE_TOLERANCE:g} relative; "
            f"worst {worst:.2e}",
        )

        # --- statistics() against the caller-side tallies
        ok, inval, rej, exp_, fail, canc = (
            tally["completed"],
            tally["invalid"],
            tally["rejected"],
            tally["expired"],
            tally["failed"],
            tally["cancelled"],
        )
        check("statistics accounted", stats.accounted, "submitted == every state summed")
        check(
            "nothing left queued or running",
            stats.queue_depth == 0 and stats.inflight_samples == 0 and stats.inflight_chunks == 0,
            f"queue_depth={stats.queue_depth} inflight_samples={stats.inflight_samples} "
            f"inflight_chunks={stats.inflight_chunks}",
        )
        check("invalid count", stats.invalid == inval, f"stats {stats.invalid:,}, ours {inval:,}")
        check("rejected count", stats.rejected == rej, f"stats {stats.rejected:,}, ours {rej:,}")
        check(
            "submitted count",
            stats.submitted == n - inval - rej,
            f"stats {stats.submitted:,}, ours {n - inval - rej:,} (all but invalid and rejected)",
        )
        # A caller cancelled just as its request settled sees the cancellation, while the
        # Batcher has already counted the request completed, failed or expired: which of
        # the three cannot be told from outside, so each of those counts may exceed ours
        # and `cancelled` may fall short of ours, by exactly the same total.
        raced = canc - stats.cancelled
        surplus = (stats.completed - ok) + (stats.failed - fail) + (stats.expired - exp_)
        check(
            "outcome counts (exact up to cancellation races)",
            raced >= 0
            and stats.completed >= ok
            and stats.failed >= fail
            and stats.expired >= exp_
            and surplus == raced,
            f"completed {stats.completed:,}/{ok:,}, failed {stats.failed:,}/{fail:,}, "
            f"expired {stats.expired:,}/{exp_:,}, cancelled {stats.cancelled:,}/{canc:,} "
            f"(stats/ours); {raced:,} cancellations raced a settled request",
        )

        # --- chunks: every chunk passed the hook; the faults failed exactly their chunks
        chunks = sum(stats.chunks_per_size.values())
        computed = sum(stats.samples_per_size.values())
        failed_chunks = sum(stats.failed_chunks_per_size.values())
        check(
            "every chunk seen by the hook",
            chunks == hook.chunks,
            f"stats {chunks:,} chunks, hook saw {hook.chunks:,}",
        )
        check(
            "failed chunks are the injected faults",
            failed_chunks == hook.faults,
            f"stats {failed_chunks:,}, injected {hook.faults:,}",
        )
        # A computed row was delivered, failed, or dropped because its caller left while it
        # ran; those callers are counted `cancelled`, as are callers that left the queue.
        cancelled_running = computed - stats.completed - stats.failed
        cancelled_queued = stats.cancelled - cancelled_running
        check(
            "computed rows add up",
            0 <= cancelled_running <= stats.cancelled,
            f"{computed:,} rows = {stats.completed:,} completed + {stats.failed:,} failed + "
            f"{cancelled_running:,} cancelled while running",
        )
        # Rows of failed chunks whose callers had not left must all have failed.
        check(
            "every caller in a failed chunk failed",
            0 <= hook.fault_samples - stats.failed <= cancelled_running,
            f"{hook.fault_samples:,} rows in failed chunks, {stats.failed:,} callers failed",
        )

        # --- the soak reached what it meant to exercise
        coverage = {
            "InvalidSample": inval,
            "QueueFull": rej,
            "DeadlineExceeded": exp_,
            "InferenceError": fail,
            "cancelled while queued": cancelled_queued,
            "cancelled while running": cancelled_running,
            "completed": ok,
        }
        for what, count in coverage.items():
            check(f"coverage: {what}", count > 0, f"{count:,}")

        growth = (rss_end - self.rss_warm) / self.rss_warm if self.rss_warm else math.inf
        check(
            "memory steady",
            growth <= cfg.memory_tolerance,
            f"RSS {self.rss_warm / 2**20:,.1f} MiB after warm-up, {rss_end / 2**20:,.1f} MiB "
            f"at the end ({100 * growth:+.1f} %, bound {100 * cfg.memory_tolerance:.0f} %)",
        )

        derived: dict[str, Any] = {
            "planned_malformed": int(plan.malformed.sum()),
            "planned_cancellations": int(plan.cancel.sum()),
            "planned_deadlines": int(plan.deadline.sum()),
            "planned_nowait": int(plan.nowait.sum()),
            "raced_cancellations": raced,
            "cancelled_while_queued": cancelled_queued,
            "cancelled_while_running": cancelled_running,
            "injected_faults": hook.faults,
            "rows_in_failed_chunks": hook.fault_samples,
            "chunks": chunks,
            "mean_chunk_size": round(stats.mean_chunk_size, 3),
            "worst_relative_error": worst,
        }
        return inv, tally, derived


def _batcher_config(cfg: SoakConfig) -> BatcherConfig:
    return BatcherConfig(
        batch_sizes=cfg.batch_sizes,
        strategy=cfg.strategy,  # type: ignore[arg-type]
        max_queue_size=cfg.max_queue_size,
        on_full="wait",
        priority_levels=cfg.priority_levels,
        max_delay=cfg.max_delay,
        max_inflight_chunks=cfg.max_inflight_chunks,
        profile_budget=cfg.profile_budget,
        # Long enough for any chunk: every request is resolved before the Batcher closes.
        drain_timeout=30.0,
        ov_config=_F32,
    )


def _backend() -> str:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return "trio"  # anyio runs on asyncio or trio only
    return "asyncio"


async def run_soak(cfg: SoakConfig, *, progress: Callable[[str], None] | None = None) -> SoakReport:
    """Run the soak inside the current event loop and return its report (never raises for a
    broken invariant: check :attr:`SoakReport.passed`)."""
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    backend = _backend()
    plan = _Plan(cfg)
    model = models.mlp(sizes=cfg.model_sizes)
    expected = await anyio.to_thread.run_sync(_reference_outputs, model, plan.samples)
    async with Batcher(model, _batcher_config(cfg)) as b:
        hook = _FaultInjector(cfg.fault_rate, cfg.seed)
        b._chunk_hook = hook
        run = _Run(cfg, plan, b)
        t0 = time.perf_counter()
        async with anyio.create_task_group() as helpers:
            helpers.start_soon(run.reaper.run)
            helpers.start_soon(run.watch, progress, t0)
            async with anyio.create_task_group() as callers:
                run.callers_scope = callers.cancel_scope
                for _ in range(cfg.callers):
                    callers.start_soon(run.caller)
            duration = time.perf_counter() - t0
            helpers.cancel_scope.cancel()
        # Closing drains chunks whose callers all left; only then are the counters final.
        await b.aclose()
        stats = b.statistics()
        rss_end = _rss()
    invariants, tally, derived = run.check(stats, hook, expected, rss_end)
    stat_fields = (
        *("submitted", "completed", "failed", "cancelled", "expired", "rejected", "invalid"),
        *("queue_depth", "inflight_chunks", "inflight_samples", "padded_rows", "slots"),
    )
    statistics: dict[str, Any] = {name: getattr(stats, name) for name in stat_fields}
    statistics["chunks_per_size"] = dict(stats.chunks_per_size)
    statistics["samples_per_size"] = dict(stats.samples_per_size)
    statistics["failed_chunks_per_size"] = dict(stats.failed_chunks_per_size)
    table = stats.cost_table
    statistics["cost_table"] = {str(k): v for k, v in table.seconds.items()} if table else {}
    return SoakReport(
        config=asdict(cfg),
        backend=backend,
        machine=describe(),
        started_at=started_at,
        duration_s=duration,
        rate_per_s=cfg.requests / duration if duration > 0 else 0.0,
        outcomes=tally,
        statistics=statistics,
        derived=derived,
        memory={
            "rss_after_warmup_mib": run.rss_warm / 2**20,
            "rss_end_mib": rss_end / 2**20,
            "rss_peak_mib": max(run.rss_peak, rss_end) / 2**20,
            "growth_pct": 100 * (rss_end - run.rss_warm) / run.rss_warm if run.rss_warm else 0.0,
            "warmup_requests": cfg.warmup,
        },
        invariants=invariants,
    )


# --------------------------------------------------------------------------- command line


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    defaults = SoakConfig()
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.soak", description=__doc__.split("\n\n")[0] if __doc__ else ""
    )
    parser.add_argument("--requests", type=int, default=defaults.requests)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument("--callers", type=int, default=defaults.callers)
    parser.add_argument(
        "--strategy", choices=("auto", "decompose", "pad"), default=defaults.strategy
    )
    parser.add_argument("--progress-every", type=float, default=defaults.progress_every)
    parser.add_argument("--note", default="", help="free text stored in the report")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    cfg = SoakConfig(
        requests=args.requests,
        seed=args.seed,
        callers=args.callers,
        strategy=args.strategy,
        progress_every=args.progress_every,
    )

    def say(line: str) -> None:
        print(line, flush=True)

    # Every injected fault makes the Batcher log a warning; the soak counts and checks those
    # failures itself, and thousands of such lines would bury the progress reports.
    logging.getLogger("batcher").setLevel(logging.ERROR)
    say(f"[soak] {cfg.requests:,} requests, seed {cfg.seed}, {args.backend}")

    async def go() -> SoakReport:
        return await run_soak(cfg, progress=say)

    report = anyio.run(go, backend=args.backend)
    report.note = args.note
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(report.to_json(), encoding="utf-8")
    (args.out / "soak.md").write_text(report.to_markdown(), encoding="utf-8")
    say(
        f"[soak] {cfg.requests:,} requests in {report.duration_s:.1f} s "
        f"({report.rate_per_s:,.0f}/s); outcomes {report.outcomes}"
    )
    say(
        f"[soak] RSS {report.memory['rss_after_warmup_mib']:.1f} MiB after warm-up, "
        f"{report.memory['rss_end_mib']:.1f} MiB at the end "
        f"({report.memory['growth_pct']:+.1f} %)"
    )
    if not report.passed:
        say("[soak] INVARIANTS BROKEN:\n" + report.failures())
        say(f"[soak] wrote {args.out / 'soak.json'}")
        return 1
    say(f"[soak] all {len(report.invariants)} invariants hold; wrote {args.out / 'soak.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
