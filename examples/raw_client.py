"""A batcher client from docs/protocol.md alone: only socket, struct and msgpack.

Start a server (``batcher serve --model mlp``), then::

    python examples/raw_client.py --port 7878 --count 8

It asks the server what the model takes, sends ``--count`` requests back to back without
waiting (pipelining), and prints the answers in the order they arrive, matched by id.
"""

from __future__ import annotations

import argparse
import math
import random
import socket
import struct
from typing import Any

import msgpack

TENSOR_EXT = 1
# dtype name -> struct format of one little-endian element (docs/protocol.md, section 3).
FORMATS = {
    "bool": "?",
    "int8": "b",
    "int16": "h",
    "int32": "i",
    "int64": "q",
    "uint8": "B",
    "uint16": "H",
    "uint32": "I",
    "uint64": "Q",
    "float16": "e",
    "float32": "f",
    "float64": "d",
}


class Tensor:
    """A dtype name, a shape and a flat list of values in C order."""

    def __init__(self, dtype: str, shape: list[int], values: list[Any]) -> None:
        self.dtype, self.shape, self.values = dtype, shape, values

    def __repr__(self) -> str:
        head = ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in self.values[:4])
        more = ", ..." if len(self.values) > 4 else ""
        return f"Tensor({self.dtype}, shape={self.shape}, [{head}{more}])"


def pack_tensor(tensor: Tensor) -> msgpack.ExtType:
    name = tensor.dtype.encode("ascii")
    header = struct.pack(f">B{len(name)}sB", len(name), name, len(tensor.shape))
    dims = struct.pack(f">{len(tensor.shape)}I", *tensor.shape)
    data = struct.pack(f"<{len(tensor.values)}{FORMATS[tensor.dtype]}", *tensor.values)
    return msgpack.ExtType(TENSOR_EXT, header + dims + data)


def unpack_ext(code: int, payload: bytes) -> Any:
    if code != TENSOR_EXT:
        return msgpack.ExtType(code, payload)
    name_len = payload[0]
    dtype = payload[1 : 1 + name_len].decode("ascii")
    ndim = payload[1 + name_len]
    at = 2 + name_len
    shape = list(struct.unpack_from(f">{ndim}I", payload, at))
    at += 4 * ndim
    count = math.prod(shape)
    values = list(struct.unpack_from(f"<{count}{FORMATS[dtype]}", payload, at))
    return Tensor(dtype, shape, values)


def send_frame(sock: socket.socket, message: dict[str, Any]) -> None:
    body = msgpack.packb(message, use_bin_type=True)
    sock.sendall(struct.pack(">I", len(body)) + body)


def receive_exactly(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the server closed the connection")
        data += chunk
    return bytes(data)


def receive_frame(sock: socket.socket) -> dict[str, Any]:
    (length,) = struct.unpack(">I", receive_exactly(sock, 4))
    message: dict[str, Any] = msgpack.unpackb(
        receive_exactly(sock, length), ext_hook=unpack_ext, raw=False
    )
    return message


def call(sock: socket.socket, message: dict[str, Any]) -> dict[str, Any]:
    """One request, one answer (no other request in flight)."""
    send_frame(sock, message)
    answer = receive_frame(sock)
    if "error" in answer:
        raise SystemExit(f"{answer['error']['code']}: {answer['error']['message']}")
    return answer


def random_tensor(spec: dict[str, Any], rng: random.Random) -> Tensor:
    count = math.prod(spec["shape"])
    if spec["dtype"].startswith("float"):
        values: list[Any] = [rng.gauss(0.0, 1.0) for _ in range(count)]
    elif spec["dtype"] == "bool":
        values = [rng.random() < 0.5 for _ in range(count)]
    else:
        values = [rng.randrange(10) for _ in range(count)]
    return Tensor(spec["dtype"], list(spec["shape"]), values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7878)
    parser.add_argument("--token", help="the server's shared secret, if it has one")
    parser.add_argument("--count", type=int, default=8, help="requests to pipeline")
    args = parser.parse_args()

    with socket.create_connection((args.host, args.port), timeout=30) as sock:
        if args.token is not None:
            call(sock, {"id": 0, "op": "auth", "token": args.token})
        spec = call(sock, {"id": 0, "op": "spec"})["spec"]
        print(f"model {spec['model']!r}")
        print(f"  inputs  {spec['inputs']}")
        print(f"  outputs {spec['outputs']}")

        # Sending everything before reading works only while the server reads ahead: it
        # stops reading at max_inflight unanswered requests. Past that, a real client
        # reads answers concurrently (a thread, or non-blocking I/O).
        count = min(args.count, spec["max_inflight"])
        rng = random.Random(0)
        for request_id in range(1, count + 1):
            inputs = {t["name"]: pack_tensor(random_tensor(t, rng)) for t in spec["inputs"]}
            send_frame(sock, {"id": request_id, "op": "infer", "inputs": inputs})
        for _ in range(count):
            answer = receive_frame(sock)
            if "error" in answer:
                print(f"id {answer['id']}: {answer['error']['code']}: {answer['error']['message']}")
            else:
                print(f"id {answer['id']}: {answer['outputs']}")


if __name__ == "__main__":
    main()
