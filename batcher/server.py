"""Serve a :class:`~batcher.Batcher` over TCP with the wire format of ``docs/protocol.md``.

One connection carries many requests at once: the server reads frames while earlier ones
are still computing and answers each as soon as its sample is done, in any order. Each
connection holds at most ``max_inflight_per_connection`` requests; at that limit the server
stops reading from it, so a fast client is slowed by TCP itself rather than by a queue
growing in the server::

    async with Batcher(models.mlp(), BatcherConfig()) as batcher:
        async with Server(batcher, ServerConfig(port=7878)) as server:
            await server.wait_shutdown()
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import math
import time
import tomllib
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from os import PathLike
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeAlias

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

from . import _protocol as proto
from ._config import BatcherConfig, _positive_int, _seconds
from ._core import Batcher
from ._errors import BatcherClosed
from ._model import ModelSource, ModelSpec, TensorSpec
from ._sending import send_frames

if TYPE_CHECKING:
    from ._metrics import Metrics

__all__ = [
    "BUILTIN_MODELS",
    "Server",
    "ServerConfig",
    "ServerStatistics",
    "check_model",
    "load_configs",
    "load_model",
    "serve",
]

logger = logging.getLogger("batcher.server")

#: Reference models a config may name instead of a model file (see :mod:`batcher.models`).
BUILTIN_MODELS = ("mlp", "cnn", "identity", "two_heads")

_READ_CHUNK = 256 * 1024
# After a fatal error or a shutdown the server half-closes and keeps discarding what the
# peer still sends for this long: closing a socket with unread input sends a reset, which
# can destroy the answers (the error frame above all) before the peer has read them.
_LINGER_SECONDS = 2.0
# How long a refused connection may take to receive its one error frame, and how many
# refusals may be explaining themselves at once.
_REJECT_SECONDS = 2.0
_MAX_REFUSING = 64
# accept() fails with EMFILE and the like when file descriptors run out; retrying at once
# would spin, so the accept loop waits this long first.
_ACCEPT_BACKOFF_SECONDS = 0.1


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Where and how ``batcher serve`` listens: the ``[server]`` table of its TOML config.

    Every field is checked when the config is built; a broken rule raises
    :class:`ValueError` naming the rule.
    """

    #: A model file (OpenVINO IR .xml or ONNX) or a built-in name (see ``BUILTIN_MODELS``).
    #: Only :func:`serve` reads it; a :class:`Server` is handed open batchers.
    model: str | None = None
    #: The name requests may give in ``"model"``; default: the built-in name or file stem.
    name: str | None = None
    host: str = "127.0.0.1"
    #: TCP port; 0 picks a free one (see :attr:`Server.address`).
    port: int = 7878
    #: Largest frame body accepted; a bigger length prefix is answered ``too_large``.
    max_frame_bytes: int = proto.DEFAULT_MAX_FRAME_BYTES
    #: Connections served at once; more are answered ``too_many_connections`` and closed.
    max_connections: int = 256
    #: Requests one connection may have in flight; at the limit the server stops reading it.
    max_inflight_per_connection: int = 64
    #: Shared secret: when set, every connection's first frame must be an auth request.
    token: str | None = None
    #: Seconds a connection has to send its auth frame when a token is set.
    auth_timeout: float = 10.0
    #: Bound on the graceful drain at shutdown; ``None`` waits for every answer.
    drain_timeout: float | None = 30.0
    #: Port of the Prometheus endpoint (needs the ``metrics`` extra); ``None`` disables it.
    metrics_port: int | None = None
    #: Interface of the Prometheus endpoint; default: ``host``.
    metrics_host: str | None = None

    def __post_init__(self) -> None:
        for key in ("model", "name", "token", "metrics_host"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{key} must be a non-empty string or unset, got {value!r}")
        if not isinstance(self.host, str) or not self.host:
            raise ValueError(f"host must be a non-empty string, got {self.host!r}")
        _port("port", self.port)
        if self.metrics_port is not None:
            _port("metrics_port", self.metrics_port)
        _positive_int("max_connections", self.max_connections)
        _positive_int("max_inflight_per_connection", self.max_inflight_per_connection)
        _positive_int("max_frame_bytes", self.max_frame_bytes)
        if self.max_frame_bytes > 2**32 - 1:
            raise ValueError(
                "max_frame_bytes must fit the 4-byte length prefix (<= 4294967295), got "
                f"{self.max_frame_bytes}"
            )
        _seconds("auth_timeout", self.auth_timeout, allow_zero=False)
        if self.drain_timeout is not None:
            _seconds("drain_timeout", self.drain_timeout, allow_zero=True)

    @property
    def model_name(self) -> str:
        """The name this server's model answers to."""
        if self.name is not None:
            return self.name
        if self.model is None:
            return "default"
        return self.model if self.model in BUILTIN_MODELS else Path(self.model).stem

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> ServerConfig:
        """Build a config from plain values (as read from TOML); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown [server] keys {unknown}; known keys are {sorted(known)}")
        return cls(**values)

    @classmethod
    def from_toml(cls, path: str | PathLike[str]) -> ServerConfig:
        """Load the ``[server]`` table of a TOML file (defaults when it has none)."""
        return load_configs(path)[1]


def load_configs(path: str | PathLike[str]) -> tuple[BatcherConfig, ServerConfig]:
    """Read a ``batcher serve`` TOML file: its ``[batcher]`` and ``[server]`` tables.

    A missing table means defaults; any other top-level key is an error (a typo in a
    table name would otherwise silently serve with defaults).
    """
    with open(path, "rb") as file:
        document = tomllib.load(file)
    unknown = sorted(set(document) - {"batcher", "server"})
    if unknown:
        raise ValueError(
            f"{path}: unknown top-level keys {unknown}; the file holds [batcher] and [server]"
        )
    tables = {}
    for key in ("batcher", "server"):
        table = document.get(key, {})
        if not isinstance(table, dict):
            raise ValueError(f"{path}: {key} must be a table, got {type(table).__name__}")
        tables[key] = table
    return BatcherConfig.from_mapping(tables["batcher"]), ServerConfig.from_mapping(
        tables["server"]
    )


def check_model(model: str) -> None:
    """Raise unless ``model`` names a built-in model or an existing file (cheap: no load)."""
    if model not in BUILTIN_MODELS and not Path(model).is_file():
        raise ValueError(
            f"model must name a built-in model ({', '.join(BUILTIN_MODELS)}) or an existing "
            f"model file, got {model!r}"
        )


def load_model(model: str) -> ModelSource:
    """A built-in reference model by name, else the path of an existing model file."""
    check_model(model)
    if model in BUILTIN_MODELS:
        from . import models

        built: ModelSource = getattr(models, model)()
        return built
    return Path(model)


@dataclass(frozen=True, slots=True)
class ServerStatistics:
    """Counters of a :class:`Server` at one instant."""

    #: Connections open now.
    connections: int
    #: Connections accepted since start (refused ones not included).
    accepted: int
    #: Connections refused because ``max_connections`` were open.
    refused: int
    #: Requests read, of any op.
    requests: int
    #: Infer requests being computed now.
    inflight: int
    #: Error answers sent, by code.
    errors: Mapping[str, int]


class Server:
    """Serves one or more open batchers on a TCP port.

    Use it as an async context manager: entering binds the port and starts accepting;
    leaving the block normally drains (stop accepting and reading, answer every request
    already started, close), bounded by ``config.drain_timeout``. Leaving it with an
    exception, or by cancellation, stops at once. :meth:`shutdown` starts the drain from
    anywhere, e.g. a signal handler. The server owns its tasks: none runs after the block.

    ``models`` is one batcher (named ``config.model_name``) or a mapping name -> batcher;
    a request that names no model goes to the only one.
    """

    def __init__(
        self, models: Batcher | Mapping[str, Batcher], config: ServerConfig | None = None
    ) -> None:
        self._config = config if config is not None else ServerConfig()
        if isinstance(models, Batcher):
            models = {self._config.model_name: models}
        if not models:
            raise ValueError("a Server needs at least one model to serve")
        self._models = dict(models)
        self._token = self._config.token.encode() if self._config.token is not None else None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._address: tuple[str, int] | None = None
        self._metrics: Metrics | None = None
        self._metrics_address: tuple[str, int] | None = None
        self._closing = False
        # Cancelled by shutdown(): the accept loops and each connection's reading.
        self._stoppable_scopes: set[anyio.CancelScope] = set()
        self._connections = 0
        self._refusing = 0
        self._inflight = 0
        self._counts: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()
        self._shutdown_requested: anyio.Event
        self._idle: anyio.Event

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Server:
        if self._task_group is not None:
            raise RuntimeError("a Server can be entered only once; create a new one")
        config = self._config
        self._shutdown_requested = anyio.Event()
        self._idle = anyio.Event()
        listener = await anyio.create_tcp_listener(local_host=config.host, local_port=config.port)
        metrics_listener = None
        try:
            address = listener.listeners[0].extra(SocketAttribute.local_address)
            assert isinstance(address, tuple)
            self._address = (str(address[0]), int(address[1]))
            if config.metrics_port is not None:
                try:
                    from ._metrics import Metrics  # prometheus-client only when asked for
                except ModuleNotFoundError as exc:
                    raise RuntimeError(
                        "metrics_port needs prometheus-client: pip install 'batcher[metrics]'"
                    ) from exc

                self._metrics = Metrics(self._models, self.statistics)
                metrics_listener = await anyio.create_tcp_listener(
                    local_host=config.metrics_host or config.host,
                    local_port=config.metrics_port,
                )
                maddress = metrics_listener.listeners[0].extra(SocketAttribute.local_address)
                assert isinstance(maddress, tuple)
                self._metrics_address = (str(maddress[0]), int(maddress[1]))
        except BaseException:
            await listener.aclose()
            raise
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        for socket_listener in listener.listeners:
            assert isinstance(socket_listener, anyio.abc.SocketListener)
            task_group.start_soon(self._accept_loop, socket_listener)
        if metrics_listener is not None:
            assert self._metrics is not None
            task_group.start_soon(self._metrics.serve, metrics_listener)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task_group = self._task_group
        assert task_group is not None
        try:
            if exc_type is None:
                await self.aclose()
        finally:
            self._closing = True
            # Whatever is left (the metrics endpoint, connections past the drain bound)
            # stops now: nothing of the server's outlives the block.
            task_group.cancel_scope.cancel()
            # The block's own exception is not handed to the task group, which would wrap it
            # in an ExceptionGroup: it propagates unchanged once the tasks are done.
            await task_group.__aexit__(None, None, None)
        return None

    def shutdown(self) -> None:
        """Start a graceful stop; returns at once.

        The server stops accepting connections and reading requests, answers every request
        it already started (and ``closed`` to any it had read but not started), then closes
        each connection. Leaving the ``async with`` block waits for that drain.
        """
        if self._task_group is None:
            raise RuntimeError("the server is not running: call shutdown inside `async with`")
        if self._closing:
            return
        self._closing = True
        for scope in self._stoppable_scopes:
            scope.cancel()
        self._shutdown_requested.set()
        if self._connections == 0:
            self._idle.set()

    async def wait_shutdown(self) -> None:
        """Return once :meth:`shutdown` has been called."""
        await self._shutdown_requested.wait()

    async def aclose(self) -> None:
        """Drain as :meth:`shutdown` describes and wait for it, at most ``drain_timeout``."""
        self.shutdown()
        bound = self._config.drain_timeout
        with anyio.move_on_after(math.inf if bound is None else bound) as scope:
            await self._idle.wait()
        if scope.cancelled_caught:
            logger.warning(
                "drain bound (%s s) passed with %d connection(s) still open; closing them",
                bound,
                self._connections,
            )

    # ------------------------------------------------------------------ public state

    @property
    def config(self) -> ServerConfig:
        return self._config

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) the server listens on: the port is real even when 0 was asked."""
        if self._address is None:
            raise RuntimeError("the server is not listening yet: enter it with `async with`")
        return self._address

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """Where the Prometheus endpoint listens, or None without one."""
        return self._metrics_address

    def statistics(self) -> ServerStatistics:
        return ServerStatistics(
            connections=self._connections,
            accepted=self._counts["accepted"],
            refused=self._counts["refused"],
            requests=self._counts["requests"],
            inflight=self._inflight,
            errors=dict(self._errors),
        )

    # ------------------------------------------------------------------ internals

    @contextlib.contextmanager
    def _stoppable(self) -> Iterator[anyio.CancelScope]:
        """A cancel scope that :meth:`shutdown` cancels (at once if it already ran)."""
        scope = anyio.CancelScope()
        if self._closing:
            scope.cancel()
        self._stoppable_scopes.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self._stoppable_scopes.discard(scope)

    async def _accept_loop(self, listener: anyio.abc.SocketListener) -> None:
        assert self._task_group is not None
        async with listener:  # leaving the loop closes the port: new connections are refused
            with self._stoppable():
                while True:
                    try:
                        stream = await listener.accept()
                    except OSError as exc:
                        logger.warning("accept failed (%r); retrying", exc)
                        await anyio.sleep(_ACCEPT_BACKOFF_SECONDS)
                        continue
                    if self._connections >= self._config.max_connections:
                        self._counts["refused"] += 1
                        if self._refusing >= _MAX_REFUSING:
                            # A flood: telling each one why would cost a task apiece.
                            await anyio.aclose_forcefully(stream)
                        else:
                            self._refusing += 1
                            self._task_group.start_soon(self._refuse, stream)
                        continue
                    self._connections += 1
                    self._counts["accepted"] += 1
                    self._task_group.start_soon(self._serve_connection, stream)

    async def _refuse(self, stream: anyio.abc.SocketStream) -> None:
        self._count_error("too_many_connections")
        try:
            await self._explain_refusal(stream)
        finally:
            self._refusing -= 1

    async def _explain_refusal(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            with anyio.move_on_after(_REJECT_SECONDS):
                try:
                    await stream.send(
                        proto.encode_error(
                            None,
                            "too_many_connections",
                            f"the server holds max_connections={self._config.max_connections} "
                            "connections; retry later",
                        )
                    )
                    await stream.send_eof()
                    await _discard_until_eof(stream)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    pass

    async def _serve_connection(self, stream: anyio.abc.SocketStream) -> None:
        try:
            async with stream:
                await _Connection(self, stream).run()
        except Exception:
            # One connection's failure must never end the server: log it and go on.
            logger.exception("a connection handler failed")
        finally:
            self._connections -= 1
            if self._closing and self._connections == 0:
                self._idle.set()

    def _count_error(self, code: str, model: str | None = None) -> None:
        self._errors[code] += 1
        if self._metrics is not None:
            self._metrics.error(code, model)

    def _spec_of(self, name: str, batcher: Batcher) -> dict[str, object]:
        spec: ModelSpec = batcher.spec
        return {
            "model": name,
            "inputs": [_tensor_spec(t) for t in spec.inputs],
            "outputs": [_tensor_spec(t) for t in spec.outputs],
            "max_frame_bytes": self._config.max_frame_bytes,
            "max_inflight": self._config.max_inflight_per_connection,
        }


def _tensor_spec(tensor: TensorSpec) -> dict[str, object]:
    return {
        "name": tensor.name,
        "dtype": proto.wire_dtype_name(tensor.dtype) or str(tensor.dtype),
        "shape": list(tensor.shape),
    }


class _Gone(Exception):
    """The peer's side of the connection broke: nobody is left to answer."""


_Job: TypeAlias = tuple[str, Batcher, proto.InferRequest]


class _Connection:
    """One client connection: a reader, workers that compute requests, and one writer.

    The reader hands each infer request to a pool of worker tasks that grows to the
    connection's peak concurrency (at most ``max_inflight_per_connection``) and lives as
    long as the connection: passing a request to a waiting worker costs a fraction of
    starting a task for it. Workers hand finished frames to the writer through a bounded
    memory stream, so no two tasks ever write to the socket at once and a slow reader on
    the other end slows only this connection.
    """

    def __init__(self, server: Server, stream: anyio.abc.SocketStream) -> None:
        self._server = server
        self._config = server._config
        self._stream = stream
        self._slots = anyio.Semaphore(self._config.max_inflight_per_connection)
        self._inflight_ids: set[int] = set()
        # Each request in flight sends one frame; the extra room is for the reader's own
        # error answers, which block the reader (and so the client) once it is used up.
        self._send, self._receive = anyio.create_memory_object_stream[bytes](
            self._config.max_inflight_per_connection + 16
        )
        # Never full: the reader holds a slot for every job it queues, and room = slots.
        self._jobs, self._jobs_receive = anyio.create_memory_object_stream[_Job](
            self._config.max_inflight_per_connection
        )
        self._workers = 0
        self._busy = 0  # jobs queued or being computed
        self._scope = anyio.CancelScope()
        self._requests: anyio.abc.TaskGroup | None = None
        self._linger = False
        try:
            peer = stream.extra(SocketAttribute.remote_address)
        except anyio.TypedAttributeLookupError:
            peer = "?"
        self._peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)

    async def run(self) -> None:
        async with anyio.create_task_group() as task_group:
            self._scope = task_group.cancel_scope
            task_group.start_soon(self._write_loop)
            # Closing each send side lets its readers finish what is queued, then stop.
            async with self._send, anyio.create_task_group() as requests, self._jobs:
                self._requests = requests
                await self._read_loop()
        self._jobs_receive.close()
        if self._linger:
            with anyio.move_on_after(_LINGER_SECONDS):
                try:
                    await self._stream.send_eof()
                    await _discard_until_eof(self._stream)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    pass

    async def _write_loop(self) -> None:
        try:
            await send_frames(self._receive, self._stream)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            # The peer is gone, so no answer can reach it: stop computing them.
            self._scope.cancel()

    async def _next_body(self, reader: proto.FrameReader) -> bytes | None:
        """The next frame body, None at a clean end of input; raises ProtocolError, _Gone."""
        while True:
            body = reader.next_frame()
            if body is not None:
                return body
            try:
                data = await self._stream.receive(_READ_CHUNK)
            except anyio.EndOfStream:
                if reader.pending:
                    raise proto.ProtocolError(
                        "bad_request", "the connection ended inside a frame", fatal=True
                    ) from None
                return None
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                raise _Gone from exc
            reader.feed(data)

    async def _read_loop(self) -> None:
        server = self._server
        reader = proto.FrameReader(self._config.max_frame_bytes)
        waiting: list[proto.Request] = []  # read, not yet started: answered `closed` on stop
        try:
            with server._stoppable() as stop:
                if server._token is not None and not await self._authenticate(reader):
                    return
                while True:
                    try:
                        body = await self._next_body(reader)
                    except proto.ProtocolError as exc:
                        await self._fatal(exc.request_id, exc.code, exc.message)
                        return
                    if body is None:
                        return  # the client finished sending; answer what is in flight
                    if not await self._handle(body, waiting):
                        return
            if stop.cancelled_caught:
                await self._refuse_unstarted(reader, waiting)
        except _Gone:
            assert self._requests is not None
            self._requests.cancel_scope.cancel()

    async def _authenticate(self, reader: proto.FrameReader) -> bool:
        token = self._server._token
        assert token is not None
        request_id: int | None = None
        with anyio.move_on_after(self._config.auth_timeout):
            try:
                body = await self._next_body(reader)
                if body is None:
                    return False
                request = proto.decode_request(body)
            except proto.ProtocolError as exc:
                await self._fatal(exc.request_id, exc.code, exc.message)
                return False
            self._server._counts["requests"] += 1
            request_id = request.id
            # compare_digest: the time taken must not tell how much of a guess was right.
            if isinstance(request, proto.AuthRequest) and hmac.compare_digest(request.token, token):
                await self._reply(proto.encode_ok(request.id))
                return True
            await self._fatal(
                request_id,
                "unauthorized",
                "the first frame must be an auth request carrying the server's token",
            )
            return False
        await self._fatal(
            None,
            "unauthorized",
            f"no auth frame within auth_timeout={self._config.auth_timeout} s",
        )
        return False

    async def _handle(self, body: bytes, waiting: list[proto.Request]) -> bool:
        """Answer or start one request; False when the connection must close."""
        server = self._server
        try:
            request = proto.decode_request(body)
        except proto.ProtocolError as exc:
            if exc.fatal:
                await self._fatal(exc.request_id, exc.code, exc.message)
                return False
            await self._error(exc.request_id, exc.code, exc.message)
            return True
        server._counts["requests"] += 1
        if isinstance(request, proto.InferRequest):
            name, batcher = self._model(request.model)
            if batcher is None:
                await self._error(request.id, "unknown_model", _unknown_model(server, name))
                return True
            if request.id in self._inflight_ids:
                await self._error(
                    request.id,
                    "bad_request",
                    f"id {request.id} is already in flight on this connection; ids must be "
                    "unique among unanswered requests",
                )
                return True
            try:
                # No checkpoint when a slot is free: the frames of one read all reach the
                # queue before the scheduler runs, so they can share a chunk.
                self._slots.acquire_nowait()
            except anyio.WouldBlock:
                waiting.append(request)
                await self._slots.acquire()  # at the limit: stop reading, TCP slows the client
                waiting.clear()
            self._inflight_ids.add(request.id)
            server._inflight += 1
            self._busy += 1
            self._jobs.send_nowait((name, batcher, request))
            if self._workers < self._busy:  # no worker is free for this job
                self._workers += 1
                assert self._requests is not None
                self._requests.start_soon(self._work)
        elif isinstance(request, proto.SpecRequest):
            name, batcher = self._model(request.model)
            if batcher is None:
                await self._error(request.id, "unknown_model", _unknown_model(server, name))
                return True
            try:
                spec = server._spec_of(name, batcher)
            except BatcherClosed as exc:
                await self._error(request.id, "closed", str(exc))
            else:
                await self._reply(proto.encode_spec(request.id, spec))
        else:  # auth without a configured token, or ping
            await self._reply(proto.encode_ok(request.id))
        return True

    def _model(self, name: str | None) -> tuple[str, Batcher | None]:
        models = self._server._models
        if name is None:
            if len(models) == 1:
                only = next(iter(models))
                return only, models[only]
            return "", None
        return name, models.get(name)

    async def _work(self) -> None:
        async for name, batcher, request in self._jobs_receive:
            await self._infer(name, batcher, request)

    async def _infer(self, name: str, batcher: Batcher, request: proto.InferRequest) -> None:
        server = self._server
        started = time.perf_counter()
        code: str | None = None
        try:
            try:
                result = await batcher.submit(
                    request.inputs, timeout=request.timeout, priority=request.priority
                )
                outputs = (
                    result if isinstance(result, dict) else {batcher.spec.output_names[0]: result}
                )
                data = proto.encode_outputs(request.id, outputs)
            except Exception as exc:
                code = proto.code_of(exc)
                if code == "internal":
                    logger.exception("request %d from %s failed", request.id, self._peer)
                data = proto.encode_error(request.id, code, str(exc) or type(exc).__name__)
            # Freed before the answer leaves: once the client has it, it may reuse the id.
            self._inflight_ids.discard(request.id)
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await self._send.send(data)  # fails only once the writer has lost the peer
        finally:
            self._inflight_ids.discard(request.id)
            self._slots.release()
            self._busy -= 1
            server._inflight -= 1
            if code is not None:
                server._count_error(code, name)
            if server._metrics is not None:
                server._metrics.request(name, time.perf_counter() - started)

    async def _refuse_unstarted(
        self, reader: proto.FrameReader, waiting: list[proto.Request]
    ) -> None:
        """At shutdown, answer ``closed`` to requests already read but not started."""
        self._linger = True
        message = "the server is shutting down; this request was not started"
        for request in waiting:
            await self._error(request.id, "closed", message)
        while True:
            try:
                body = reader.next_frame()
            except proto.ProtocolError:
                return
            if body is None:
                return
            request_id: int | None
            try:
                request_id = proto.decode_request(body).id
            except proto.ProtocolError as exc:
                request_id = exc.request_id
            await self._error(request_id, "closed", message)

    async def _reply(self, data: bytes) -> None:
        try:
            await self._send.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            raise _Gone from exc  # the writer stopped: the peer is gone

    async def _error(self, request_id: int | None, code: str, message: str) -> None:
        self._server._count_error(code)
        await self._reply(proto.encode_error(request_id, code, message))

    async def _fatal(self, request_id: int | None, code: str, message: str) -> None:
        """Answer once, then close: requests in flight are abandoned."""
        logger.info("closing connection from %s: %s (%s)", self._peer, code, message)
        self._linger = True
        # Queued first: cancelling the requests' scope also cancels this reader (it hosts
        # that task group), and the answer must still go out.
        await self._error(request_id, code, message)
        assert self._requests is not None
        self._requests.cancel_scope.cancel()


def _unknown_model(server: Server, name: str) -> str:
    served = sorted(server._models)
    if not name:
        return f"this server serves several models {served}: the request must name one"
    return f"unknown model {name!r}; this server serves {served}"


async def _discard_until_eof(stream: anyio.abc.ByteReceiveStream) -> None:
    try:
        while True:
            await stream.receive(_READ_CHUNK)
    except anyio.EndOfStream:
        pass


async def serve(
    model: ModelSource | None = None,
    config: ServerConfig | None = None,
    batcher_config: BatcherConfig | None = None,
    *,
    task_status: anyio.abc.TaskStatus[Server] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Open a :class:`~batcher.Batcher` on ``model`` and serve it until shutdown.

    ``model`` defaults to ``config.model`` (a file or a built-in name). Use with
    ``await task_group.start(serve, ...)`` to get the running :class:`Server`; calling its
    :meth:`Server.shutdown` drains and returns, cancelling stops at once.
    """
    config = config if config is not None else ServerConfig()
    if model is None:
        if config.model is None:
            raise ValueError("no model to serve: pass one or set `model` in [server]")
        model = await anyio.to_thread.run_sync(load_model, config.model)
    async with Batcher(model, batcher_config) as batcher, Server(batcher, config) as server:
        task_status.started(server)
        await server.wait_shutdown()


def _port(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ValueError(f"{name} must be an integer port in [0, 65535], got {value!r}")
