"""The Batcher: an anyio queue in front of OpenVINO models precompiled per batch size."""

from __future__ import annotations

import enum
import logging
import math
import statistics
import time
from collections import Counter
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import numpy.typing as npt
import openvino as ov

from ._config import BatcherConfig
from ._costs import CostTable, LiveCosts
from ._errors import BatcherClosed, DeadlineExceeded, InferenceError, InvalidSample, QueueFull
from ._execution import ChunkHook, Engine, Outputs, load_engine
from ._model import ModelSource, ModelSpec
from ._planner import Chunk, plan
from ._queue import PendingQueue, Request, State
from ._stats import BatcherStatistics

__all__ = ["Batcher", "Output"]

logger = logging.getLogger("batcher")

#: One sample's result: an array for single-output models, else a mapping name -> array.
Output = npt.NDArray[Any] | dict[str, npt.NDArray[Any]]

# Chunk timings move the cost table a little each time; re-deriving plans on every move would
# cost more than it saves, so drift is checked once per this many finished chunks.
_DRIFT_CHECK_EVERY = 64
_OVERHEAD_RUNS = 15
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
        self._room: anyio.Semaphore | None
        self._scheduler_scope: anyio.CancelScope
        self._wakeup: anyio.Event
        self._drained: anyio.Event
        self._drain_done: anyio.Event
        self._limiter: anyio.CapacityLimiter
        self._running: dict[int, list[Request]] = {}
        self._next_chunk_id = 0
        self._free_slots = 0
        self._broken: BaseException | None = None
        self._plans: dict[int, tuple[Chunk, ...]] = {}
        self._live_costs: LiveCosts | None = None
        self._plan_costs: Mapping[int, float] = {}
        self._chunks_since_drift_check = 0
        # Tests inject faults or hold chunks through this; it runs in the worker thread.
        self._chunk_hook: ChunkHook | None = None
        self._counts: Counter[str] = Counter()
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
        self._limiter = anyio.CapacityLimiter(engine.slots)
        size = config.max_queue_size
        self._room = anyio.Semaphore(size) if size is not None else None
        self._scheduler_scope = anyio.CancelScope()
        self._wakeup = anyio.Event()
        self._drained = anyio.Event()
        self._drain_done = anyio.Event()
        self._live_costs = LiveCosts(engine.costs, config.cost_smoothing)
        self._plan_costs = self._live_costs.mark_planned()
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
    ) -> bool | None:
        try:
            await self.aclose()
        finally:
            self._scheduler_scope.cancel()
            self._fail_unfinished("the batcher closed before this request finished")
            assert self._task_group is not None
            # Chunk tasks are shielded and finite: this waits for OpenVINO to finish with
            # every request, so nothing of ours runs after the block is left.
            result = await self._task_group.__aexit__(exc_type, exc, tb)
            self._phase = _Phase.CLOSED
        return result

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
        return self._queue.depth == 0 and not self._running

    def _fail_unfinished(self, reason: str) -> None:
        for request in self._queue.drain():
            request.state = State.DONE
            self._release_room()
            self._settle(request, None, BatcherClosed(reason), "failed")
        for members in self._running.values():
            for request in members:
                if request.state is State.RUNNING:
                    self._inflight_samples -= 1
                    self._settle(request, None, BatcherClosed(reason), "failed")
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
        counts = self._counts
        costs = (
            self._live_costs.snapshot()
            if self._live_costs is not None
            else CostTable.assumed(engine.sizes if engine else (1,))
        )
        return BatcherStatistics(
            submitted=counts["submitted"],
            completed=counts["completed"],
            failed=counts["failed"],
            cancelled=counts["cancelled"],
            expired=counts["expired"],
            rejected=counts["rejected"],
            invalid=counts["invalid"],
            queue_depth=self._queue.depth,
            inflight_chunks=len(self._running),
            inflight_samples=self._inflight_samples,
            chunks_per_size=dict(self._chunks_per_size),
            samples_per_size=dict(self._samples_per_size),
            failed_chunks_per_size=dict(self._failed_chunks_per_size),
            padded_rows=self._padded_rows,
            slots=engine.slots if engine else 0,
            compile_seconds=engine.compile_seconds if engine else 0.0,
            profile_seconds=engine.profile_seconds if engine else 0.0,
            cost_table=costs,
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
        engine = self._open_engine()
        config = self._config
        if (
            isinstance(priority, bool)
            or not isinstance(priority, int)
            or not (0 <= priority < config.priority_levels)
        ):
            raise ValueError(
                f"priority must be an integer in [0, {config.priority_levels - 1}] "
                f"(config.priority_levels = {config.priority_levels}), got {priority!r}"
            )
        if timeout is None:
            timeout = config.default_timeout
        elif not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        try:
            inputs = engine.spec.validate(sample, config.input_casting)
        except InvalidSample:
            self._counts["invalid"] += 1
            raise
        now = anyio.current_time()
        deadline = math.inf if timeout is None else now + timeout
        if self._room is not None:
            await self._acquire_room(wait_for_room, deadline)
        if self._phase is not _Phase.OPEN:
            self._release_room()
            raise BatcherClosed("the batcher closed while this request waited for queue room")
        request = Request(inputs, priority, now, deadline)
        self._queue.push(request)
        self._counts["submitted"] += 1
        self._wakeup.set()
        return await self._result_of(request)

    async def _acquire_room(self, wait: bool, deadline: float) -> None:
        assert self._room is not None
        try:
            # The common case (room available) must not pay for a checkpoint and cancel scope.
            self._room.acquire_nowait()
            return
        except anyio.WouldBlock:
            if not wait:
                self._counts["rejected"] += 1
                raise QueueFull(
                    f"the queue holds max_queue_size={self._config.max_queue_size} samples"
                ) from None
        with anyio.move_on_at(deadline):
            await self._room.acquire()
            return
        self._counts["expired"] += 1
        self._counts["submitted"] += 1
        raise DeadlineExceeded("the deadline passed while waiting for room in the queue")

    def _release_room(self) -> None:
        if self._room is not None:
            self._room.release()

    async def _result_of(self, request: Request) -> Output:
        try:
            if request.deadline == math.inf:
                await request.event.wait()
            else:
                with anyio.move_on_at(request.deadline):
                    await request.event.wait()
            if request.state is State.QUEUED:
                self._leave_queue(request)
                self._settle(request, None, _deadline_error(request), "expired")
            # A deadline bounds queueing only: a sample already running finishes.
            await request.event.wait()
        except BaseException:
            if request.state is State.QUEUED:
                self._leave_queue(request)
                self._settle(request, None, None, "cancelled")
            elif request.state is State.RUNNING:
                self._inflight_samples -= 1
                self._settle(request, None, None, "cancelled")
            raise
        if request.error is not None:
            raise request.error
        return request.result  # type: ignore[return-value]

    def _leave_queue(self, request: Request) -> None:
        request.state = State.DONE
        self._queue.forget(request)
        self._release_room()
        self._note_progress()

    def _settle(
        self, request: Request, result: object, error: BaseException | None, outcome: str
    ) -> None:
        request.state = State.DONE
        request.result = result
        request.error = error
        request.inputs = ()  # the caller is answered: free the sample's memory now
        self._counts[outcome] += 1
        request.event.set()

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
                    self._wakeup = anyio.Event()
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
            or not self._running
            or self._queue.depth >= config.largest_batch
            or self._phase is not _Phase.OPEN
        ):
            return False
        until = self._queue.oldest_arrival() + config.max_delay
        if until <= anyio.current_time():
            return False
        self._wakeup = anyio.Event()
        with anyio.move_on_at(until):
            await self._wakeup.wait()
        return True

    def _plan(self, n: int) -> tuple[Chunk, ...]:
        cached = self._plans.get(n)
        if cached is None:
            engine = self._engine
            assert engine is not None
            strategy = (
                "decompose"
                if isinstance(self._config.batch_sizes, str)
                else (self._config.strategy)
            )
            cached = plan(
                n, engine.sizes, strategy, self._plan_costs, engine.slots, engine.costs.overhead
            )
            cached = tuple(sorted(cached, reverse=True))
            self._plans[n] = cached
        return cached

    def _dispatch(self) -> None:
        engine = self._engine
        assert engine is not None
        assert self._task_group is not None
        now = anyio.current_time()
        limit = min(self._queue.depth, self._free_slots * self._config.largest_batch)
        batch: list[Request] = []
        for request in self._queue.take(limit):
            if request.deadline <= now:
                request.state = State.DONE
                self._release_room()
                self._settle(request, None, _deadline_error(request), "expired")
            else:
                batch.append(request)
        if not batch:
            self._note_progress()
            return
        chunks = self._plan(len(batch))[: self._free_slots]
        start = 0
        for chunk in chunks:
            members = batch[start : start + chunk.samples]
            start += chunk.samples
            for request in members:
                request.state = State.RUNNING
                self._release_room()
            self._inflight_samples += len(members)
            self._free_slots -= 1
            chunk_id = self._next_chunk_id
            self._next_chunk_id += 1
            self._running[chunk_id] = members
            self._task_group.start_soon(self._run_chunk, chunk_id, chunk, members)
        if start < len(batch):
            self._queue.put_back(batch[start:])

    async def _run_chunk(self, chunk_id: int, chunk: Chunk, members: list[Request]) -> None:
        engine = self._engine
        assert engine is not None
        spec = engine.spec
        slot = engine.acquire(chunk.size)
        # Shielded: a chunk is finite work, and its callers must hear how it ended even when
        # the surrounding task group is being cancelled.
        with anyio.CancelScope(shield=True):
            try:
                started = anyio.current_time()
                slot.fill(chunk, members, len(spec.inputs), self._config.pad_value)
                slot.request.start_async()
                outputs, _ = await anyio.to_thread.run_sync(
                    slot.collect, chunk, len(spec.outputs), self._chunk_hook, limiter=self._limiter
                )
            except Exception as exc:
                self._chunk_failed(chunk, members, exc)
            else:
                self._observe(chunk, anyio.current_time() - started)
                self._deliver(chunk, members, outputs)
            finally:
                engine.release(chunk.size, slot)
                del self._running[chunk_id]
                self._free_slots += 1
                self._chunks_per_size[chunk.size] += 1
                self._samples_per_size[chunk.size] += chunk.samples
                self._padded_rows += chunk.padding
                self._wakeup.set()
                self._note_progress()

    def _deliver(self, chunk: Chunk, members: list[Request], outputs: Outputs) -> None:
        assert self._engine is not None
        names = self._engine.spec.output_names
        single = len(outputs) == 1
        for row, request in enumerate(members):
            if request.state is not State.RUNNING:
                continue  # cancelled, or failed by a bounded close: nobody wants this row
            self._inflight_samples -= 1
            result: Output = (
                outputs[0][row]
                if single
                else {name: out[row] for name, out in zip(names, outputs, strict=True)}
            )
            self._settle(request, result, None, "completed")

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
            self._settle(request, None, error, "failed")

    def _observe(self, chunk: Chunk, seconds: float) -> None:
        live = self._live_costs
        if live is None or isinstance(self._config.batch_sizes, str):
            return
        live.observe(chunk.size, seconds)
        self._chunks_since_drift_check += 1
        if self._chunks_since_drift_check >= _DRIFT_CHECK_EVERY:
            self._chunks_since_drift_check = 0
            if self._config.strategy == "auto" and live.drifted:
                self._plan_costs = live.mark_planned()
                self._plans.clear()


def _deadline_error(request: Request) -> DeadlineExceeded:
    waited = anyio.current_time() - request.arrival
    return DeadlineExceeded(
        f"the deadline passed after {waited:.6f} s in the queue; the sample was not computed"
    )


async def _with_measured_overhead(engine: Engine) -> CostTable:
    """The profiled table plus the host cost of one chunk through the real async path.

    Profiling times ``infer()`` alone; a chunk served by the batcher also pays for starting
    the request and handing the wait to a worker thread, which is what makes many tiny
    chunks slower than their device time suggests.
    """
    size = engine.sizes[0]
    slot = engine.pools[size][0]
    slot.zero_inputs()
    walls = []
    for _ in range(_OVERHEAD_RUNS):
        started = time.perf_counter()
        slot.request.start_async()
        await anyio.to_thread.run_sync(slot.request.wait)
        walls.append(time.perf_counter() - started)
    overhead = max(statistics.median(walls) - engine.costs.seconds[size], _MIN_OVERHEAD)
    return CostTable(engine.costs.seconds, source=engine.costs.source, overhead=overhead)
