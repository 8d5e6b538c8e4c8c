"""OpenVINO side: compiled models per batch size, their infer requests, profiling.

Everything here either runs on the event loop and only copies memory (``Slot.fill``,
``start_async``), or runs in a thread of its own (``Waiters``, ``load_engine``); nothing
here awaits, so the scheduler decides what runs where.
"""

from __future__ import annotations

import queue
import statistics
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import openvino as ov

from ._config import BatcherConfig
from ._costs import CostTable, plausible_shape
from ._model import ModelSource, ModelSpec, compile_for_batch, read_model
from ._planner import Chunk
from ._queue import Request

__all__ = ["Engine", "Flight", "Slot", "Waiters", "load_engine"]

Outputs = tuple[npt.NDArray[Any], ...]
ChunkHook = Callable[[Chunk], None]


class Slot:
    """One infer request and the numpy views of its input buffers.

    A static slot's inputs are written in place (no per-chunk allocation); a dynamic slot
    allocates arrays of the chunk's own size and hands them to OpenVINO without a copy.
    """

    __slots__ = ("_held", "_inputs", "dynamic", "request")

    def __init__(self, request: Any, n_inputs: int, dynamic: bool) -> None:
        self.request = request
        self.dynamic = dynamic
        self._inputs: list[npt.NDArray[Any]] = (
            [] if dynamic else [request.get_input_tensor(i).data for i in range(n_inputs)]
        )
        self._held: list[npt.NDArray[Any]] = []

    def fill(self, chunk: Chunk, members: Sequence[Request], n_inputs: int, pad: float) -> None:
        rows = chunk.samples
        if self.dynamic:
            self._held = [np.stack([r.inputs[i] for r in members]) for i in range(n_inputs)]
            for i, array in enumerate(self._held):
                self.request.set_input_tensor(i, ov.Tensor(array, shared_memory=True))
            return
        for i, buffer in enumerate(self._inputs):
            np.stack([r.inputs[i] for r in members], out=buffer[:rows])
            if rows < buffer.shape[0]:
                buffer[rows:] = pad

    def zero_inputs(self) -> None:
        for buffer in self._inputs:
            buffer[...] = 0

    def read_outputs(self, rows: int, n_outputs: int) -> Outputs:
        """Copies of the real rows of every output: the request's buffers get reused."""
        self._held = []
        outputs = [self.request.get_output_tensor(i).data for i in range(n_outputs)]
        if any(out.ndim == 0 or out.shape[0] < rows for out in outputs):
            # Fails this chunk alone, in the waiter thread, instead of a caller getting a
            # row that is not its own (say, a dynamic-batch model summing over the batch).
            raise RuntimeError(f"an output has fewer rows than the chunk's {rows} samples")
        return tuple(np.array(out[:rows]) for out in outputs)


class Flight:
    """One chunk between ``start_async`` and its outcome coming back to the event loop."""

    __slots__ = (
        "chunk",
        "device_seconds",
        "error",
        "launched",
        "members",
        "outputs",
        "shared",
        "slot",
        "started",
    )

    def __init__(self, chunk: Chunk, members: list[Request], slot: Slot) -> None:
        self.chunk = chunk
        self.members = members
        self.slot = slot
        #: False: the waiter thread calls ``start_async`` before waiting.
        self.started = False
        self.outputs: Outputs = ()
        self.error: Exception | None = None
        self.device_seconds = 0.0
        #: ``perf_counter`` when the scheduler launched it: with ``device_seconds``, what the
        #: round trip through the host cost on top of the inference.
        self.launched = time.perf_counter()
        #: Another chunk ran beside this one at some point, so its timing is compared with
        #: the shared figure (see :class:`~batcher._costs.CostTable`).
        self.shared = False


