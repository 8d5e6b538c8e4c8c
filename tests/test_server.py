"""The TCP server and client against real loopback sockets, on asyncio and trio.

Chunks are held in the batcher's worker thread (``Batcher._chunk_hook``) wherever a test
needs work to be in flight at a known moment, so no test depends on timing.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import msgpack
import numpy as np
import openvino as ov
import pytest
from anyio.abc import SocketAttribute
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batcher import (
    Batcher,
    BatcherConfig,
    DeadlineExceeded,
    InferenceError,
    InvalidSample,
    QueueFull,
    models,
)
from batcher import _protocol as proto
from batcher import server as server_module
from batcher._cli import main as cli_main
from batcher._model import compile_for_batch
from batcher.client import Client, ConnectionLost, ServerError
from batcher.server import Server, ServerConfig, load_configs

pytestmark = pytest.mark.anyio

FAST = BatcherConfig(strategy="decompose", batch_sizes=(1, 2, 4, 8))
ONE_SLOT = BatcherConfig(strategy="decompose", batch_sizes=(1, 2, 4, 8), max_inflight_chunks=1)
# Bounds every wait in this file, so a regression fails instead of hanging the suite.
TIMEOUT = 30.0


def small_mlp() -> ov.Model:
    return models.mlp(sizes=(16, 32, 4))


@asynccontextmanager
async def serving(
    model: ov.Model | None = None, config: BatcherConfig = FAST, **server: Any
) -> AsyncIterator[tuple[Server, Batcher]]:
    async with (
        Batcher(model if model is not None else models.identity(), config) as batcher,
        Server(batcher, ServerConfig(port=0, **server)) as srv,
    ):
        yield srv, batcher


class Hold:
    """Holds every finished chunk in the batcher's worker thread until released."""

    def __init__(self) -> None:
        self._release = threading.Event()
        self._reached = threading.Semaphore(0)
        self.fail: BaseException | None = None

    def __call__(self, chunk: object) -> None:
        self._reached.release()
        if not self._release.wait(TIMEOUT):
            raise RuntimeError("the test never released the held chunk")
        if self.fail is not None:
            raise self.fail

    async def reached(self, chunks: int = 1) -> None:
        """Wait until ``chunks`` more chunks are being held."""
        for _ in range(chunks):
            if not await anyio.to_thread.run_sync(self._reached.acquire, True, TIMEOUT):
                raise TimeoutError("no chunk reached the hold")

    def release(self) -> None:
        self._release.set()


@contextmanager
def holding(batcher: Batcher) -> Iterator[Hold]:
    hold = Hold()
    batcher._chunk_hook = hold
    try:
        yield hold
    finally:
        hold.release()  # never leave a worker thread blocked, even when the test failed
        batcher._chunk_hook = None


class Wire:
    """A raw connection speaking frames, for what the Client would never send."""

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream
        self._reader = proto.FrameReader(1 << 26)

    @classmethod
    async def open(cls, address: tuple[str, int]) -> Wire:
        return cls(await anyio.connect_tcp(*address))

    async def send(self, *frames: bytes) -> None:
        await self.stream.send(b"".join(frames))

    async def receive(self) -> proto.Response | None:
        """The next answer, or None once the server has closed the connection."""
        with anyio.fail_after(TIMEOUT):
            while (body := self._reader.next_frame()) is None:
                try:
                    self._reader.feed(await self.stream.receive())
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return None
        return proto.decode_response(body)

    async def receive_until_closed(self) -> list[proto.Response]:
        answers = []
        while (answer := await self.receive()) is not None:
            answers.append(answer)
        return answers

    async def aclose(self) -> None:
        await self.stream.aclose()


def reference(model: ov.Model, samples: list[dict[str, Any]]) -> list[list[Any]]:
    """The model's own batch-1 outputs, one sample at a time, straight from OpenVINO."""
    compiled = compile_for_batch(ov.Core(), model, 1, "CPU", {})
    request = compiled.create_infer_request()
    results = []
    for sample in samples:
        request.infer({name: value[None] for name, value in sample.items()})
        outputs = range(len(compiled.outputs))
        results.append([request.get_output_tensor(i).data[0].copy() for i in outputs])
    return results


