"""The wire format alone: framing, tensors, requests and responses, with no sockets."""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from batcher import (
    BatcherClosed,
    DeadlineExceeded,
    InferenceError,
    InvalidSample,
    QueueFull,
)
from batcher import _protocol as proto


def body(message: object) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


def tensor_payload(name: str, shape: tuple[int, ...], data: bytes) -> bytes:
    return (
        bytes((len(name),))
        + name.encode()
        + bytes((len(shape),))
        + struct.pack(f">{len(shape)}I", *shape)
        + data
    )


def ext(name: str, shape: tuple[int, ...], data: bytes) -> msgpack.ExtType:
    return msgpack.ExtType(proto.TENSOR_EXT, tensor_payload(name, shape, data))


# ---------------------------------------------------------------------------- framing


def test_frame_prefixes_big_endian_length() -> None:
    assert proto.frame(b"abc") == b"\x00\x00\x00\x03abc"


def test_reader_yields_frames_fed_one_byte_at_a_time() -> None:
    stream = proto.frame(b"first") + proto.frame(b"") + proto.frame(b"third")
    reader = proto.FrameReader(64)
    frames = []
    for i in range(len(stream)):
        reader.feed(stream[i : i + 1])
        while (got := reader.next_frame()) is not None:
            frames.append(got)
    assert frames == [b"first", b"", b"third"]
    assert not reader.pending


def test_reader_refuses_oversized_frame_from_its_header_alone() -> None:
    reader = proto.FrameReader(16)
    reader.feed(struct.pack(">I", 17))  # no body at all: the prefix is enough
    with pytest.raises(proto.ProtocolError) as info:
        reader.next_frame()
    assert info.value.code == "too_large"
    assert info.value.fatal


def test_reader_accepts_frame_of_exactly_the_limit() -> None:
    reader = proto.FrameReader(4)
    reader.feed(proto.frame(b"abcd"))
    assert reader.next_frame() == b"abcd"


def test_reader_reports_partial_frame_as_pending() -> None:
    reader = proto.FrameReader(64)
    reader.feed(proto.frame(b"abcdef")[:5])
    assert reader.next_frame() is None
    assert reader.pending


@given(st.lists(st.binary(max_size=40), max_size=8), st.data())
def test_reader_reassembles_any_split(bodies: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(proto.frame(b) for b in bodies)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    reader = proto.FrameReader(64)
    frames = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        reader.feed(stream[start:end])
        while (got := reader.next_frame()) is not None:
            frames.append(got)
    assert frames == bodies


# ---------------------------------------------------------------------------- tensors

wire_dtypes = st.sampled_from(sorted(proto.DTYPES))


@given(
    wire_dtypes.flatmap(
        lambda name: hnp.arrays(
            proto.DTYPES[name], hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)
        )
    )
)
def test_tensor_round_trips(array: np.ndarray[Any, Any]) -> None:
    decoded = proto.decode_tensor(proto.encode_tensor(array).data)
    assert decoded.dtype == array.dtype
    assert decoded.shape == array.shape
    np.testing.assert_array_equal(decoded, array)


def test_tensor_layout_is_the_documented_one() -> None:
    array = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int16)
    payload = proto.encode_tensor(array).data
    assert payload == (
        b"\x05int16" + b"\x02" + b"\x00\x00\x00\x02\x00\x00\x00\x03" + array.astype("<i2").tobytes()
    )


def test_decoded_tensor_views_the_payload() -> None:
    payload = proto.encode_tensor(np.arange(6, dtype=np.float32)).data
    decoded = proto.decode_tensor(payload)
    assert not decoded.flags.owndata
    assert not decoded.flags.writeable


def test_big_endian_and_strided_arrays_go_out_little_endian_c_order() -> None:
    array = np.arange(12, dtype=">i4").reshape(3, 4).T
    decoded = proto.decode_tensor(proto.encode_tensor(array).data)
    assert decoded.dtype == np.dtype("<i4")
    np.testing.assert_array_equal(decoded, array)


def test_unsupported_dtype_is_refused_on_encode() -> None:
    with pytest.raises(TypeError, match="no wire form"):
        proto.encode_tensor(np.array([1 + 2j]))