class Waiters:
    """Threads that wait for started inferences and hand each outcome to the event loop.

    Why not OpenVINO's completion callback: it is never called when an inference fails
    (seen with OpenVINO 2026.4), so a callback-only design can leave callers waiting
    forever. ``wait()`` raises the failure instead. One thread per device slot means a
    started flight never waits for a thread; the outcome goes back with a non-blocking
    thread-safe call, so neither the event loop nor OpenVINO's threads ever block on us.
    """

    def __init__(
        self,
        count: int,
        n_outputs: int,
        call_soon: Callable[..., object],
        on_done: Callable[[Flight], None],
        hook: Callable[[], ChunkHook | None],
    ) -> None:
        self._queue: queue.SimpleQueue[Flight | None] = queue.SimpleQueue()
        self._n_outputs = n_outputs
        self._call_soon = call_soon
        self._on_done = on_done
        self._hook = hook
        self._threads = [
            threading.Thread(target=self._serve, name=f"batcher-waiter-{i}", daemon=True)
            for i in range(count)
        ]
        for thread in self._threads:
            thread.start()

    def watch(self, flight: Flight) -> None:
        self._queue.put(flight)

    def stop(self) -> None:
        """Stop every thread (blocking: call from a worker thread once no flight is left)."""
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()

    def _serve(self) -> None:
        while (flight := self._queue.get()) is not None:
            request = flight.slot.request
            try:
                if not flight.started:
                    request.start_async()
                request.wait()
                flight.device_seconds = request.latency / 1e3
                hook = self._hook()
                if hook is not None:
                    hook(flight.chunk)
                flight.outputs = flight.slot.read_outputs(flight.chunk.samples, self._n_outputs)
            except BaseException as exc:  # the flight must land whatever ended it
                flight.error = (
                    exc if isinstance(exc, Exception) else RuntimeError(f"waiter stopped: {exc!r}")
                )
            self._call_soon(self._on_done, flight)


@dataclass(slots=True)
class Engine:
    """The compiled models of one Batcher and a free-slot pool per compiled size."""

    spec: ModelSpec
    sizes: tuple[int, ...]
    slots: int
    pools: dict[int, list[Slot]]
    compiled: dict[int, Any]
    compile_seconds: float
    profile_seconds: float
    costs: CostTable

    def acquire(self, size: int) -> Slot:
        # The scheduler never runs more chunks than ``slots`` and each pool holds ``slots``
        # requests, so a pool is never empty here.
        return self._pool(size).pop()

    def release(self, size: int, slot: Slot) -> None:
        self._pool(size).append(slot)

    def _pool(self, size: int) -> list[Slot]:
        # Dynamic mode has one model, pooled under 0, for every chunk size.
        return self.pools[0] if 0 in self.pools else self.pools[size]


def _properties(config: BatcherConfig) -> Mapping[str, str]:
    properties = {"PERFORMANCE_HINT": config.performance_hint}
    if "CPU" in config.device and not config.dynamic:
        # Each compiled size pins its own stream threads to the same first cores, so two
        # chunks of different sizes running at once shared one core while the other idled
        # (measured: no gain from the second slot). Unpinned, the OS spreads them.
        properties["ENABLE_CPU_PINNING"] = "NO"
    properties.update(config.ov_config)
    return properties