def x16(value: float = 0.0) -> np.ndarray[Any, Any]:
    return np.arange(16, dtype=np.float32) + np.float32(value)


def ok_outputs(answer: proto.Response | None, request_id: int) -> dict[str, Any]:
    assert isinstance(answer, proto.OutputsResponse), answer
    assert answer.id == request_id
    return answer.outputs


def error_of(answer: proto.Response | None) -> tuple[int | None, str]:
    assert isinstance(answer, proto.ErrorResponse), answer
    return answer.id, answer.code


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Poll a condition the server changes on its own schedule (bounded, not a delay)."""
    with anyio.fail_after(TIMEOUT):
        while not predicate():  # noqa: ASYNC110 - the server exposes no event for these
            await anyio.sleep(0.005)


# ---------------------------------------------------------------------------- results


async def test_many_connections_get_their_own_correct_results() -> None:
    model = small_mlp()
    rng = np.random.default_rng(0)
    samples = [rng.standard_normal(16).astype(np.float32) for _ in range(96)]
    expected = [outputs[0] for outputs in reference(model, [{"x": s} for s in samples])]
    results: dict[int, Any] = {}
    async with serving(model) as (srv, batcher):

        async def client(offset: int) -> None:
            async with Client(*srv.address) as c, anyio.create_task_group() as tg:

                async def one(i: int) -> None:
                    results[i] = await c.infer(samples[i])

                for i in range(offset, len(samples), 8):
                    tg.start_soon(one, i)

        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                for offset in range(8):
                    tg.start_soon(client, offset)
        stats = batcher.statistics()
    assert sorted(results) == list(range(len(samples)))
    for i, want in enumerate(expected):
        np.testing.assert_allclose(results[i], want, rtol=1e-5, atol=1e-5)
    assert stats.completed == len(samples)
    assert stats.accounted


async def test_two_input_two_output_model_round_trips_as_dicts() -> None:
    model = models.two_heads()
    sample = {"a": np.linspace(-1, 1, 8, dtype=np.float32), "b": np.arange(4, dtype=np.int32)}
    [[want_sum, want_score]] = reference(model, [sample])
    async with serving(model) as (srv, _), Client(*srv.address) as c:
        spec = await c.spec()
        result = await c.infer(sample)
    assert spec.input_names == ("a", "b")
    assert spec.output_names == ("sum", "score")
    assert spec.inputs[1].dtype == np.int32
    assert isinstance(result, dict)
    np.testing.assert_allclose(result["sum"], want_sum, rtol=1e-6)
    np.testing.assert_allclose(result["score"], want_score, rtol=1e-6)


async def test_pipelined_requests_on_one_connection() -> None:
    async with serving() as (srv, _):
        wire = await Wire.open(srv.address)
        await wire.send(*(proto.encode_infer(i, x16(i)) for i in range(64)))
        answers = [await wire.receive() for _ in range(64)]
        await wire.aclose()
    by_id = {a.id: a for a in answers if isinstance(a, proto.OutputsResponse)}
    assert sorted(by_id) == list(range(64))
    for i, answer in by_id.items():
        np.testing.assert_array_equal(answer.outputs["y"], x16(i))


async def test_answers_come_back_as_they_finish_not_in_order() -> None:
    async with serving() as (srv, batcher):
        wire = await Wire.open(srv.address)
        with holding(batcher) as hold:
            await wire.send(proto.encode_infer(1, x16()))
            await hold.reached()
            await wire.send(proto.encode_infer(2, np.zeros(3, np.float32)))
            assert error_of(await wire.receive()) == (2, "invalid_sample")
            hold.release()
            ok_outputs(await wire.receive(), 1)
        await wire.aclose()


async def test_client_half_close_still_gets_every_answer() -> None:
    async with serving() as (srv, _):
        wire = await Wire.open(srv.address)
        await wire.send(*(proto.encode_infer(i, x16(i)) for i in range(10)))
        await wire.stream.send_eof()
        answers = await wire.receive_until_closed()
        await wire.aclose()
    assert sorted(a.id for a in answers if isinstance(a, proto.OutputsResponse)) == list(range(10))


# ---------------------------------------------------------------------------- bad input


def _ext(name: str, shape: tuple[int, ...], data: bytes) -> msgpack.ExtType:
    head = bytes((len(name),)) + name.encode() + bytes((len(shape),))
    return msgpack.ExtType(1, head + struct.pack(f">{len(shape)}I", *shape) + data)


def _frame(message: object) -> bytes:
    return proto.frame(msgpack.packb(message, use_bin_type=True))


GOOD_X = _ext("float32", (16,), np.zeros(16, np.float32).tobytes())

# (frame bytes, expected (id, code), whether the server then closes the connection)
MALFORMED = {
    "oversized": (struct.pack(">I", 5000) + b"\0" * 100, (None, "too_large"), True),
    "not msgpack": (proto.frame(b"\xc1\xc1"), (None, "bad_request"), True),
    "trailing bytes": (proto.frame(msgpack.packb({"id": 1}) + b"\0"), (None, "bad_request"), True),
    "not a map": (_frame([1, 2, 3]), (None, "bad_request"), True),
    "no id": (_frame({"op": "ping"}), (None, "bad_request"), True),
    "negative id": (_frame({"id": -5, "inputs": GOOD_X}), (None, "bad_request"), True),
    "unknown op": (_frame({"id": 3, "op": "exec"}), (3, "bad_request"), False),
    "inputs not tensors": (_frame({"id": 4, "inputs": [0.0] * 16}), (4, "bad_request"), False),
    "unknown dtype": (
        _frame({"id": 5, "inputs": _ext("float128", (16,), b"\0" * 256)}),
        (5, "bad_request"),
        False,
    ),
    "size mismatch": (
        _frame({"id": 6, "inputs": _ext("float32", (16,), b"\0" * 60)}),
        (6, "bad_request"),
        False,
    ),
    "shape mismatch": (
        _frame({"id": 7, "inputs": _ext("float32", (4, 4), b"\0" * 64)}),
        (7, "invalid_sample"),
        False,
    ),
    "unknown input name": (
        _frame({"id": 8, "inputs": {"nope": GOOD_X}}),
        (8, "invalid_sample"),
        False,
    ),
    "unknown model": (
        _frame({"id": 9, "model": "resnet", "inputs": GOOD_X}),
        (9, "unknown_model"),
        False,
    ),
    "priority out of range": (
        _frame({"id": 10, "inputs": GOOD_X, "priority": 7}),
        (10, "bad_request"),
        False,
    ),
    "bad timeout": (
        _frame({"id": 11, "inputs": GOOD_X, "timeout": -1}),
        (11, "bad_request"),
        False,
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_malformed_frame_is_answered_and_others_are_unaffected(case: str) -> None:
    data, expected, closes = MALFORMED[case]
    async with serving(max_frame_bytes=1024) as (srv, _):
        bystander = await Wire.open(srv.address)
        await bystander.send(proto.encode_infer(100, x16()))  # in flight meanwhile
        wire = await Wire.open(srv.address)
        await wire.send(data)
        assert error_of(await wire.receive()) == expected
        if closes:
            assert await wire.receive() is None
        else:
            await wire.send(proto.encode_infer(101, x16(1)))
            np.testing.assert_array_equal(ok_outputs(await wire.receive(), 101)["y"], x16(1))
        await wire.aclose()
        np.testing.assert_array_equal(ok_outputs(await bystander.receive(), 100)["y"], x16())
        await bystander.aclose()
        stats = srv.statistics()
    assert stats.errors[expected[1]] >= 1


async def test_connection_ending_inside_a_frame_is_answered() -> None:
    async with serving() as (srv, _):
        wire = await Wire.open(srv.address)
        await wire.send(proto.encode_infer(1, x16())[:-3])
        await wire.stream.send_eof()
        assert error_of(await wire.receive()) == (None, "bad_request")
        assert await wire.receive() is None
        await wire.aclose()


async def test_duplicate_id_in_flight_is_refused() -> None:
    async with serving() as (srv, batcher):
        wire = await Wire.open(srv.address)
        with holding(batcher) as hold:
            await wire.send(proto.encode_infer(5, x16()))
            await hold.reached()
            await wire.send(proto.encode_infer(5, x16()))
            assert error_of(await wire.receive()) == (5, "bad_request")
            hold.release()
            ok_outputs(await wire.receive(), 5)
        await wire.send(proto.encode_infer(5, x16()))  # answered, so the id is free again
        ok_outputs(await wire.receive(), 5)
        await wire.aclose()


def _fuzz_frames() -> st.SearchStrategy[bytes]:
    values = st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**64 - 1)
        | st.floats()
        | st.text(max_size=6)
        | st.binary(max_size=16)
        | st.sampled_from(["infer", "ping", "spec", "auth", "x", "y"])
        | st.builds(
            _ext,
            st.sampled_from(["float32", "int64", "bool", "float99"]),
            st.lists(st.integers(0, 17), max_size=2).map(tuple),
            st.binary(max_size=80),
        ),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(
                st.sampled_from(["id", "op", "inputs", "model", "timeout", "priority", "x"]),
                inner,
                max_size=5,
            )
        ),
        max_leaves=10,
    )
    bodies = st.binary(max_size=48) | values.map(lambda v: msgpack.packb(v, use_bin_type=True))
    framed = st.lists(bodies.map(proto.frame), min_size=1, max_size=3).map(b"".join)
    bad_prefix = st.tuples(st.integers(0, 2**32 - 1), st.binary(max_size=32)).map(
        lambda t: struct.pack(">I", t[0]) + t[1]
    )
    return framed | bad_prefix | st.binary(max_size=64)


def _exchange(address: tuple[str, int], data: bytes) -> list[proto.Response]:
    """Send, half-close, read to the end: every byte back must be a well-formed answer."""
    received = bytearray()
    with socket.create_connection(address, timeout=TIMEOUT) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may already have answered and closed
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
    reader = proto.FrameReader(1 << 26)
    reader.feed(bytes(received))
    answers = []
    while (body := reader.next_frame()) is not None:
        answers.append(proto.decode_response(body))
    assert not reader.pending, "the server sent a truncated frame"
    return answers


def test_fuzzed_frames_never_disturb_the_server(anyio_backend: str) -> None:
    with (
        start_blocking_portal(anyio_backend) as portal,
        portal.wrap_async_context_manager(serving(max_frame_bytes=4096)) as (srv, batcher),
        socket.create_connection(srv.address, timeout=TIMEOUT) as canary,
    ):
        canary_reader = proto.FrameReader(1 << 20)

        @settings(
            max_examples=60,
            deadline=None,
            derandomize=True,
            suppress_health_check=[HealthCheck.function_scoped_fixture],
        )
        @given(_fuzz_frames())
        def probe(data: bytes) -> None:
            for answer in _exchange(srv.address, data):
                if isinstance(answer, proto.ErrorResponse):
                    assert answer.code in proto.ERROR_CODES
            # Another client, connected all along, is still served.
            canary.sendall(proto.encode_infer(1, x16(7)))
            while (body := canary_reader.next_frame()) is None:
                canary_reader.feed(canary.recv(65536))
            np.testing.assert_array_equal(ok_outputs(proto.decode_response(body), 1)["y"], x16(7))

        probe()
        assert portal.call(lambda: batcher.statistics().accounted)


# ---------------------------------------------------------------------------- disconnects


async def test_abrupt_disconnect_mid_request_loses_nothing_for_others() -> None:
    async with serving(small_mlp()) as (srv, batcher):
        rng = np.random.default_rng(1)
        samples = [rng.standard_normal(16).astype(np.float32) for _ in range(12)]
        with holding(batcher) as hold:
            leaver = await Wire.open(srv.address)
            await leaver.send(*(proto.encode_infer(i, x16(i)) for i in range(8)))
            await hold.reached()
            raw = leaver.stream.extra(SocketAttribute.raw_socket)
            # Linger 0: close() sends a reset, the rudest way a client can vanish.
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await leaver.aclose()
            async with Client(*srv.address) as c:
                results: dict[int, Any] = {}

                async def one(i: int) -> None:
                    results[i] = await c.infer(samples[i])

                async with anyio.create_task_group() as tg:
                    for i in range(len(samples)):
                        tg.start_soon(one, i)
                    hold.release()
            await wait_until(lambda: srv.statistics().connections == 0)
        stats = batcher.statistics()
    expected = reference(small_mlp(), [{"x": sample} for sample in samples])
    for i, outputs in enumerate(expected):
        np.testing.assert_allclose(results[i], outputs[0], rtol=1e-5)
    assert stats.accounted
    assert stats.queue_depth == stats.inflight_samples == 0
    assert stats.completed >= len(samples)
    assert 1 <= stats.submitted - len(samples) <= 8  # the leaver's, finished or cancelled


async def test_client_reports_lost_connection_to_every_waiting_call() -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener:
        socket_listener = listener.listeners[0]
        assert isinstance(socket_listener, anyio.abc.SocketListener)
        port = socket_listener.extra(SocketAttribute.local_port)
        errors: list[BaseException] = []

        async def vanishing_server() -> None:
            # Reads the three requests, answers none, and goes away.
            stream = await socket_listener.accept()
            reader = proto.FrameReader()
            frames = 0
            while frames < 3:
                reader.feed(await stream.receive())
                while reader.next_frame() is not None:
                    frames += 1
            await stream.aclose()

        async with Client("127.0.0.1", port) as c:

            async def one() -> None:
                try:
                    await c.infer(x16())
                except ConnectionLost as exc:
                    errors.append(exc)

            with anyio.fail_after(TIMEOUT):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(vanishing_server)
                    for _ in range(3):
                        tg.start_soon(one)
            with pytest.raises(ConnectionLost, match="closed the connection"):
                await c.infer(x16())
    assert len(errors) == 3
    assert len({id(e) for e in errors}) == 3  # one exception object per caller


# ---------------------------------------------------------------------------- limits


async def test_inflight_limit_stops_reading_until_answers_leave() -> None:
    async with serving(max_inflight_per_connection=2) as (srv, batcher):
        wire = await Wire.open(srv.address)
        with holding(batcher) as hold:
            await wire.send(*(proto.encode_infer(i, x16(i)) for i in range(10)))
            await hold.reached()
            await anyio.wait_all_tasks_blocked()
            assert srv.statistics().inflight == 2
            assert batcher.statistics().submitted == 2
            hold.release()
            answers = [await wire.receive() for _ in range(10)]
        await wire.aclose()
    assert sorted(a.id for a in answers if isinstance(a, proto.OutputsResponse)) == list(range(10))


async def test_connection_limit_refuses_extra_connections() -> None:
    async with serving(max_connections=2) as (srv, _):
        async with Client(*srv.address) as first, Client(*srv.address) as second:
            await first.ping()
            await second.ping()
            extra = await Wire.open(srv.address)
            assert error_of(await extra.receive()) == (None, "too_many_connections")
            assert await extra.receive() is None
            await extra.aclose()
        await wait_until(lambda: srv.statistics().connections == 0)
        async with Client(*srv.address) as again:
            await again.ping()
        assert srv.statistics().refused == 1


async def test_refused_connection_surfaces_in_the_client() -> None:
    async with serving(max_connections=1) as (srv, _), Client(*srv.address) as first:
        await first.ping()
        async with Client(*srv.address) as second:
            with pytest.raises(ServerError) as info:
                await second.ping()
    assert info.value.code == "too_many_connections"


# ---------------------------------------------------------------------------- auth


async def test_token_grants_access() -> None:
    async with (
        serving(token="s3cret") as (srv, _),
        Client(*srv.address, token="s3cret") as c,
    ):
        np.testing.assert_array_equal(await c.infer(x16()), x16())


@pytest.mark.parametrize("token", [None, "wrong", "s3cre", "s3cret\0"])
async def test_missing_or_wrong_token_is_unauthorized(token: str | None) -> None:
    async with serving(token="s3cret") as (srv, batcher):
        with pytest.raises(ServerError) as info:
            async with Client(*srv.address, token=token) as c:
                await c.infer(x16())
        assert info.value.code == "unauthorized"
        assert batcher.statistics().submitted == 0


async def test_first_frame_must_be_auth() -> None:
    async with serving(token="s3cret") as (srv, batcher):
        wire = await Wire.open(srv.address)
        await wire.send(proto.encode_infer(1, x16()), proto.encode_auth(2, "s3cret"))
        assert error_of(await wire.receive()) == (1, "unauthorized")
        assert await wire.receive() is None
        await wire.aclose()
        assert batcher.statistics().submitted == 0


async def test_silent_connection_is_dropped_after_auth_timeout() -> None:
    async with serving(token="s3cret", auth_timeout=0.05) as (srv, _):
        wire = await Wire.open(srv.address)
        assert error_of(await wire.receive()) == (None, "unauthorized")
        assert await wire.receive() is None
        await wire.aclose()


# ---------------------------------------------------------------------------- errors


async def test_client_raises_the_local_exception_types() -> None:
    config = BatcherConfig(
        strategy="decompose",
        batch_sizes=(1, 2),
        max_inflight_chunks=1,
        max_queue_size=1,
        on_full="reject",
    )
    async with serving(config=config) as (srv, batcher), Client(*srv.address) as c:
        with pytest.raises(InvalidSample, match="expected shape"):
            await c.infer(np.zeros(3, np.float32))
        with pytest.raises(ServerError) as info:
            await c.infer(x16(), model="other")
        assert info.value.code == "unknown_model"
        with holding(batcher) as hold:
            async with anyio.create_task_group() as tg:
                tg.start_soon(c.infer, x16())  # runs, held
                await hold.reached()
                with pytest.raises(DeadlineExceeded):
                    await c.infer(x16(), timeout=0.01)
                tg.start_soon(c.infer, x16())  # fills the queue
                await wait_until(lambda: batcher.statistics().queue_depth == 1)
                with pytest.raises(QueueFull):
                    await c.infer(x16())
                hold.release()
        with holding(batcher) as hold:
            hold.fail = RuntimeError("device lost")
            hold.release()
            with pytest.raises(InferenceError, match="device lost"):
                await c.infer(x16())


# ---------------------------------------------------------------------------- shutdown


async def test_shutdown_answers_inflight_then_closes() -> None:
    async with serving(max_inflight_per_connection=1) as (srv, batcher):
        wire = await Wire.open(srv.address)
        with holding(batcher) as hold:
            await wire.send(*(proto.encode_infer(i, x16(i)) for i in range(3)))
            await hold.reached()
            await anyio.wait_all_tasks_blocked()  # the reader has taken all it will take
            srv.shutdown()
            hold.release()
            answers = await wire.receive_until_closed()
        await wire.aclose()
        with pytest.raises(OSError, match="connection attempts failed"):
            await anyio.connect_tcp(*srv.address)
    by_id = {a.id: a for a in answers}
    assert len(by_id) == len(answers)  # one answer per request
    assert set(by_id) in ({0, 1}, {0, 1, 2})  # 2 only if read with the others
    np.testing.assert_array_equal(ok_outputs(by_id[0], 0)["y"], x16(0))
    assert error_of(by_id[1]) == (1, "closed")  # read, waiting for a slot: never started
    if 2 in by_id:
        assert error_of(by_id[2]) == (2, "closed")
    assert batcher.statistics().completed == 1


async def test_a_draining_server_does_not_wait_for_an_idle_client_to_leave(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The server half-closes and lingers for the peer's end of stream; the client answers
    # an end of stream by closing, so the drain ends at once. Were the client to keep its
    # side open, this drain would sit out the whole (here: a minute's) linger.
    monkeypatch.setattr(server_module, "_LINGER_SECONDS", 60.0)
    async with serving() as (srv, _), Client(*srv.address) as c:
        np.testing.assert_array_equal(await c.infer(x16()), x16())
        with anyio.fail_after(30):
            srv.shutdown()
            await srv.aclose()
        with pytest.raises(ConnectionLost):
            await c.infer(x16())


def test_shutdown_outside_the_block_says_so() -> None:
    with pytest.raises(RuntimeError, match="the server is not running"):
        Server(Batcher(models.identity())).shutdown()


async def test_leaving_the_block_drains() -> None:
    hold = Hold()
    answers: list[proto.Response] = []

    async def read_to_the_end(wire: Wire) -> None:
        answers.extend(await wire.receive_until_closed())
        await wire.aclose()

    try:
        async with anyio.create_task_group() as tg:
            async with serving() as (srv, batcher):
                batcher._chunk_hook = hold
                wire = await Wire.open(srv.address)
                await wire.send(proto.encode_infer(1, x16()))
                await hold.reached()
                tg.start_soon(read_to_the_end, wire)
                # Runs once the block's exit first waits, i.e. during the drain.
                tg.start_soon(anyio.to_thread.run_sync, hold.release)
            # The block exited after the drain: the answer came before the connection closed.
            assert len(answers) == 1
            ok_outputs(answers[0], 1)
    finally:
        hold.release()


async def test_serve_runs_a_model_by_name_until_shutdown() -> None:
    from batcher.server import serve

    async with anyio.create_task_group() as tg:
        srv: Server = await tg.start(serve, None, ServerConfig(model="identity", port=0), FAST)
        async with Client(*srv.address) as c:
            assert (await c.spec("identity")).input_names == ("x",)
            np.testing.assert_array_equal(await c.infer(x16(), model="identity"), x16())
        srv.shutdown()


# ---------------------------------------------------------------------------- metrics


async def test_metrics_endpoint_reports_queue_chunks_latency_and_errors() -> None:
    pytest.importorskip("prometheus_client")
    async with serving(metrics_port=0) as (srv, _):
        async with Client(*srv.address) as c:
            await c.infer(x16())
            with pytest.raises(InvalidSample):
                await c.infer(np.zeros(2, np.float32))
        await wait_until(lambda: srv.statistics().connections == 0)
        assert srv.metrics_address is not None
        stream = await anyio.connect_tcp(*srv.metrics_address)
        await stream.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        response = b""
        with anyio.fail_after(TIMEOUT):
            try:
                while True:
                    response += await stream.receive()
            except anyio.EndOfStream:
                pass
        await stream.aclose()
    text = response.decode()
    assert text.startswith("HTTP/1.1 200 OK")
    for needle in (
        'batcher_queue_depth{model="default"} 0.0',
        'batcher_chunk_size_bucket{le="1",model="default"} 1.0',
        'batcher_request_latency_seconds_count{model="default"} 2.0',
        'batcher_request_errors_total{code="invalid_sample",model="default"} 1.0',
        "batcher_connections 0.0",
    ):
        assert needle in text


# ---------------------------------------------------------------------------- config, CLI


def test_config_file_reads_both_tables(tmp_path: Path) -> None:
    path = tmp_path / "batcher.toml"
    path.write_text(
        '[batcher]\nbatch_sizes = [1, 4]\nstrategy = "pad"\n\n'
        '[server]\nmodel = "cnn"\nport = 9000\ntoken = "t"\nmetrics_port = 9001\n'
    )
    batcher_config, server_config = load_configs(path)
    assert batcher_config.batch_sizes == (1, 4)
    assert server_config == ServerConfig(model="cnn", port=9000, token="t", metrics_port=9001)
    assert server_config.model_name == "cnn"


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("[server]\nprot = 1\n", "unknown [server] keys ['prot']"),
        ("[sever]\nport = 1\n", "unknown top-level keys ['sever']"),
        ("[server]\nport = 70000\n", "port must be an integer port"),
        ("[server]\nmax_inflight_per_connection = 0\n", "must be a positive integer"),
        ("[server]\nmax_frame_bytes = 5000000000\n", "must fit the 4-byte length prefix"),
        ('[server]\ntoken = ""\n', "token must be a non-empty string"),
    ],
)
def test_config_errors_name_the_rule(tmp_path: Path, text: str, rule: str) -> None:
    path = tmp_path / "batcher.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=rule.replace("[", r"\[").replace("]", r"\]")):
        load_configs(path)


def test_serve_without_a_model_exits_with_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["serve", "--port", "0"]) == 2
    assert "no model to serve" in capsys.readouterr().err


def test_bench_in_process(anyio_backend: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "--in-process", "--model", "identity", "--backend", anyio_backend]
    assert cli_main([*argv, "--requests", "40", "--concurrency", "4", "--warmup", "4"]) == 0
    out = capsys.readouterr().out
    assert "throughput" in out
    assert "p99" in out


def test_bench_against_a_server(anyio_backend: str, capsys: pytest.CaptureFixture[str]) -> None:
    with (
        start_blocking_portal(anyio_backend) as portal,
        portal.wrap_async_context_manager(serving()) as (srv, _),
    ):
        argv = ["bench", "--port", str(srv.address[1]), "--connections", "2", "--json"]
        assert cli_main([*argv, "--requests", "40", "--concurrency", "8", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    assert '"failed": 0' in out
    assert '"throughput_rps"' in out


def test_serve_command_drains_and_exits_on_sigterm(anyio_backend: str, tmp_path: Path) -> None:
    config = tmp_path / "batcher.toml"
    config.write_text(
        '[batcher]\nbatch_sizes = [1, 2]\nstrategy = "decompose"\n\n'
        '[server]\nmodel = "identity"\nport = 0\n'
    )
    command = [sys.executable, "-m", "batcher", "serve", "--config", str(config)]
    with subprocess.Popen(
        [*command, "--backend", anyio_backend],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as process:
        try:
            assert process.stderr is not None
            port = None
            log = []
            while port is None:
                ready, _, _ = select.select([process.stderr], [], [], TIMEOUT)
                line = process.stderr.readline() if ready else ""
                assert line, f"the server never said where it listens: {log}"
                log.append(line)
                if " listening on " in line:
                    port = int(line.split(" listening on ")[1].split()[0].rsplit(":", 1)[1])
            answers = _exchange(("127.0.0.1", port), proto.encode_infer(1, x16()))
            np.testing.assert_array_equal(ok_outputs(answers[0], 1)["y"], x16())
            process.send_signal(signal.SIGTERM)
            assert process.wait(TIMEOUT) == 0
            assert "draining" in process.stderr.read()
        finally:
            if process.poll() is None:
                process.kill()


def test_raw_client_example_speaks_the_documented_protocol(anyio_backend: str) -> None:
    example = Path(__file__).resolve().parent.parent / "examples" / "raw_client.py"
    with (
        start_blocking_portal(anyio_backend) as portal,
        portal.wrap_async_context_manager(serving(models.two_heads(), token="t")) as (srv, _),
    ):
        command = [sys.executable, str(example), "--port", str(srv.address[1]), "--token", "t"]
        done = subprocess.run(
            [*command, "--count", "3"], capture_output=True, text=True, timeout=TIMEOUT
        )
    assert done.returncode == 0, done.stderr
    for request_id in (1, 2, 3):
        assert f"id {request_id}: {{'sum': Tensor(float32, shape=[8]" in done.stdout


def test_serve_reports_a_port_in_use(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli_main(["serve", "--model", "identity", "--port", str(port)]) == 1
    assert "Address already in use" in capsys.readouterr().err
