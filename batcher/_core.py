"""The Batcher: an anyio queue in front of OpenVINO models precompiled per batch size."""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import operator
import statistics
import time
from collections import Counter
from collections.abc import Callable
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import numpy.typing as npt
import openvino as ov

from ._arrivals import ArrivalMeter
from ._config import BatcherConfig
from ._costs import CostTable, LiveCosts
from ._errors import BatcherClosed, DeadlineExceeded, InferenceError, InvalidSample, QueueFull
from ._execution import ChunkHook, Engine, Flight, Outputs, Waiters, load_engine
from ._model import ModelSource, ModelSpec
from ._planner import Chunk, plan
from ._queue import PendingQueue, Request, State
from ._signals import QueueRoom, Signal, loop_clock, signal_factory, threadsafe_call_soon
from ._stats import BatcherStatistics

__all__ = ["Batcher", "Output"]

logger = logging.getLogger("batcher")

#: One sample's result: an array for single-output models, else a mapping name -> array.
Output = npt.NDArray[Any] | dict[str, npt.NDArray[Any]]

# Chunk timings move the cost table a little each time; re-deriving plans on every move would
# cost more than it saves, so drift is checked once per this many finished chunks.
_DRIFT_CHECK_EVERY = 64
# The arrival rate re-derives plans only when it moves this much (a fraction): plans
# depend on it only through whether a sample arrives before a plan ends.
_ARRIVAL_TOLERANCE = 0.25
_OVERHEAD_RUNS = 31
_MIN_OVERHEAD = 20e-6


class _Phase(enum.Enum):
    NEW = enum.auto()
    OPEN = enum.auto()
    CLOSING = enum.auto()
    CLOSED = enum.auto()


