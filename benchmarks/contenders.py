"""Everything measured against each other, each behind one ``await infer(sample)`` call.

A contender compiles the same model and answers the same single-sample requests; only how
requests become inferences differs. Each records what it cost to get ready (wall time,
resident memory) and, where it knows them, how many inferences it ran.
"""

from __future__ import annotations

import abc
import dataclasses
import gc
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self

import anyio
import anyio.abc
import numpy as np
import numpy.typing as npt
import openvino as ov
import psutil

from batcher import Batcher, BatcherConfig
from batcher._model import compile_for_batch

from .bridge import QueueBridge
from .workloads import Sample, Workload

__all__ = [
    "CONTENDERS",
    "Contender",
    "ContenderSpec",
    "Counters",
    "Options",
    "Setup",
    "open_contender",
]

Kind = Literal["naive", "ov-async", "auto-batch", "batcher"]
SIZES = (1, 2, 4, 8, 16, 32)


@dataclass(frozen=True, slots=True)
class ContenderSpec:
    name: str
    kind: Kind
    description: str
    config: BatcherConfig | None = None


CONTENDERS: tuple[ContenderSpec, ...] = (
    ContenderSpec(
        "naive", "naive", "one synchronous batch-1 infer() per request, one at a time, in a thread"
    ),
    ContenderSpec("ov-async-b1", "ov-async", "AsyncInferQueue at batch 1, THROUGHPUT hint"),
    ContenderSpec("ov-auto-batch", "auto-batch", "OpenVINO automatic batching, BATCH:CPU(n)"),
    ContenderSpec(
        "batcher-dynamic",
        "batcher",
        "Batcher, one model with a dynamic batch axis (max 32)",
        BatcherConfig(batch_sizes="dynamic", max_batch_size=32),
    ),
    ContenderSpec(
        "batcher-pad32",
        "batcher",
        "Batcher, batch size 32 only, padded",
        BatcherConfig(batch_sizes=(32,), strategy="pad"),
    ),
    ContenderSpec(
        "batcher-decompose",
        "batcher",
        "Batcher, sizes 1..32, binary decomposition (the product)",
        BatcherConfig(batch_sizes=SIZES, strategy="decompose"),
    ),
    ContenderSpec(
        "batcher-pad",
        "batcher",
        "Batcher, sizes 1..32, pad to the next size",
        BatcherConfig(batch_sizes=SIZES, strategy="pad"),
    ),
    ContenderSpec(
        "batcher-auto",
        "batcher",
        "Batcher, sizes 1..32, cost-based plans",
        BatcherConfig(batch_sizes=SIZES, strategy="auto"),
    ),
)


@dataclass(frozen=True, slots=True)
class Options:
    """Settings that depend on the run: measured best size, quick mode."""

    auto_batch_size: int
    auto_batch_timeout_ms: int
    profile_budget: float


@dataclass(frozen=True, slots=True)
class Counters:
    """Inferences run and real samples they carried, cumulative."""

    chunks: int
    samples: int


@dataclass(slots=True)
class Setup:
    """What getting the contender ready cost."""

    seconds: float = 0.0
    compile_seconds: float = 0.0
    profile_seconds: float = 0.0
    rss_delta_mib: float = 0.0
    sizes: list[int] | str = dataclasses.field(default_factory=list)
    infer_requests: int = 0
    properties: dict[str, str] = dataclasses.field(default_factory=dict)


class Contender(abc.ABC):
    """An async context manager; ``infer`` is valid between enter and exit."""

    def __init__(self, spec: ContenderSpec, workload: Workload, core: ov.Core) -> None:
        self.spec = spec
        self.workload = workload
        self.core = core
        self.setup = Setup()

    async def __aenter__(self) -> Self:
        # Collect first so memory freed by the previous contender does not mask this one's.
        gc.collect()
        process = psutil.Process()
        rss = process.memory_info().rss
        started = time.perf_counter()
        await self._open()
        self.setup.seconds = time.perf_counter() - started
        self.setup.rss_delta_mib = (process.memory_info().rss - rss) / 2**20
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close()

    @abc.abstractmethod
    async def _open(self) -> None: ...

    @abc.abstractmethod
    async def _close(self) -> None: ...

    @abc.abstractmethod
    async def infer(self, sample: Sample) -> npt.NDArray[Any]: ...

    def counters(self) -> Counters | None:
        """Cumulative inference counts, or None when the contender cannot know them."""
        return None

    def _compile(self, batch: int, device: str, properties: dict[str, str]) -> Any:
        started = time.perf_counter()
        compiled = compile_for_batch(self.core, self.workload.build(), batch, device, properties)
        self.setup.compile_seconds += time.perf_counter() - started
        self.setup.properties = properties
        return compiled


class Naive(Contender):
    """What the first version of a service does: ``infer()`` per request, serialised."""

    async def _open(self) -> None:
        # Default properties: a naive user passes none (CPU then favours latency).
        compiled = await anyio.to_thread.run_sync(self._compile, 1, "CPU", {})
        self._request = compiled.create_infer_request()
        self._limiter = anyio.CapacityLimiter(1)
        self._count = 0
        self.setup.sizes = [1]
        self.setup.infer_requests = 1

    def _run(self, sample: Sample) -> npt.NDArray[Any]:
        self._request.infer({0: sample[None]})
        return np.array(self._request.get_output_tensor(0).data[0])

    async def infer(self, sample: Sample) -> npt.NDArray[Any]:
        output = await anyio.to_thread.run_sync(self._run, sample, limiter=self._limiter)
        self._count += 1
        return output

    def counters(self) -> Counters:
        return Counters(self._count, self._count)

    async def _close(self) -> None:
        pass


