"""The wire format of ``batcher serve``: length-prefixed msgpack frames carrying tensors.

Pure: no sockets, no clocks, no event loop. The server and the client feed received bytes
into a :class:`FrameReader` and turn frame bodies into messages with the ``decode_*``
functions; the ``encode_*`` functions return complete frames, ready to send. Every way a
peer can break the format surfaces as :class:`ProtocolError`, never as another exception.
``docs/protocol.md`` is the specification this module implements.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

import msgpack
import numpy as np
import numpy.typing as npt

from ._errors import (
    BatcherClosed,
    BatcherError,
    DeadlineExceeded,
    InferenceError,
    InvalidSample,
    QueueFull,
)

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "DTYPES",
    "ERROR_CODES",
    "TENSOR_EXT",
    "AuthRequest",
    "ErrorResponse",
    "FrameReader",
    "InferRequest",
    "OkResponse",
    "OutputsResponse",
    "PingRequest",
    "ProtocolError",
    "Request",
    "Response",
    "SpecRequest",
    "SpecResponse",
    "code_of",
    "decode_request",
    "decode_response",
    "decode_tensor",
    "encode_auth",
    "encode_error",
    "encode_infer",
    "encode_ok",
    "encode_outputs",
    "encode_ping",
    "encode_spec",
    "encode_spec_request",
    "encode_tensor",
    "error_for",
    "frame",
    "wire_dtype_name",
]

Array: TypeAlias = npt.NDArray[Any]

#: The length prefix: an unsigned 32-bit big-endian count of the body bytes that follow.
HEADER: Final = struct.Struct(">I")
#: Default largest frame body a peer accepts.
DEFAULT_MAX_FRAME_BYTES: Final = 4 * 1024 * 1024
#: msgpack extension type code of a tensor.
TENSOR_EXT: Final = 1
#: Most axes a tensor on the wire may have.
MAX_NDIM: Final = 32
#: Largest request id: ids are unsigned 64-bit integers.
MAX_ID: Final = 2**64 - 1

#: The element types the wire carries, by their wire names. Data is always little-endian.
DTYPES: Final[Mapping[str, np.dtype[Any]]] = {
    name: np.dtype(name).newbyteorder("<")
    for name in (
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float16",
        "float32",
        "float64",
    )
}
_NAME_OF_KIND: Final = {(dt.kind, dt.itemsize): name for name, dt in DTYPES.items()}
_DIMS = [struct.Struct(f">{n}I") for n in range(MAX_NDIM + 1)]

#: Every error code a response may carry, with what it means.
ERROR_CODES: Final[Mapping[str, str]] = {
    "bad_request": "the frame breaks the wire format (see the message for the rule)",
    "too_large": "the frame's length prefix exceeds the receiver's max_frame_bytes",
    "unauthorized": "the server wants a token and the first frame did not carry the right one",
    "too_many_connections": "the server already holds max_connections connections",
    "unknown_model": "the request names a model the server does not serve",
    "invalid_sample": "the inputs do not match the model (names, shapes or dtypes)",
    "queue_full": "the server's queue is full and it rejects rather than waits",
    "deadline_exceeded": "the request's timeout passed while it was queued; not computed",
    "inference_failed": "OpenVINO failed on the chunk holding this sample",
    "closed": "the server is shutting down and did not compute this request",
    "internal": "an unexpected server error (a bug: the server logs it)",
}

# Ordered: InvalidSample is also a ValueError, so it must be matched before ValueError.
_CODE_OF_ERROR: Final[tuple[tuple[type[BaseException], str], ...]] = (
    (InvalidSample, "invalid_sample"),
    (QueueFull, "queue_full"),
    (DeadlineExceeded, "deadline_exceeded"),
    (InferenceError, "inference_failed"),
    (BatcherClosed, "closed"),
    (ValueError, "bad_request"),
)
_ERROR_OF_CODE: Final[Mapping[str, type[BatcherError]]] = {
    "invalid_sample": InvalidSample,
    "queue_full": QueueFull,
    "deadline_exceeded": DeadlineExceeded,
    "inference_failed": InferenceError,
    "closed": BatcherClosed,
}


def code_of(error: BaseException) -> str:
    """The wire error code for an exception raised while serving a request."""
    for kind, code in _CODE_OF_ERROR:
        if isinstance(error, kind):
            return code
    return "internal"


def error_for(code: str, message: str) -> BatcherError | None:
    """A fresh local exception for a wire error code, or None when no local type matches."""
    kind = _ERROR_OF_CODE.get(code)
    return kind(message) if kind is not None else None


class ProtocolError(Exception):
    """A frame breaks the wire format.

    ``request_id`` is the id of the request the frame carried when it could be read (the
    answer then goes to that request), else None. ``fatal`` means the connection cannot go
    on: the receiver answers once and closes.
    """

    def __init__(
        self, code: str, message: str, *, request_id: int | None = None, fatal: bool = False
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.fatal = fatal


# ---------------------------------------------------------------------------- framing


def frame(body: bytes) -> bytes:
    """``body`` with its length prefix."""
    return HEADER.pack(len(body)) + body


class FrameReader:
    """Cuts a byte stream into frame bodies; sans-I/O, so it never reads or blocks.

    ``feed`` the bytes as they arrive and call ``next_frame`` until it returns None. The
    length prefix is checked against ``max_frame_bytes`` as soon as its four bytes are
    in: an oversized frame is refused before any of its body is buffered.
    """

    __slots__ = ("_buffer", "_max", "_need")

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        if max_frame_bytes < 1:
            raise ValueError(f"max_frame_bytes must be >= 1, got {max_frame_bytes}")
        self._max = max_frame_bytes
        self._buffer = bytearray()
        self._need: int | None = None  # body length of the frame being read, once known

    def feed(self, data: bytes) -> None:
        self._buffer += data

    @property
    def pending(self) -> bool:
        """True when part of a frame has arrived but not all of it."""
        return bool(self._buffer) or self._need is not None

    def next_frame(self) -> bytes | None:
        """The next complete body, or None until more bytes arrive.

        Raises :class:`ProtocolError` (``too_large``, fatal) for an oversized frame; the
        reader is unusable afterwards, since the stream is out of step.
        """
        buffer = self._buffer
        if self._need is None:
            if len(buffer) < HEADER.size:
                return None
            (need,) = HEADER.unpack_from(buffer)
            if need > self._max:
                raise ProtocolError(
                    "too_large",
                    f"frame of {need} bytes exceeds max_frame_bytes={self._max}",
                    fatal=True,
                )
            del buffer[: HEADER.size]
            self._need = need
        need = self._need
        if len(buffer) < need:
            return None
        with memoryview(buffer) as view:  # one copy, not a slice copy and then another
            body = bytes(view[:need])
        # bytearray deletes from the front in O(1) amortised, so pipelined frames are cheap.
        del buffer[:need]
        self._need = None
        return body


# ---------------------------------------------------------------------------- tensors


def wire_dtype_name(dtype: np.dtype[Any]) -> str | None:
    """The wire name of a numpy dtype (any byte order), or None when the wire lacks it."""
    return _NAME_OF_KIND.get((dtype.kind, dtype.itemsize))


def encode_tensor(array: object) -> msgpack.ExtType:
    """The extension object for an array: dtype name, shape, then raw little-endian bytes."""
    value = array if isinstance(array, np.ndarray) else np.asarray(array)
    key = (value.dtype, value.shape)
    head = _HEADS.get(key)
    if head is None:
        head = _tensor_head(value.dtype, value.shape)
        if len(_HEADS) < _MAX_CACHED_HEADS:
            _HEADS[key] = head
    if value.dtype.str[0] == ">":  # the wire is little-endian
        value = value.astype(value.dtype.newbyteorder("<"))
    return msgpack.ExtType(TENSOR_EXT, b"".join((head, np.ascontiguousarray(value).data)))


# A server answers the same few shapes over and over: their headers are built once.
_HEADS: dict[tuple[np.dtype[Any], tuple[int, ...]], bytes] = {}
_MAX_CACHED_HEADS = 4096


def _tensor_head(dtype: np.dtype[Any], shape: tuple[int, ...]) -> bytes:
    name = wire_dtype_name(dtype)
    if name is None:
        raise TypeError(f"dtype {dtype} has no wire form; the wire carries {', '.join(DTYPES)}")
    if len(shape) > MAX_NDIM:
        raise ValueError(f"a tensor may have at most {MAX_NDIM} axes, got {len(shape)}")
    return b"".join(
        (
            bytes((len(name),)),
            name.encode("ascii"),
            bytes((len(shape),)),
            _DIMS[len(shape)].pack(*shape),
        )
    )


class _BadTensor:
    """Stands in for a tensor that failed to decode.

    The ext hook returns this instead of raising, because an exception inside msgpack's
    unpacker would lose the request id, and the error could then not be answered.
    """

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def decode_tensor(data: bytes) -> Array:
    """The array in a tensor extension payload, viewing ``data`` without a copy.

    Raises ValueError naming the broken rule.
    """
    view = memoryview(data)
    if len(view) < 2:
        raise ValueError("tensor payload is shorter than its header")
    name_len = view[0]
    end = 1 + name_len
    if len(view) < end + 1:
        raise ValueError("tensor payload ends inside its dtype name")
    name = bytes(view[1:end]).decode("ascii", errors="replace")
    dtype = DTYPES.get(name)
    if dtype is None:
        raise ValueError(f"unknown dtype {name!r}; the wire carries {', '.join(DTYPES)}")
    ndim = view[end]
    if ndim > MAX_NDIM:
        raise ValueError(f"a tensor may have at most {MAX_NDIM} axes, got {ndim}")
    dims_at = end + 1
    data_at = dims_at + 4 * ndim
    if len(view) < data_at:
        raise ValueError("tensor payload ends inside its shape")
    shape = _DIMS[ndim].unpack_from(view, dims_at)
    count = math.prod(shape)
    expected = count * dtype.itemsize
    actual = len(view) - data_at
    if actual != expected:
        raise ValueError(
            f"tensor of dtype {name} and shape {list(shape)} needs {expected} data bytes, "
            f"got {actual}"
        )
    if count == 0:
        return np.empty(shape, dtype)
    array = np.frombuffer(data, dtype, count, data_at).reshape(shape)
    # numpy trusts bool bytes to be 0 or 1; any other byte would make comparisons lie.
    if dtype.kind == "b" and array.view(np.uint8).max() > 1:
        raise ValueError("bool tensor bytes must each be 0 or 1")
    return array


def _ext_hook(code: int, data: bytes) -> object:
    if code != TENSOR_EXT:
        return _BadTensor(f"unknown extension type {code} (tensors are type {TENSOR_EXT})")
    try:
        return decode_tensor(data)
    except ValueError as exc:
        return _BadTensor(str(exc))


def _default(value: object) -> object:
    if isinstance(value, np.ndarray | np.generic):
        return encode_tensor(value)
    raise TypeError(f"cannot encode {type(value).__name__} on the wire")


def _pack(message: Mapping[str, object]) -> bytes:
    return frame(msgpack.packb(message, default=_default, use_bin_type=True))


def _unpack(body: bytes) -> dict[str, Any]:
    try:
        message = msgpack.unpackb(body, ext_hook=_ext_hook, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for corrupt input
        raise ProtocolError(
            "bad_request", f"frame body is not one valid msgpack object: {exc!r}", fatal=True
        ) from None
    if not isinstance(message, dict):
        raise ProtocolError(
            "bad_request",
            f"frame body must be a msgpack map, got {type(message).__name__}",
            fatal=True,
        )
    return message


def _read_id(message: Mapping[str, object], *, allow_none: bool = False) -> int | None:
    value = message.get("id")
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ID:
        raise ProtocolError(
            "bad_request",
            f'"id" must be an unsigned 64-bit integer, got {value!r}',
            fatal=True,
        )
    return value


def _tensor(value: object, what: str, request_id: int | None) -> Array:
    if isinstance(value, _BadTensor):
        raise ProtocolError("bad_request", f"{what}: {value.reason}", request_id=request_id)
    if not isinstance(value, np.ndarray):
        raise ProtocolError(
            "bad_request",
            f"{what} must be a tensor (msgpack ext type {TENSOR_EXT}), got {type(value).__name__}",
            request_id=request_id,
        )
    return value


def _tensor_map(value: object, what: str, request_id: int | None) -> dict[str, Array]:
    if not isinstance(value, dict):
        raise ProtocolError(
            "bad_request",
            f'"{what}" must be a map of name to tensor, got {type(value).__name__}',
            request_id=request_id,
        )
    return {name: _tensor(tensor, f"{what} {name!r}", request_id) for name, tensor in value.items()}


def _optional_str(message: Mapping[str, object], key: str, request_id: int) -> str | None:
    value = message.get(key)
    if value is not None and not isinstance(value, str):
        raise ProtocolError(
            "bad_request",
            f'"{key}" must be a string, got {type(value).__name__}',
            request_id=request_id,
        )
    return value


# ---------------------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True)
class InferRequest:
    """One sample to compute: ``inputs`` is a tensor (single-input model) or name -> tensor."""

    id: int
    inputs: Array | dict[str, Array]
    model: str | None = None
    timeout: float | None = None
    priority: int = 0


@dataclass(frozen=True, slots=True)
class AuthRequest:
    id: int
    token: bytes


@dataclass(frozen=True, slots=True)
class SpecRequest:
    id: int
    model: str | None = None


@dataclass(frozen=True, slots=True)
class PingRequest:
    id: int


Request: TypeAlias = InferRequest | AuthRequest | SpecRequest | PingRequest


def decode_request(body: bytes) -> Request:
    """The request in a frame body, or :class:`ProtocolError` naming the broken rule."""
    message = _unpack(body)
    request_id = _read_id(message)
    assert request_id is not None
    op = message.get("op", "infer")
    if op == "infer":
        return _decode_infer(message, request_id)
    if op == "auth":
        token = message.get("token")
        if isinstance(token, str):
            token = token.encode()
        if not isinstance(token, bytes):
            raise ProtocolError(
                "bad_request",
                f'"token" must be a string or bytes, got {type(token).__name__}',
                request_id=request_id,
            )
        return AuthRequest(request_id, token)
    if op == "spec":
        return SpecRequest(request_id, _optional_str(message, "model", request_id))
    if op == "ping":
        return PingRequest(request_id)
    raise ProtocolError(
        "bad_request",
        f'"op" must be one of "infer", "spec", "auth", "ping", got {op!r}',
        request_id=request_id,
    )


def _decode_infer(message: Mapping[str, object], request_id: int) -> InferRequest:
    if "inputs" not in message:
        raise ProtocolError("bad_request", 'an infer request needs "inputs"', request_id=request_id)
    raw = message["inputs"]
    inputs: Array | dict[str, Array] = (
        _tensor_map(raw, "inputs", request_id)
        if isinstance(raw, dict)
        else _tensor(raw, '"inputs"', request_id)
    )
    timeout = message.get("timeout")
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise ProtocolError(
            "bad_request",
            f'"timeout" must be a finite number of seconds > 0, got {timeout!r}',
            request_id=request_id,
        )
    priority = message.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ProtocolError(
            "bad_request",
            f'"priority" must be an integer, got {priority!r}',
            request_id=request_id,
        )
    return InferRequest(
        request_id,
        inputs,
        _optional_str(message, "model", request_id),
        None if timeout is None else float(timeout),
        priority,
    )


def encode_infer(
    request_id: int,
    inputs: object,
    *,
    model: str | None = None,
    timeout: float | None = None,
    priority: int = 0,
) -> bytes:
    """A framed infer request; ``inputs`` is an array or a mapping name -> array."""
    message: dict[str, object] = {"id": request_id, "op": "infer"}
    if isinstance(inputs, Mapping):
        message["inputs"] = {str(name): encode_tensor(value) for name, value in inputs.items()}
    else:
        message["inputs"] = encode_tensor(inputs)
    if model is not None:
        message["model"] = model
    if timeout is not None:
        message["timeout"] = float(timeout)
    if priority:
        message["priority"] = priority
    return _pack(message)


def encode_auth(request_id: int, token: str | bytes) -> bytes:
    return _pack({"id": request_id, "op": "auth", "token": token})


def encode_spec_request(request_id: int, model: str | None = None) -> bytes:
    message: dict[str, object] = {"id": request_id, "op": "spec"}
    if model is not None:
        message["model"] = model
    return _pack(message)


def encode_ping(request_id: int) -> bytes:
    return _pack({"id": request_id, "op": "ping"})


# ---------------------------------------------------------------------------- responses


@dataclass(frozen=True, slots=True)
class OutputsResponse:
    id: int
    outputs: dict[str, Array]


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """A failure; ``id`` is None when it concerns the connection, not one request."""

    id: int | None
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class SpecResponse:
    id: int
    spec: dict[str, Any]


@dataclass(frozen=True, slots=True)
class OkResponse:
    id: int


Response: TypeAlias = OutputsResponse | ErrorResponse | SpecResponse | OkResponse


def encode_outputs(request_id: int, outputs: Mapping[str, object]) -> bytes:
    return _pack(
        {
            "id": request_id,
            "outputs": {name: encode_tensor(value) for name, value in outputs.items()},
        }
    )


def encode_error(request_id: int | None, code: str, message: str) -> bytes:
    return _pack({"id": request_id, "error": {"code": code, "message": message}})


def encode_spec(request_id: int, spec: Mapping[str, object]) -> bytes:
    return _pack({"id": request_id, "spec": dict(spec)})


def encode_ok(request_id: int) -> bytes:
    return _pack({"id": request_id, "ok": True})


def decode_response(body: bytes) -> Response:
    """The response in a frame body, or :class:`ProtocolError` (always fatal)."""
    message = _unpack(body)
    if "error" in message:
        error = message["error"]
        if (
            not isinstance(error, dict)
            or not isinstance(error.get("code"), str)
            or not isinstance(error.get("message", ""), str)
        ):
            raise ProtocolError(
                "bad_request",
                f'"error" must be a map with string "code" and "message", got {error!r}',
                fatal=True,
            )
        return ErrorResponse(
            _read_id(message, allow_none=True), error["code"], error.get("message", "")
        )
    request_id = _read_id(message)
    assert request_id is not None
    if "outputs" in message:
        try:
            outputs = _tensor_map(message["outputs"], "outputs", request_id)
        except ProtocolError as exc:
            raise ProtocolError(exc.code, exc.message, request_id=request_id, fatal=True) from None
        return OutputsResponse(request_id, outputs)
    if "spec" in message:
        spec = message["spec"]
        if not isinstance(spec, dict):
            raise ProtocolError("bad_request", '"spec" must be a map', fatal=True)
        return SpecResponse(request_id, spec)
    if message.get("ok") is True:
        return OkResponse(request_id)
    raise ProtocolError(
        "bad_request",
        'a response needs one of "outputs", "error", "spec" or "ok"',
        request_id=request_id,
        fatal=True,
    )
