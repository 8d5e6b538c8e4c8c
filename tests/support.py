"""Shared test tools: batch-1 references, a chunk gate, callers that record their outcome."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import anyio.abc
import numpy as np
import numpy.typing as npt
import openvino as ov

from batcher import Batcher, Chunk

Array = npt.NDArray[Any]


def batch1_reference(model: ov.Model, samples: list[Any]) -> list[Any]:
    """The model's own batch-1 outputs, one inference per sample, no batcher involved."""
    copy = model.clone()
    copy.reshape({port: [1, *list(port.get_partial_shape())[1:]] for port in copy.inputs})
    compiled = ov.Core().compile_model(copy, "CPU")
    names = [port.get_any_name() for port in compiled.outputs]
    results = []
    for sample in samples:
        if isinstance(sample, Mapping):
            feed = {name: np.asarray(value)[None] for name, value in sample.items()}
        else:
            feed = {0: np.asarray(sample)[None]}
        out = compiled(feed)
        values = [out[port][0] for port in compiled.outputs]
        results.append(values[0] if len(values) == 1 else dict(zip(names, values, strict=True)))
    return results


def assert_close(actual: Any, expected: Any) -> None:
    if isinstance(expected, dict):
        assert isinstance(actual, dict)
        assert actual.keys() == expected.keys()
        for name in expected:
            np.testing.assert_allclose(actual[name], expected[name], rtol=1e-4, atol=1e-5)
    else:
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)


class ChunkGate:
    """A chunk hook: every chunk blocks in its worker thread until the test lets it go.

    ``fail_if`` picks chunks that fail instead of delivering results.
    """

    def __init__(
        self,
        fail_if: Callable[[Chunk], bool] | None = None,
        hold_if: Callable[[Chunk], bool] | None = None,
    ) -> None:
        self._permits = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._seen_more = threading.Condition(self._lock)
        self.seen: list[Chunk] = []
        self.fail_if = fail_if
        self.hold_if = hold_if
        self.open = False

    def __call__(self, chunk: Chunk) -> None:
        with self._lock:
            self.seen.append(chunk)
            self._seen_more.notify_all()
        held = self.hold_if is None or self.hold_if(chunk)
        # A bounded wait: a test that forgets to open the gate fails instead of hanging.
        if held and not self.open and not self._permits.acquire(timeout=20):
            raise RuntimeError("the test never let this chunk go")
        if self.fail_if is not None and self.fail_if(chunk):
            raise RuntimeError(f"injected failure in a {chunk.size}-row chunk")

    async def wait_seen(self, chunks: int) -> None:
        """Until ``chunks`` chunks reached the gate (their inference is done, in a thread)."""

        def wait() -> None:
            with self._seen_more:
                if not self._seen_more.wait_for(lambda: len(self.seen) >= chunks, timeout=20):
                    raise RuntimeError(f"only {len(self.seen)} of {chunks} chunks came")

        await anyio.to_thread.run_sync(wait)

    def release(self, chunks: int = 1) -> None:
        for _ in range(chunks):
            self._permits.release()

    def open_all(self) -> None:
        self.open = True
        self._permits.release(1000)


class Caller:
    """Submits one sample in its own cancel scope and records how it ended."""

    def __init__(self, batcher: Batcher, sample: Any, **kwargs: Any) -> None:
        self.batcher = batcher
        self.sample = sample
        self.kwargs = kwargs
        self.scope = anyio.CancelScope()
        self.done = anyio.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.cancelled = False

    async def run(self, order: list[Caller] | None = None) -> None:
        try:
            with self.scope:
                try:
                    self.result = await self.batcher.submit(self.sample, **self.kwargs)
                except Exception as exc:
                    self.error = exc
                if order is not None:
                    order.append(self)
            self.cancelled = self.scope.cancelled_caught
        finally:
            self.done.set()


async def settle() -> None:
    """Return once every task waits on something outside the event loop's own work."""
    await anyio.wait_all_tasks_blocked()


def rng_samples(shape: tuple[int, ...], count: int, seed: int = 0) -> list[Array]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(count)]


async def start_behind_one(tg: anyio.abc.TaskGroup, callers: list[Caller]) -> None:
    """Start the first caller alone (its chunk runs, held by a gate), then queue the rest.

    Settling in between makes the grouping deterministic on both backends: trio starts
    tasks in random order, so starting them all at once could batch them differently.
    """
    tg.start_soon(callers[0].run)
    await settle()
    for caller in callers[1:]:
        tg.start_soon(caller.run)
    await settle()