@pytest.mark.parametrize(
    ("payload", "rule"),
    [
        (b"", "shorter than its header"),
        (b"\x07float", "inside its dtype name"),
        (tensor_payload("float128", (1,), b"\x00" * 16), "unknown dtype"),
        (tensor_payload("complex64", (1,), b"\x00" * 8), "unknown dtype"),
        (b"\x07float32\x21" + b"\x00" * 200, "at most 32 axes"),
        (b"\x07float32\x02\x00\x00\x00\x01", "inside its shape"),
        (tensor_payload("float32", (2, 3), b"\x00" * 23), "needs 24 data bytes, got 23"),
        (tensor_payload("float32", (2, 3), b"\x00" * 25), "needs 24 data bytes, got 25"),
        (tensor_payload("float32", (2**32 - 1, 2**32 - 1), b""), "data bytes"),
        (tensor_payload("bool", (2,), b"\x01\x02"), "0 or 1"),
    ],
)
def test_malformed_tensor_names_the_rule(payload: bytes, rule: str) -> None:
    with pytest.raises(ValueError, match=rule):
        proto.decode_tensor(payload)


# ---------------------------------------------------------------------------- requests


def test_infer_request_round_trips() -> None:
    inputs = {"a": np.ones(3, np.float32), "b": np.arange(4, dtype=np.int32)}
    data = proto.encode_infer(7, inputs, model="m", timeout=0.5, priority=1)
    request = proto.decode_request(data[4:])
    assert isinstance(request, proto.InferRequest)
    assert (request.id, request.model, request.timeout, request.priority) == (7, "m", 0.5, 1)
    assert isinstance(request.inputs, dict)
    assert sorted(request.inputs) == ["a", "b"]
    np.testing.assert_array_equal(request.inputs["b"], inputs["b"])


def test_infer_request_may_carry_one_bare_tensor_and_no_op() -> None:
    request = proto.decode_request(body({"id": 1, "inputs": ext("float32", (1,), b"\0" * 4)}))
    assert isinstance(request, proto.InferRequest)
    assert isinstance(request.inputs, np.ndarray)


def test_other_ops_decode() -> None:
    assert proto.decode_request(proto.encode_auth(1, "s")[4:]) == proto.AuthRequest(1, b"s")
    assert proto.decode_request(proto.encode_ping(2)[4:]) == proto.PingRequest(2)
    assert proto.decode_request(proto.encode_spec_request(3, "m")[4:]) == proto.SpecRequest(3, "m")


def test_unknown_keys_are_ignored() -> None:
    request = proto.decode_request(body({"id": 1, "op": "ping", "future": [1, 2]}))
    assert request == proto.PingRequest(1)


@pytest.mark.parametrize(
    ("raw", "rule"),
    [
        (b"", "not one valid msgpack object"),
        (b"\xc1", "not one valid msgpack object"),
        (b"\x81", "not one valid msgpack object"),
        (body({"id": 1}) + b"\x00", "not one valid msgpack object"),
        (b"\xa2\xff\xfe", "not one valid msgpack object"),
        (b"\x91" * 5000 + b"\xc0", "not one valid msgpack object"),
        (body([1, 2]), "must be a msgpack map"),
        (body("id"), "must be a msgpack map"),
        (body({1: 2}), "not one valid msgpack object"),
        (body({"op": "ping"}), '"id" must be'),
        (body({"id": -1, "op": "ping"}), '"id" must be'),
        (body({"id": True, "op": "ping"}), '"id" must be'),
        (body({"id": 1.0, "op": "ping"}), '"id" must be'),
        (body({"id": "1", "op": "ping"}), '"id" must be'),
    ],
)
def test_unattributable_frames_are_fatal(raw: bytes, rule: str) -> None:
    with pytest.raises(proto.ProtocolError, match=rule) as info:
        proto.decode_request(raw)
    assert info.value.code == "bad_request"
    assert info.value.fatal
    assert info.value.request_id is None


@pytest.mark.parametrize(
    ("message", "rule"),
    [
        ({"op": "shutdown"}, '"op" must be one of'),
        ({"op": "infer"}, 'needs "inputs"'),
        ({"inputs": [1.0, 2.0]}, "must be a tensor"),
        ({"inputs": {"x": [1.0]}}, "must be a tensor"),
        ({"inputs": {"x": msgpack.ExtType(5, b"")}}, "unknown extension type 5"),
        ({"inputs": ext("float99", (1,), b"")}, "unknown dtype"),
        ({"inputs": {"x": ext("float32", (3,), b"\0" * 8)}}, "needs 12 data bytes"),
        ({"inputs": ext("float32", (1,), b"\0" * 4), "timeout": 0}, '"timeout" must be'),
        ({"inputs": ext("float32", (1,), b"\0" * 4), "timeout": -1.0}, '"timeout" must be'),
        ({"inputs": ext("float32", (1,), b"\0" * 4), "timeout": "1"}, '"timeout" must be'),
        ({"inputs": ext("float32", (1,), b"\0" * 4), "priority": 1.5}, '"priority" must be'),
        ({"inputs": ext("float32", (1,), b"\0" * 4), "model": 3}, '"model" must be a string'),
        ({"op": "auth", "token": 5}, '"token" must be'),
        ({"inputs": msgpack.Timestamp(1, 0)}, "must be a tensor"),
    ],
)
def test_attributable_errors_carry_the_request_id(message: dict[str, Any], rule: str) -> None:
    with pytest.raises(proto.ProtocolError, match=rule) as info:
        proto.decode_request(body({"id": 42, **message}))
    assert info.value.code == "bad_request"
    assert info.value.request_id == 42
    assert not info.value.fatal