def load_engine(source: ModelSource, config: BatcherConfig, core: ov.Core | None) -> Engine:
    """Read and compile the model for every configured size (blocking: run in a thread)."""
    core = core or ov.Core()
    model = read_model(core, source)
    spec = ModelSpec.of(model)
    started = time.perf_counter()
    properties = _properties(config)
    if isinstance(config.batch_sizes, str):
        sizes = tuple(range(1, config.largest_batch + 1))
        compiled = {0: compile_for_batch(core, model, -1, config.device, properties)}
    else:
        sizes = config.batch_sizes
        compiled = {
            size: compile_for_batch(core, model, size, config.device, properties) for size in sizes
        }
    n_inputs = len(spec.inputs)
    slots = config.max_inflight_chunks or max(
        1, int(compiled[max(compiled)].get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    )
    pools = {
        size: [Slot(model_.create_infer_request(), n_inputs, size == 0) for _ in range(slots)]
        for size, model_ in compiled.items()
    }
    for pool in pools.values():
        for slot in pool:
            if not slot.dynamic:
                # The first inference of a request allocates its buffers: pay it here, not
                # in some caller's latency.
                slot.zero_inputs()
                slot.request.infer()
    compile_seconds = time.perf_counter() - started
    spec = _with_output_shapes(spec, compiled[max(compiled)])
    started = time.perf_counter()
    costs = _initial_costs(config, sizes, pools)
    return Engine(
        spec=spec,
        sizes=sizes,
        slots=slots,
        pools=pools,
        compiled=compiled,
        compile_seconds=compile_seconds,
        profile_seconds=time.perf_counter() - started,
        costs=costs,
    )


def _with_output_shapes(spec: ModelSpec, compiled: Any) -> ModelSpec:
    from ._model import TensorSpec

    outputs = []
    for tensor, port in zip(spec.outputs, compiled.outputs, strict=True):
        shape = port.get_partial_shape()
        rest = tuple(int(d.get_length()) if d.is_static else -1 for d in list(shape)[1:])
        outputs.append(TensorSpec(tensor.name, rest, tensor.dtype))
    return ModelSpec(spec.inputs, tuple(outputs))


def _initial_costs(
    config: BatcherConfig, sizes: tuple[int, ...], pools: dict[int, list[Slot]]
) -> CostTable:
    if config.cost_table_path is not None:
        table = CostTable.load(config.cost_table_path)
        missing = [s for s in sizes if s not in table.seconds]
        if missing:
            raise ValueError(
                f"cost table {config.cost_table_path!r} has no figure for batch sizes {missing}"
            )
        return table
    if config.strategy != "auto" or config.profile_budget <= 0 or 0 in pools:
        return CostTable.assumed(sizes)
    return profile(pools, sizes, config.profile_budget)


#: Passes over all sizes when profiling: a burst of load from elsewhere on the machine then
#: spoils one pass of every size instead of every figure of one size, and medians drop it.
_PROFILE_PASSES = 5


def profile(pools: dict[int, list[Slot]], sizes: tuple[int, ...], budget: float) -> CostTable:
    """Seconds per inference of each size, idle and shared, spending about ``budget`` in all.

    Idle: one request at a time. Shared: every slot of the size kept busy, each restarted as
    soon as it finishes, as under load; the figure is how long each chunk holds its slot.
    The two differ most for small, overhead-bound chunks, whose slots contend for the same
    cores, and sizes differ in how well they share. Sizes are measured in interleaved passes
    and each figure is the median of its passes.
    """
    # Every slot was zeroed and run once by load_engine: no warm-up needed here.
    per_run = budget / len(sizes) / _PROFILE_PASSES / 2
    idle_runs: dict[int, list[float]] = {size: [] for size in sizes}
    shared_runs: dict[int, list[float]] = {size: [] for size in sizes}
    for _ in range(_PROFILE_PASSES):
        for size in sizes:
            idle_runs[size].append(_idle_seconds(pools[size][0], per_run))
            shared_runs[size].append(_shared_seconds(pools[size], per_run))
    idle = plausible_shape({size: statistics.median(runs) for size, runs in idle_runs.items()})
    shared = plausible_shape(
        {size: statistics.median(runs) for size, runs in shared_runs.items()}, floor=idle
    )
    return CostTable(idle, source="profiled", shared_seconds=shared)


def _idle_seconds(slot: Slot, budget: float) -> float:
    """Median seconds of back-to-back ``infer()`` calls, at least three."""
    request = slot.request
    times: list[float] = []
    spent = 0.0
    while len(times) < 3 or (spent < budget and len(times) < 100):
        started = time.perf_counter()
        request.infer()
        elapsed = time.perf_counter() - started
        times.append(elapsed)
        spent += elapsed
    return statistics.median(times)


def _shared_seconds(pool: list[Slot], budget: float) -> float:
    """Seconds each chunk holds its slot with every slot of ``pool`` kept busy."""
    requests = [slot.request for slot in pool]
    started = time.perf_counter()
    for request in requests:
        request.start_async()
    finished = 0
    while finished < 3 * len(requests) or time.perf_counter() - started < budget:
        for request in requests:
            request.wait()
            finished += 1
            request.start_async()
    for request in requests:
        request.wait()
    finished += len(requests)
    return len(requests) * (time.perf_counter() - started) / finished
