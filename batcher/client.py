"""An anyio client for ``batcher serve``: many concurrent requests over one connection.

::

    async with Client("127.0.0.1", 7878) as client:
        y = await client.infer(x)

Every :meth:`Client.infer` call writes its request at once and waits for its own answer;
a single reader task hands each answer to the call waiting on its id, so answers may
come back in any order. Server errors come back as the exceptions a local
:class:`~batcher.Batcher` raises (``InvalidSample``, ``QueueFull``, ...), other codes as
:class:`ServerError`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import numpy as np
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from . import _protocol as proto
from ._core import Output
from ._errors import BatcherError
from ._model import ModelSpec, TensorSpec
from ._sending import send_frames

__all__ = ["Client", "ConnectionLost", "ServerError"]

#: Default largest answer the client accepts; answers are one sample's outputs.
DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024
_OUTBOX_FRAMES = 256
_READ_CHUNK = 256 * 1024


class ServerError(BatcherError):
    """The server answered with an error code that has no local exception type.

    ``code`` is the wire code (``bad_request``, ``unauthorized``, ``unknown_model``, ...).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ConnectionLost(BatcherError, ConnectionError):
    """The connection closed before the answer came.

    After a graceful server shutdown, a request without an answer was never started.
    """


class _Call:
    __slots__ = ("done", "error", "response")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.response: proto.Response | None = None
        self.error: BaseException | None = None