class Batcher:
    """Collects single samples from many concurrent callers into batched OpenVINO inference.

    Use it as an async context manager; it compiles the model once per configured batch
    size on entry and drains queued work on exit::

        async with Batcher("model.xml", BatcherConfig(batch_sizes=(1, 2, 4, 8))) as b:
            y = await b.submit(x)
    """

    def __init__(
        self,
        model: ModelSource,
        config: BatcherConfig | None = None,
        *,
        core: ov.Core | None = None,
    ) -> None:
        self._source = model
        self._config = config if config is not None else BatcherConfig()
        self._core = core
        self._phase = _Phase.NEW
        self._engine: Engine | None = None
        self._queue = PendingQueue(self._config.priority_levels)
        self._task_group: anyio.abc.TaskGroup | None = None
        # Event-loop objects are made in __aenter__: the constructor may run outside any loop.
        self._room: QueueRoom | None
        self._make_signal: Callable[[], Signal]
        self._clock: Callable[[], float]
        self._scheduler_scope: anyio.CancelScope
        self._wakeup: Signal
        self._drained: anyio.Event
        self._drain_done: anyio.Event
        self._landed: anyio.Event
        self._waiters: Waiters
        self._flights: set[Flight] = set()
        self._free_slots = 0
        self._broken: BaseException | None = None
        self._plans: dict[tuple[int, int, bool], tuple[Chunk, ...]] = {}
        self._live_costs: LiveCosts | None = None
        self._plan_costs = CostTable({1: 1.0})
        self._chunks_since_drift_check = 0
        self._arrival_meter = ArrivalMeter()
        # The arrival rate the current plans were made with.
        self._arrival_rate = 0.0
        # Tests inject faults or hold chunks through this; it runs in a waiter thread.
        self._chunk_hook: ChunkHook | None = None
        # Arrival times matter only to max_delay; otherwise the hot path skips the clock.
        self._clock_needed = self._config.max_delay > 0
        # Only "auto" plans with costs; the others need no table and report none.
        self._plans_by_cost = self._config.strategy == "auto" and not self._config.dynamic
        self._submitted = self._completed = self._failed = self._cancelled = 0
        self._expired = self._rejected = self._invalid = 0
        self._inflight_samples = 0
        self._chunks_per_size: Counter[int] = Counter()
        self._samples_per_size: Counter[int] = Counter()
        self._failed_chunks_per_size: Counter[int] = Counter()
        self._padded_rows = 0

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Batcher:
        if self._phase is not _Phase.NEW:
            raise RuntimeError("a Batcher can be entered only once; create a new one")
        config = self._config
        # Compiling takes seconds: a worker thread keeps the event loop serving meanwhile.
        engine = await anyio.to_thread.run_sync(load_engine, self._source, config, self._core)
        if engine.costs.source == "profiled":
            engine.costs = await _with_measured_overhead(engine)
        self._engine = engine
        self._free_slots = engine.slots
        size = config.max_queue_size
        self._make_signal = signal_factory()
        self._clock = loop_clock()
        self._waiters = Waiters(
            engine.slots,
            len(engine.spec.outputs),
            threadsafe_call_soon(),
            self._flight_done,
            lambda: self._chunk_hook,
        )
        self._room = QueueRoom(size, self._make_signal) if size is not None else None
        # Shielded: a cancellation of the code around `async with` must not strand the
        # queue; only aclose/__aexit__ stop the scheduler (by cancelling this scope).
        self._scheduler_scope = anyio.CancelScope(shield=True)
        self._wakeup = self._make_signal()
        self._drained = anyio.Event()
        self._drain_done = anyio.Event()
        self._landed = anyio.Event()
        self._live_costs = LiveCosts(engine.costs, config.cost_smoothing)
        self._plan_with(self._live_costs.mark_planned())
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        self._phase = _Phase.OPEN
        task_group.start_soon(self._schedule)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.aclose()
        finally:
            self._scheduler_scope.cancel()
            self._fail_unfinished("the batcher closed before this request finished")
            # Shielded and finite: OpenVINO must be done with every request and the waiter
            # threads gone before we return, so nothing of ours runs after the block.
            with anyio.CancelScope(shield=True):
                native = await self._wait_for_flights_and_threads()
            assert self._task_group is not None
            # The block's own exception is not handed to the task group, which would wrap it
            # in an ExceptionGroup: it propagates unchanged once our tasks are done.
            await self._task_group.__aexit__(None, None, None)
            self._phase = _Phase.CLOSED
            if native is not None:
                raise native

    async def _wait_for_flights_and_threads(self) -> BaseException | None:
        """Wait until OpenVINO is done with every request and the waiters are joined.

        Returns a native asyncio cancellation that arrived meanwhile, to be raised after:
        anyio's shield does not stop ``Task.cancel()``, and leaving early would let a chunk
        finish after the block and leak the waiter threads.
        """
        native: BaseException | None = None
        while self._flights:
            self._landed = anyio.Event()
            try:
                await self._landed.wait()
            except asyncio.CancelledError as exc:
                native = exc
        while True:
            try:
                await anyio.to_thread.run_sync(self._waiters.stop)
            except asyncio.CancelledError as exc:
                native = exc
            else:
                return native

    async def aclose(self, timeout: float | None = None) -> None:
        """Stop accepting samples, finish queued and running ones, then stop.

        Waits at most ``timeout`` seconds (default: ``config.drain_timeout``); callers
        still waiting after that get :class:`BatcherClosed`. Safe to call more than once.
        """
        if self._phase is _Phase.NEW:
            self._phase = _Phase.CLOSED
            return
        if self._phase is _Phase.CLOSED:
            return
        if self._phase is not _Phase.OPEN:
            await self._drain_done.wait()
            return
        self._phase = _Phase.CLOSING
        if self._room is not None:
            self._room.wake_all()  # callers waiting for room learn at once that it closed
        bound = self._config.drain_timeout if timeout is None else timeout
        self._wakeup.set()
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(math.inf if bound is None else bound):
                while not self._is_idle() and self._broken is None:
                    self._drained = anyio.Event()
                    await self._drained.wait()
            if not self._is_idle():
                self._fail_unfinished(
                    f"the batcher closed and its drain bound ({bound} s) passed before this "
                    "request finished"
                )
        self._scheduler_scope.cancel()
        self._drain_done.set()

    def _is_idle(self) -> bool:
        return self._queue.depth == 0 and not self._flights

    def _fail_unfinished(self, reason: str) -> None:
        for request in self._queue.drain():
            request.state = State.DONE
            self._release_room()
            self._settle(request, None, BatcherClosed(reason))
            self._failed += 1
        for flight in self._flights:
            for request in flight.members:
                if request.state is State.RUNNING:
                    self._inflight_samples -= 1
                    self._settle(request, None, BatcherClosed(reason))
                    self._failed += 1
        self._drained.set()

    # ------------------------------------------------------------------ public API

    @property
    def config(self) -> BatcherConfig:
        return self._config

    @property
    def spec(self) -> ModelSpec:
        """Inputs and outputs of one sample; available once the batcher is open."""
        return self._open_engine().spec

    async def submit(
        self, sample: object, *, timeout: float | None = None, priority: int = 0
    ) -> Output:
        """Queue one sample (no batch axis) and return its own result.

        ``sample`` is an array for single-input models, else a mapping input name -> array.
        Waits for queue room when the queue is full unless ``config.on_full == "reject"``.
        ``timeout`` (seconds, default ``config.default_timeout``) bounds the time spent
        queued: past it the sample is dropped and :class:`DeadlineExceeded` is raised.
        """
        return await self._submit(sample, timeout, priority, self._config.on_full == "wait")

    async def submit_nowait(
        self, sample: object, *, timeout: float | None = None, priority: int = 0
    ) -> Output:
        """Like :meth:`submit`, but raise :class:`QueueFull` at once when the queue is full."""
        return await self._submit(sample, timeout, priority, False)

    def statistics(self) -> BatcherStatistics:
        """A frozen snapshot of the counters."""
        engine = self._engine
        live = self._live_costs
        return BatcherStatistics(
            submitted=self._submitted,
            completed=self._completed,
            failed=self._failed,
            cancelled=self._cancelled,
            expired=self._expired,
            rejected=self._rejected,
            invalid=self._invalid,
            queue_depth=self._queue.depth,
            inflight_chunks=len(self._flights),
            inflight_samples=self._inflight_samples,
            chunks_per_size=dict(self._chunks_per_size),
            samples_per_size=dict(self._samples_per_size),
            failed_chunks_per_size=dict(self._failed_chunks_per_size),
            padded_rows=self._padded_rows,
            slots=engine.slots if engine else 0,
            compile_seconds=engine.compile_seconds if engine else 0.0,
            profile_seconds=engine.profile_seconds if engine else 0.0,
            cost_table=live.snapshot() if live is not None and self._plans_by_cost else None,
            arrival_rate=self._arrival_rate if self._plans_by_cost else None,
        )

    # ------------------------------------------------------------------ submitting

    def _open_engine(self) -> Engine:
        if self._phase is not _Phase.OPEN or self._engine is None:
            if self._phase is _Phase.NEW:
                raise BatcherClosed(
                    "the batcher is not open yet: use it inside `async with Batcher(...)`"
                )
            raise BatcherClosed("the batcher is closed and accepts no more samples")
        return self._engine

    async def _submit(
        self, sample: object, timeout: float | None, priority: int, wait_for_room: bool
    ) -> Output:
        # The hot path of every request: no anyio indirection, no cancel scope unless a
        # deadline needs one, no clock read unless something uses the time.
        if self._phase is not _Phase.OPEN or self._broken is not None:
            self._open_engine()
            if self._broken is not None:
                # Nothing would serve a sample queued now: say why instead of queueing it.
                raise BatcherClosed(
                    f"the batcher stopped serving after an internal failure: {self._broken!r}"
                )
        engine = self._engine
        assert engine is not None
        config = self._config
        if priority.__class__ is not int:
            priority = _as_priority(priority, config.priority_levels)
        if not 0 <= priority < config.priority_levels:
            raise ValueError(_priority_rule(priority, config.priority_levels))
        if timeout is None:
            timeout = config.default_timeout
        elif not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        try:
            inputs = engine.spec.validate(sample, config.input_casting)
        except InvalidSample:
            self._invalid += 1
            raise
        if timeout is None and not self._clock_needed:
            now = deadline = math.inf
        else:
            now = self._clock()
            deadline = math.inf if timeout is None else now + timeout
        room = self._room
        if room is not None and not room.try_take():
            await self._wait_for_room(room, wait_for_room, deadline)
        request = Request(inputs, priority, now, deadline, self._make_signal())
        self._queue.push(request)
        self._submitted += 1
        if self._plans_by_cost:
            meter = self._arrival_meter
            meter.outstanding(self._queue.depth + self._inflight_samples)
            if not self._free_slots:
                meter.arrived()
        self._wakeup.set()
        try:
            if deadline == math.inf:
                await request.done.wait()
            else:
                with anyio.move_on_at(deadline):
                    await request.done.wait()
                if request.state is State.QUEUED:
                    self._leave_queue(request)
                    self._settle(request, None, _deadline_error(request, self._clock()))
                    self._expired += 1
                # A deadline bounds queueing only: a sample already running finishes. No
                # second wait once answered: it would be a checkpoint where a late
                # cancellation could throw away a result already counted as completed.
                if not request.done.is_set():
                    await request.done.wait()
        except BaseException:
            if request.state is State.QUEUED:
                self._leave_queue(request)
                self._settle(request, None, None)
                self._cancelled += 1
            elif request.state is State.RUNNING:
                self._inflight_samples -= 1
                self._settle(request, None, None)
                self._cancelled += 1
            raise
        if request.error is not None:
            raise request.error
        return request.result  # type: ignore[return-value]

    async def _wait_for_room(self, room: QueueRoom, wait: bool, deadline: float) -> None:
        if not wait:
            self._rejected += 1
            raise QueueFull(f"the queue holds max_queue_size={self._config.max_queue_size} samples")
        waiter = room.enqueue_waiter()
        try:
            with anyio.move_on_at(deadline):
                await waiter.wait()
        except BaseException:
            # Counted like a deadline here: submitted, then resolved (as cancelled).
            room.abandon(waiter)
            self._submitted += 1
            self._cancelled += 1
            raise
        if not waiter.is_set():
            room.abandon(waiter)
            self._submitted += 1
            self._expired += 1
            raise DeadlineExceeded("the deadline passed while waiting for room in the queue")
        if self._phase is not _Phase.OPEN:
            room.give_back()
            raise BatcherClosed("the batcher closed while this request waited for queue room")

    def _release_room(self) -> None:
        if self._room is not None:
            self._room.give_back()

    def _leave_queue(self, request: Request) -> None:
        request.state = State.DONE
        self._queue.forget(request)
        self._release_room()
        self._note_progress()

    @staticmethod
    def _settle(request: Request, result: object, error: BaseException | None) -> None:
        request.state = State.DONE
        request.result = result
        request.error = error
        request.inputs = ()  # the caller is answered: free the sample's memory now
        request.done.set()

    def _note_progress(self) -> None:
        if self._phase is _Phase.CLOSING and self._is_idle():
            self._drained.set()

    # ------------------------------------------------------------------ scheduling

    async def _schedule(self) -> None:
        with self._scheduler_scope:
            try:
                while True:
                    if self._queue.depth and self._free_slots:
                        if not await self._hold_for_companions():
                            self._dispatch()
                        continue
                    self._wakeup = self._make_signal()
                    await self._wakeup.wait()
            except BaseException as exc:
                if not isinstance(exc, anyio.get_cancelled_exc_class()):
                    self._broken = exc
                    self._fail_unfinished(f"the batcher's scheduler failed: {exc!r}")
                raise

    async def _hold_for_companions(self) -> bool:
        """Wait (at most ``max_delay``) for a fuller chunk while the device is busy anyway.

        Returns True when it waited, so the caller re-reads the queue. Never waits when no
        chunk is running: an idle device is always fed at once.
        """
        config = self._config
        if (
            config.max_delay <= 0
            or not self._flights
            or self._queue.depth >= config.largest_batch
            or self._phase is not _Phase.OPEN
        ):
            return False
        until = self._queue.oldest_arrival() + config.max_delay
        if until <= self._clock():
            return False
        self._wakeup = self._make_signal()
        with anyio.move_on_at(until):
            await self._wakeup.wait()
        return True

    def _plan_with(self, table: CostTable) -> None:
        self._plan_costs = table
        self._plans.clear()

    def _plan(self, n: int, free: int, more_coming: bool = False) -> tuple[Chunk, ...]:
        """Chunks for ``n`` samples, largest first, memoised per (n, free slots, whether
        more samples are known to be on their way).

        The cost model counts only the slots free now. Counting on busy slots that free up
        soon would split the pending samples across them, and those put back wait for the
        next free slot behind later arrivals: measured, that raised p99 latency at
        moderate load without raising throughput.
        """
        key = (n, free, more_coming)
        cached = self._plans.get(key)
        if cached is None:
            engine = self._engine
            assert engine is not None
            if self._plans_by_cost:
                table = self._plan_costs
                chunks = plan(
                    n,
                    engine.sizes,
                    "auto",
                    table.seconds,
                    free,
                    table.overhead,
                    table.shared,
                    arrivals=self._arrival_rate,
                    more_coming=more_coming,
                )
            else:
                strategy = "decompose" if self._config.dynamic else self._config.strategy
                chunks = plan(n, engine.sizes, strategy)
            cached = self._plans[key] = tuple(sorted(chunks, reverse=True))
        return cached

    def _dispatch(self) -> None:
        engine = self._engine
        assert engine is not None
        now = self._clock()
        # Callers answered a moment ago and about to submit again count as a stream too, as
        # do callers waiting for room in a full queue.
        more_coming = self._plans_by_cost and (
            self._arrival_meter.returning(self._queue.depth + self._inflight_samples) > 0
            or (self._room is not None and self._room.waiting > 0)
        )
        limit = min(self._queue.depth, self._free_slots * self._config.largest_batch)
        batch: list[Request] = []
        for request in self._queue.take(limit):
            if request.deadline <= now:
                request.state = State.DONE
                self._release_room()
                self._settle(request, None, _deadline_error(request, now))
                self._expired += 1
            else:
                batch.append(request)
        if not batch:
            self._note_progress()
            return
        chunks = self._plan(len(batch), self._free_slots, more_coming)[: self._free_slots]
        start = 0
        for chunk in chunks:
            members = batch[start : start + chunk.samples]
            start += chunk.samples
            for request in members:
                request.state = State.RUNNING
                self._release_room()
            self._inflight_samples += len(members)
            self._launch(engine, chunk, members)
        if start < len(batch):
            self._queue.put_back(batch[start:])

    def _launch(self, engine: Engine, chunk: Chunk, members: list[Request]) -> None:
        """Copy the rows in and start the inference: here when idle, else in the waiter.

        ``start_async()`` is the event loop's largest single cost under load (OpenVINO
        checks the inputs and wakes a stream thread synchronously, ~17% of the loop's time
        at saturation on the identity model), and under load the loop is the bottleneck, so
        the waiter thread starts it. On an idle batcher the loop has nothing else to do and
        starting here saves the waiter's wake-up from the latency.
        """
        slot = engine.acquire(chunk.size)
        flight = Flight(chunk, members, slot)
        busy = bool(self._flights) or self._queue.depth > 0
        self._free_slots -= 1
        if not self._free_slots and self._plans_by_cost:
            self._arrival_meter.all_busy()
        for other in self._flights:
            other.shared = flight.shared = True
        self._flights.add(flight)
        try:
            slot.fill(chunk, members, len(engine.spec.inputs), self._config.pad_value)
            if not busy:
                slot.request.start_async()
                flight.started = True
        except Exception as exc:
            flight.error = exc
            self._flight_done(flight)
            return
        self._waiters.watch(flight)

    def _flight_done(self, flight: Flight) -> None:
        """A flight's outcome, on the event loop (called soon from a waiter thread).

        Runs as a bare loop callback, where an exception would escape to the event loop
        itself (and end a trio run): a bug here fails the waiting callers instead.
        """
        try:
            self._land(flight)
        except Exception as exc:
            logger.exception("batcher internal error while finishing a chunk")
            self._broken = exc
            self._flights.add(flight)  # _land may have dropped it; its callers must hear too
            self._fail_unfinished(f"the batcher failed internally: {exc!r}")
            self._flights.discard(flight)
            if not self._flights:
                self._landed.set()

    def _land(self, flight: Flight) -> None:
        engine = self._engine
        assert engine is not None
        chunk = flight.chunk
        engine.release(chunk.size, flight.slot)
        self._flights.discard(flight)
        if self._plans_by_cost:
            meter = self._arrival_meter
            meter.chunk_landed()
            if not self._free_slots:
                meter.slot_freed()
        self._free_slots += 1
        self._chunks_per_size[chunk.size] += 1
        self._samples_per_size[chunk.size] += chunk.samples
        self._padded_rows += chunk.padding
        if flight.error is not None:
            self._chunk_failed(chunk, flight.members, flight.error)
        else:
            self._observe(flight)
            self._deliver(chunk, flight.members, flight.outputs)
        self._wakeup.set()
        self._note_progress()
        if not self._flights:
            self._landed.set()

    def _deliver(self, chunk: Chunk, members: list[Request], outputs: Outputs) -> None:
        assert self._engine is not None
        names = self._engine.spec.output_names
        single = len(outputs) == 1
        for row, request in enumerate(members):
            if request.state is not State.RUNNING:
                continue  # cancelled, or failed by a bounded close: nobody wants this row
            result: Output = (
                outputs[0][row]
                if single
                else {name: out[row] for name, out in zip(names, outputs, strict=True)}
            )
            self._inflight_samples -= 1
            self._settle(request, result, None)
            self._completed += 1

    def _chunk_failed(self, chunk: Chunk, members: list[Request], exc: Exception) -> None:
        self._failed_chunks_per_size[chunk.size] += 1
        failures = self._failed_chunks_per_size[chunk.size]
        logger.warning(
            "inference of a %d-row chunk failed (%d failure(s) at this size so far): %r",
            chunk.size,
            failures,
            exc,
        )
        for request in members:
            if request.state is not State.RUNNING:
                continue
            self._inflight_samples -= 1
            # One exception object per caller, all chained to the one real cause.
            error = InferenceError(
                f"inference of the {chunk.size}-row chunk holding this sample failed: {exc}"
            )
            error.__cause__ = exc
            self._settle(request, None, error)
            self._failed += 1

    def _observe(self, flight: Flight) -> None:
        live = self._live_costs
        if live is None or not self._plans_by_cost:
            return
        device = flight.device_seconds
        host = time.perf_counter() - flight.launched - device
        live.observe(flight.chunk.size, device, flight.shared, host)
        self._chunks_since_drift_check += 1
        if self._chunks_since_drift_check >= _DRIFT_CHECK_EVERY:
            self._chunks_since_drift_check = 0
            rate = self._arrival_meter.close_window()
            moved = abs(rate - self._arrival_rate) > _ARRIVAL_TOLERANCE * max(
                rate, self._arrival_rate
            )
            if moved:
                self._arrival_rate = rate
            if live.drifted or moved:
                self._plan_with(live.mark_planned())