class _Bridged(Contender):
    """A compiled batch-1 model served through an ``AsyncInferQueue`` bridge."""

    _bridge: QueueBridge
    _group: anyio.abc.TaskGroup

    async def _start(self, compiled: Any) -> None:
        jobs = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self._bridge = QueueBridge(compiled, jobs)
        self.setup.sizes = [1]
        self.setup.infer_requests = jobs
        self._group = anyio.create_task_group()
        await self._group.__aenter__()
        self._group.start_soon(self._bridge.pump)

    async def infer(self, sample: Sample) -> npt.NDArray[Any]:
        return await self._bridge.infer(sample)

    async def _close(self) -> None:
        self._group.cancel_scope.cancel()
        await self._group.__aexit__(None, None, None)
        await anyio.to_thread.run_sync(self._bridge.close)


class AsyncQueueBatch1(_Bridged):
    """OpenVINO's own answer to many requests: parallel infer requests, no batching."""

    async def _open(self) -> None:
        compiled = await anyio.to_thread.run_sync(
            self._compile, 1, "CPU", {"PERFORMANCE_HINT": "THROUGHPUT"}
        )
        await self._start(compiled)
        self._count = 0

    async def infer(self, sample: Sample) -> npt.NDArray[Any]:
        output = await self._bridge.infer(sample)
        self._count += 1
        return output

    def counters(self) -> Counters:
        return Counters(self._count, self._count)


class AutoBatch(_Bridged):
    """OpenVINO automatic batching: the BATCH device gathers batch-1 requests itself."""

    def __init__(
        self, spec: ContenderSpec, workload: Workload, core: ov.Core, options: Options
    ) -> None:
        super().__init__(spec, workload, core)
        self._options = options

    async def _open(self) -> None:
        n = self._options.auto_batch_size
        # OpenVINO's default timeout (1000 ms) would hold a lone request for a second; a
        # user serving live traffic sets it near one batch's inference time.
        properties = {
            "PERFORMANCE_HINT": "THROUGHPUT",
            "AUTO_BATCH_TIMEOUT": str(self._options.auto_batch_timeout_ms),
        }
        compiled = await anyio.to_thread.run_sync(self._compile, 1, f"BATCH:CPU({n})", properties)
        await self._start(compiled)
        self.setup.sizes = [n]


class BatcherContender(Contender):
    """The library under test, in one of its configurations."""

    def __init__(
        self, spec: ContenderSpec, workload: Workload, core: ov.Core, options: Options
    ) -> None:
        super().__init__(spec, workload, core)
        assert spec.config is not None
        self.config = dataclasses.replace(spec.config, profile_budget=options.profile_budget)

    async def _open(self) -> None:
        self._batcher = Batcher(self.workload.build(), self.config, core=self.core)
        await self._batcher.__aenter__()
        stats = self._batcher.statistics()
        self.setup.compile_seconds = stats.compile_seconds
        self.setup.profile_seconds = stats.profile_seconds
        sizes = self.config.batch_sizes
        self.setup.sizes = "dynamic" if isinstance(sizes, str) else list(sizes)
        self.setup.infer_requests = stats.slots
        self.setup.properties = {"PERFORMANCE_HINT": self.config.performance_hint}

    async def infer(self, sample: Sample) -> npt.NDArray[Any]:
        output = await self._batcher.submit(sample)
        assert isinstance(output, np.ndarray)
        return output

    def counters(self) -> Counters:
        stats = self._batcher.statistics()
        return Counters(sum(stats.chunks_per_size.values()), sum(stats.samples_per_size.values()))

    def statistics_summary(self) -> dict[str, Any]:
        stats = self._batcher.statistics()
        table = stats.cost_table
        return {
            "mean_chunk_size": stats.mean_chunk_size,
            "chunks_per_size": {str(k): v for k, v in sorted(stats.chunks_per_size.items())},
            "padded_rows": stats.padded_rows,
            "cost_table_ms": {str(k): v * 1e3 for k, v in table.seconds.items()} if table else {},
            "shared_cost_table_ms": (
                {str(k): v * 1e3 for k, v in table.shared.items()} if table else {}
            ),
            "overhead_ms": table.overhead * 1e3 if table else None,
            "cost_table_source": table.source if table else None,
            "failed": stats.failed,
        }

    async def _close(self) -> None:
        await self._batcher.__aexit__(None, None, None)


def open_contender(
    spec: ContenderSpec, workload: Workload, core: ov.Core, options: Options
) -> Contender:
    """The contender for ``spec``; enter it (``async with``) to compile."""
    if spec.kind == "naive":
        return Naive(spec, workload, core)
    if spec.kind == "ov-async":
        return AsyncQueueBatch1(spec, workload, core)
    if spec.kind == "auto-batch":
        return AutoBatch(spec, workload, core, options)
    return BatcherContender(spec, workload, core, options)