class Client:
    """One connection to a ``batcher serve`` server, shared by concurrent callers."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 7878,
        *,
        token: str | None = None,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    ) -> None:
        self._host = host
        self._port = port
        self._token = token
        self._max_frame_bytes = max_frame_bytes
        self._stream: anyio.abc.SocketStream | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._calls: dict[int, _Call] = {}
        self._next_id = 0
        # Why the connection is unusable: a reason, or the server's connection-level error.
        self._failure: str | proto.ErrorResponse | None = None
        self._spec: dict[str | None, ModelSpec] = {}
        # Event-loop objects are made in __aenter__: the constructor may run outside any loop.
        self._io_scope: anyio.CancelScope
        self._outbox: MemoryObjectSendStream[bytes]
        self._outbox_receive: MemoryObjectReceiveStream[bytes]

    async def __aenter__(self) -> Client:
        if self._task_group is not None:
            raise RuntimeError("a Client can be entered only once; create a new one")
        self._io_scope = anyio.CancelScope()
        # Callers queue whole frames and one writer task sends them: a caller cancelled
        # mid-send can never leave half a frame on the wire, and frames queued together
        # leave in one system call.
        self._outbox, self._outbox_receive = anyio.create_memory_object_stream[bytes](
            _OUTBOX_FRAMES
        )
        self._stream = await anyio.connect_tcp(self._host, self._port)
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        task_group.start_soon(self._run_io)
        try:
            if self._token is not None:
                token = self._token
                await self._call(lambda i: proto.encode_auth(i, token))
        except BaseException as exc:
            await self.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task_group = self._task_group
        assert task_group is not None
        assert self._stream is not None
        try:
            self._fail_all("the client was closed")
            # Only the I/O tasks' own scope: cancelling the task group's would cancel this
            # very task (the group's host) in the middle of closing.
            self._io_scope.cancel()
            with anyio.CancelScope(shield=True):
                await self._stream.aclose()
        finally:
            # The block's own exception is not handed to the task group, which would wrap it
            # in an ExceptionGroup: it propagates unchanged once the tasks are done.
            await task_group.__aexit__(None, None, None)
        return None

    async def infer(
        self,
        sample: object,
        *,
        model: str | None = None,
        timeout: float | None = None,
        priority: int = 0,
    ) -> Output:
        """Compute one sample on the server, like :meth:`batcher.Batcher.submit`.

        ``sample`` is an array (single-input model) or a mapping input name -> array.
        Returns an array for a single-output model, else a dict name -> array. The arrays
        are read-only views of the received frame. Cancelling the call abandons the answer
        (the server still computes it).
        """
        inputs: object = sample
        if isinstance(sample, Mapping):
            inputs = {name: np.asarray(value) for name, value in sample.items()}
        response = await self._call(
            lambda i: proto.encode_infer(i, inputs, model=model, timeout=timeout, priority=priority)
        )
        if not isinstance(response, proto.OutputsResponse):
            raise ConnectionLost(f"the server answered an infer request with {response!r}")
        outputs = response.outputs
        if len(outputs) == 1:
            return next(iter(outputs.values()))
        return outputs

    async def spec(self, model: str | None = None) -> ModelSpec:
        """The served model's inputs and outputs, per sample (asked once, then cached)."""
        cached = self._spec.get(model)
        if cached is not None:
            return cached
        response = await self._call(lambda i: proto.encode_spec_request(i, model))
        if not isinstance(response, proto.SpecResponse):
            raise ConnectionLost(f"the server answered a spec request with {response!r}")
        try:
            spec = ModelSpec(
                tuple(_tensor_spec(t) for t in response.spec["inputs"]),
                tuple(_tensor_spec(t) for t in response.spec["outputs"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ServerError("bad_request", f"malformed spec answer: {exc!r}") from None
        self._spec[model] = spec
        return spec

    async def ping(self) -> None:
        """One round trip; raises when the connection is unusable."""
        await self._call(proto.encode_ping)

    # ------------------------------------------------------------------ internals

    async def _call(self, encode: Callable[[int], bytes]) -> proto.Response:
        if self._failure is not None:
            raise _failure_error(self._failure)
        if self._stream is None:
            raise RuntimeError("the client is not connected: use it as `async with Client()`")
        request_id = self._next_id
        self._next_id = (self._next_id + 1) % (proto.MAX_ID + 1)
        data = encode(request_id)
        call = _Call()
        self._calls[request_id] = call
        try:
            await self._outbox.send(data)
            await call.done.wait()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the writer stopped; _fail_all has set call.error
        finally:
            self._calls.pop(request_id, None)
        if call.error is not None:
            raise call.error
        response = call.response
        if response is None:
            raise _failure_error(self._failure or "the connection closed")
        if isinstance(response, proto.ErrorResponse):
            raise _error_of(response)
        return response

    async def _run_io(self) -> None:
        with self._io_scope:
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(self._write_loop)
                await self._read_loop()
                task_group.cancel_scope.cancel()
            # The server closed its side (or broke the protocol): close ours too, so a
            # draining server sees this client leave instead of waiting out its linger.
            assert self._stream is not None
            with anyio.CancelScope(shield=True):
                await self._stream.aclose()

    async def _write_loop(self) -> None:
        assert self._stream is not None
        try:
            await send_frames(self._outbox_receive, self._stream)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            self._fail_all(f"the connection broke while sending: {exc!r}")

    async def _read_loop(self) -> None:
        assert self._stream is not None
        reader = proto.FrameReader(self._max_frame_bytes)
        try:
            while True:
                body = reader.next_frame()
                if body is None:
                    try:
                        data = await self._stream.receive(_READ_CHUNK)
                    except anyio.EndOfStream:
                        self._fail_all("the server closed the connection")
                        return
                    reader.feed(data)
                    continue
                response = proto.decode_response(body)
                if response.id is None:
                    # About the connection, not one request: every caller hears it.
                    assert isinstance(response, proto.ErrorResponse)
                    self._fail_all(response)
                    return
                call = self._calls.get(response.id)
                if call is not None:
                    call.response = response
                    call.done.set()
        except proto.ProtocolError as exc:
            self._fail_all(f"the server broke the protocol: {exc.message}")
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            self._fail_all(f"the connection broke: {exc!r}")

    def _fail_all(self, reason: str | proto.ErrorResponse) -> None:
        if self._failure is None:
            self._failure = reason
            # Callers blocked on a full outbox wake with ClosedResourceError.
            self._outbox.close()
        for call in self._calls.values():
            if not call.done.is_set():
                call.error = _failure_error(reason)
                call.done.set()


def _failure_error(reason: str | proto.ErrorResponse) -> BatcherError:
    """A fresh exception per caller: tracebacks and notes never leak between callers."""
    return ConnectionLost(reason) if isinstance(reason, str) else _error_of(reason)


def _error_of(response: proto.ErrorResponse) -> BatcherError:
    return proto.error_for(response.code, response.message) or ServerError(
        response.code, response.message
    )


def _tensor_spec(value: Mapping[str, Any]) -> TensorSpec:
    return TensorSpec(
        str(value["name"]), tuple(int(d) for d in value["shape"]), np.dtype(value["dtype"])
    )