def test_nan_timeout_is_refused() -> None:
    frame = body({"id": 1, "inputs": ext("float32", (1,), b"\0" * 4), "timeout": float("nan")})
    with pytest.raises(proto.ProtocolError, match='"timeout"'):
        proto.decode_request(frame)


keys = st.sampled_from(["id", "op", "inputs", "model", "timeout", "priority", "token"])
ops = st.sampled_from(["infer", "auth", "spec", "ping"])
tensors = st.builds(
    ext,
    st.sampled_from([*proto.DTYPES, "float99", ""]),
    st.lists(st.integers(0, 4), max_size=3).map(tuple),
    st.binary(max_size=24),
) | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=24))
msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8)
    | ops
    | tensors,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(keys | st.text(max_size=4), inner, max_size=5)
    ),
    max_leaves=12,
)
#: Random bytes, random msgpack, and near-miss requests (right keys, random values).
fuzz_bodies = (
    st.binary(max_size=64)
    | msgpack_values.map(lambda v: msgpack.packb(v, use_bin_type=True))
    | st.dictionaries(keys, msgpack_values, max_size=5).map(
        lambda v: msgpack.packb(v, use_bin_type=True)
    )
)


@settings(max_examples=300)
@given(fuzz_bodies)
def test_decoding_anything_raises_only_protocol_error(raw: bytes) -> None:
    kinds = (proto.InferRequest, proto.AuthRequest, proto.SpecRequest, proto.PingRequest)
    try:
        outcome: object = proto.decode_request(raw)
    except proto.ProtocolError as exc:
        outcome = exc
    if isinstance(outcome, proto.ProtocolError):
        assert outcome.code == "bad_request"
    else:
        assert isinstance(outcome, kinds)


# ---------------------------------------------------------------------------- responses


def test_responses_round_trip() -> None:
    out = proto.decode_response(proto.encode_outputs(5, {"y": np.arange(3.0)})[4:])
    assert isinstance(out, proto.OutputsResponse)
    assert out.id == 5
    np.testing.assert_array_equal(out.outputs["y"], np.arange(3.0))
    assert proto.decode_response(proto.encode_error(None, "too_large", "m")[4:]) == (
        proto.ErrorResponse(None, "too_large", "m")
    )
    assert proto.decode_response(proto.encode_ok(3)[4:]) == proto.OkResponse(3)
    spec = proto.decode_response(proto.encode_spec(4, {"model": "m"})[4:])
    assert spec == proto.SpecResponse(4, {"model": "m"})


@pytest.mark.parametrize(
    "message",
    [
        {"id": 1},
        {"id": 1, "error": "boom"},
        {"id": 1, "error": {"message": "no code"}},
        {"id": 1, "outputs": {"y": 3}},
        {"id": 1, "spec": []},
        {"outputs": {}},
    ],
)
def test_malformed_responses_are_fatal(message: dict[str, Any]) -> None:
    with pytest.raises(proto.ProtocolError) as info:
        proto.decode_response(body(message))
    assert info.value.fatal


# ---------------------------------------------------------------------------- error codes


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidSample("x"), "invalid_sample"),
        (QueueFull("x"), "queue_full"),
        (DeadlineExceeded("x"), "deadline_exceeded"),
        (InferenceError("x"), "inference_failed"),
        (BatcherClosed("x"), "closed"),
        (ValueError("x"), "bad_request"),
        (RuntimeError("x"), "internal"),
    ],
)
def test_error_codes_map_both_ways(error: Exception, code: str) -> None:
    assert proto.code_of(error) == code
    assert code in proto.ERROR_CODES
    back = proto.error_for(code, "msg")
    if code in ("bad_request", "internal"):
        assert back is None
    else:
        assert type(back) is type(error)
        assert str(back) == "msg"
