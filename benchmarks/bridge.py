"""An ``ov.AsyncInferQueue`` awaited from anyio code, as a careful user would wire it.

OpenVINO calls completion callbacks on its own threads. Each callback copies its result,
appends the job to a deque and writes one byte to a socket pair; one pump task on the event
loop waits for the socket and wakes the waiting callers. This costs no worker-thread hop
per request (unlike ``to_thread.run_sync(request.wait)``) and works on any anyio backend.
"""

from __future__ import annotations

import contextlib
import socket
from collections import deque
from typing import Any

import anyio
import numpy as np
import numpy.typing as npt
import openvino as ov

__all__ = ["QueueBridge"]


class _Job:
    __slots__ = ("done", "output")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.output: npt.NDArray[Any] | None = None


class QueueBridge:
    """``await bridge.infer(x)`` runs one batch-1 request on an ``AsyncInferQueue``."""

    def __init__(self, compiled: Any, jobs: int) -> None:
        self._queue = ov.AsyncInferQueue(compiled, jobs)
        self._queue.set_callback(self._finished)
        self._done: deque[_Job] = deque()
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        # start_async blocks the calling thread while every request is busy; the semaphore
        # makes callers wait on the event loop instead.
        self._free = anyio.Semaphore(jobs)

    def _finished(self, request: Any, job: _Job) -> None:  # OpenVINO's thread
        job.output = np.array(request.get_output_tensor(0).data[0])
        self._done.append(job)
        # A full socket buffer already holds a wake-up byte: the pump will see this job.
        with contextlib.suppress(BlockingIOError):
            self._writer.send(b"\0")

    async def pump(self) -> None:
        """Wake finished callers; run it in a task group for the bridge's lifetime."""
        while True:
            await anyio.wait_readable(self._reader)
            with contextlib.suppress(BlockingIOError):
                self._reader.recv(65536)
            while self._done:
                self._done.popleft().done.set()
                self._free.release()

    async def infer(self, sample: npt.NDArray[Any]) -> npt.NDArray[Any]:
        # anyio's acquire() yields to the loop even when a token is free (~15 us here).
        try:
            self._free.acquire_nowait()
        except anyio.WouldBlock:
            await self._free.acquire()
        job = _Job()
        self._queue.start_async({0: sample[None]}, job)
        await job.done.wait()
        assert job.output is not None
        return job.output

    def close(self) -> None:
        """Wait for OpenVINO to finish every request, then free the sockets (blocking)."""
        self._queue.wait_all()
        self._reader.close()
        self._writer.close()