def _as_priority(priority: object, levels: int) -> int:
    """An integer priority from any integer-like value, or the rule it breaks."""
    if isinstance(priority, bool):
        raise ValueError(_priority_rule(priority, levels))
    try:
        return operator.index(priority)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(_priority_rule(priority, levels)) from None


def _priority_rule(priority: object, levels: int) -> str:
    return (
        f"priority must be an integer in [0, {levels - 1}] "
        f"(config.priority_levels = {levels}), got {priority!r}"
    )


def _deadline_error(request: Request, now: float) -> DeadlineExceeded:
    waited = now - request.arrival
    return DeadlineExceeded(
        f"the deadline passed after {waited:.6f} s in the queue; the sample was not computed"
    )


async def _with_measured_overhead(engine: Engine) -> CostTable:
    """The profiled table plus an estimate of the host cost of one chunk.

    Profiling times ``infer()`` alone; a chunk served by the batcher also pays for starting
    the request, a hand-off to a thread that waits for it and the way back to the loop,
    which is what makes many tiny chunks slower than their device time suggests. This times
    that round trip through anyio's worker threads, a little dearer than the batcher's own
    waiters, which stands in for the loop's per-chunk bookkeeping it does not time. Each
    round trip is paired with a plain ``infer()`` right before it, and the figure is the
    median difference, so a change in the machine's speed during the measurement cancels.
    """
    size = engine.sizes[0]
    request = engine.pools[size][0].request
    engine.pools[size][0].zero_inputs()
    await anyio.to_thread.run_sync(request.infer)  # starts anyio's worker thread
    extra = []
    for _ in range(_OVERHEAD_RUNS):
        started = time.perf_counter()
        request.infer()
        middle = time.perf_counter()
        request.start_async()
        await anyio.to_thread.run_sync(request.wait)
        extra.append((time.perf_counter() - middle) - (middle - started))
    overhead = max(statistics.median(extra), _MIN_OVERHEAD)
    return CostTable(
        engine.costs.seconds,
        source=engine.costs.source,
        overhead=overhead,
        shared_seconds=engine.costs.shared_seconds,
    )
