"""``python -m benchmarks.server``: the TCP server against the in-process Batcher.

For each reference model (identity, MLP, CNN) the same load (closed loop, N callers each sending its
next request as soon as the last is answered) drives, in turn:

* **in-process**: ``Batcher.submit`` in this process, no network;
* **server**: ``batcher serve`` in a child process, reached through ``batcher.client.Client``
  over loopback TCP from this process (callers spread over a few connections).

Both use the same ``BatcherConfig``. Per point it records throughput, latency percentiles,
CPU time per request (this process, plus the server process in server mode) and samples
per inference. The protocol overhead is stated two ways: the extra per-request latency at
one caller (where no batching hides anything), and the extra CPU time per request. A codec
micro-benchmark gives the pure encode/decode cost per request.

Writes ``server.json`` and ``server.md`` to ``benchmarks/results/`` (or ``--out DIR``).
Client and server share this machine's cores, as they would on one host; figures are only
comparable within one run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
import timeit
from collections.abc import Iterator, Sequence
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import numpy as np

import batcher
from batcher import Batcher, BatcherConfig
from batcher import _protocol as proto
from batcher._netcli import LoadResult, random_samples, run_load
from batcher.client import Client
from batcher.server import load_model

from .machine import describe, headline

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
#: identity first: its inference costs almost nothing, so its figures are the protocol's own.
MODELS = ("identity", "mlp", "cnn")
STARTUP_TIMEOUT = 120.0


@dataclass(frozen=True, slots=True)
class Settings:
    quick: bool
    concurrencies: tuple[int, ...]
    #: Timed requests per point, per model (the CNN is ~10x slower per sample than the MLP).
    requests: dict[str, int]
    #: Timed requests at one caller, where each costs a full round trip.
    requests_at_one: dict[str, int]
    warmup: int
    max_connections: int
    config: BatcherConfig


def settings(quick: bool) -> Settings:
    if quick:
        return Settings(
            quick=True,
            concurrencies=(1, 16),
            requests={"identity": 600, "mlp": 600, "cnn": 160},
            requests_at_one={"identity": 200, "mlp": 200, "cnn": 60},
            warmup=40,
            max_connections=4,
            config=BatcherConfig(profile_budget=0.3),
        )
    return Settings(
        quick=False,
        concurrencies=(1, 4, 16, 64),
        requests={"identity": 5000, "mlp": 5000, "cnn": 1200},
        requests_at_one={"identity": 1500, "mlp": 1500, "cnn": 400},
        warmup=200,
        max_connections=4,
        config=BatcherConfig(),
    )


@dataclass(frozen=True, slots=True)
class Point:
    model: str
    mode: str
    concurrency: int
    connections: int
    result: LoadResult
    #: CPU seconds of the server process during the run (server mode only).
    server_cpu_seconds: float
    #: Real samples per inference run during the run, when known.
    samples_per_chunk: float | None

    @property
    def cpu_us_per_request(self) -> float:
        return 1e6 * (self.result.cpu_seconds + self.server_cpu_seconds) / self.result.requests

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "mode": self.mode,
            "concurrency": self.concurrency,
            "connections": self.connections,
            **self.result.summary(),
            "client_cpu_us_per_request": 1e6 * self.result.cpu_seconds / self.result.requests,
            "server_cpu_us_per_request": 1e6 * self.server_cpu_seconds / self.result.requests,
            "total_cpu_us_per_request": self.cpu_us_per_request,
            "samples_per_chunk": self.samples_per_chunk,
        }


# ---------------------------------------------------------------------------- server process


def _process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process so far (all its threads)."""
    try:
        import psutil

        times = psutil.Process(pid).cpu_times()
        return float(times.user + times.system)
    except ImportError:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(slots=True)
class ServerProcess:
    process: subprocess.Popen[str]
    port: int
    metrics_port: int | None
    log: list[str]

    def cpu(self) -> float:
        return _process_cpu(self.process.pid)

    def chunk_counters(self) -> tuple[float, float] | None:
        """(inference runs, completed samples) so far, from the Prometheus endpoint."""
        if self.metrics_port is None:
            return None
        with socket.create_connection(("127.0.0.1", self.metrics_port), timeout=10) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        text = data.decode()
        chunks = re.search(r"^batcher_chunk_size_count\{[^}]*\} (\S+)$", text, re.M)
        done = re.search(
            r'^batcher_samples_total\{[^}]*outcome="completed"[^}]*\} (\S+)$', text, re.M
        )
        if chunks is None or done is None:
            return None
        return float(chunks.group(1)), float(done.group(1))


@contextmanager
def server_process(model: str, config: BatcherConfig, max_inflight: int) -> Iterator[ServerProcess]:
    """``batcher serve`` in a child process, stopped with SIGTERM (a graceful drain)."""
    try:
        import prometheus_client  # noqa: F401 - only probing whether metrics can be served

        metrics = True
    except ImportError:
        metrics = False
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "batcher.toml"
        server_table = f'[server]\nmodel = "{model}"\nport = 0\n'
        server_table += f"max_inflight_per_connection = {max_inflight}\n"
        if metrics:
            server_table += "metrics_port = 0\n"
        path.write_text(config.to_toml() + "\n" + server_table)
        with subprocess.Popen(
            [sys.executable, "-m", "batcher", "serve", "--config", str(path)],
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        ) as process:
            drain = None
            try:
                assert process.stderr is not None
                log: list[str] = []
                port, metrics_port = _wait_listening(process, log)
                # Keep draining the log so a chatty server never blocks on a full pipe.
                drain = threading.Thread(target=_drain, args=(process.stderr, log), daemon=True)
                drain.start()
                yield ServerProcess(process, port, metrics_port, log)
            finally:
                if process.poll() is None:
                    process.terminate()  # SIGTERM: the server drains, then exits
                    try:
                        process.wait(60)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait()
                if drain is not None:
                    drain.join(10)  # the pipe is at its end once the server has exited


def _wait_listening(process: subprocess.Popen[str], log: list[str]) -> tuple[int, int | None]:
    assert process.stderr is not None
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([process.stderr], [], [], max(remaining, 0))
        line = process.stderr.readline() if ready else ""
        if not line:
            raise RuntimeError("batcher serve did not start:\n" + "".join(log))
        log.append(line)
        found = re.search(r" listening on \S+:(\d+)", line)
        if found:
            metrics = re.search(r"metrics on \S+:(\d+)", line)
            return int(found.group(1)), int(metrics.group(1)) if metrics else None


def _drain(stream: Any, log: list[str]) -> None:
    for line in stream:
        log.append(line)


# ---------------------------------------------------------------------------- measuring


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def _measure_in_process(
    model: str, s: Settings, b: Batcher, samples: Sequence[object], started: float
) -> list[Point]:
    points = []
    for concurrency in s.concurrencies:
        await run_load(b.submit, samples, concurrency=concurrency, requests=s.warmup)
        before = b.statistics()
        result = await run_load(
            b.submit, samples, concurrency=concurrency, requests=_requests(s, model, concurrency)
        )
        after = b.statistics()
        chunks = sum(after.chunks_per_size.values()) - sum(before.chunks_per_size.values())
        per_chunk = (after.completed - before.completed) / chunks if chunks else None
        points.append(Point(model, "in-process", concurrency, 0, result, 0.0, per_chunk))
        _report(points[-1], started)
    return points


async def _measure_server(
    model: str, s: Settings, samples: Sequence[object], server: ServerProcess, started: float
) -> list[Point]:
    points = []
    for concurrency in s.concurrencies:
        connections = min(concurrency, s.max_connections)
        async with AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(Client("127.0.0.1", server.port))
                for _ in range(connections)
            ]
            infer = _RoundRobin(clients).infer
            # Warm up first, outside the counters.
            await run_load(infer, samples, concurrency=concurrency, requests=s.warmup)
            counters_before = server.chunk_counters()
            cpu_before = server.cpu()
            result = await run_load(
                infer, samples, concurrency=concurrency, requests=_requests(s, model, concurrency)
            )
            server_cpu = server.cpu() - cpu_before
            counters_after = server.chunk_counters()
        per_chunk = None
        if counters_before is not None and counters_after is not None:
            chunks = counters_after[0] - counters_before[0]
            per_chunk = (counters_after[1] - counters_before[1]) / chunks if chunks else None
        points.append(
            Point(model, "server", concurrency, connections, result, server_cpu, per_chunk)
        )
        _report(points[-1], started)
    return points


class _RoundRobin:
    """Spreads calls over several connections in turn."""

    def __init__(self, clients: list[Client]) -> None:
        self._clients = clients
        self._turn = 0

    async def infer(self, sample: object) -> object:
        client = self._clients[self._turn % len(self._clients)]
        self._turn += 1
        return await client.infer(sample)


def _requests(s: Settings, model: str, concurrency: int) -> int:
    return s.requests_at_one[model] if concurrency == 1 else s.requests[model]


def _report(point: Point, started: float) -> None:
    r = point.result
    _say(
        f"[{time.perf_counter() - started:6.1f} s] {point.model:4} {point.mode:10} "
        f"c={point.concurrency:<3} {r.throughput:8.1f} req/s  p50 {1e3 * r.percentile(50):7.3f} ms"
        f"  p99 {1e3 * r.percentile(99):7.3f} ms  {point.cpu_us_per_request:7.1f} µs CPU/req"
        + (f"  {r.failed} failed" if r.failed else "")
    )


def codec_cost(spec: batcher.ModelSpec, sample: object, repeat: int) -> dict[str, float]:
    """Microseconds to encode + decode one request and one response (no I/O)."""
    names = spec.output_names
    outputs = {
        name: np.zeros(t.shape, t.dtype) for name, t in zip(names, spec.outputs, strict=True)
    }

    def request() -> None:
        proto.decode_request(proto.encode_infer(1, sample)[4:])

    def response() -> None:
        proto.decode_response(proto.encode_outputs(1, outputs)[4:])

    request_us = 1e6 * min(timeit.repeat(request, number=repeat, repeat=5)) / repeat
    response_us = 1e6 * min(timeit.repeat(response, number=repeat, repeat=5)) / repeat
    return {
        "request_us": request_us,
        "response_us": response_us,
        "total_us": request_us + response_us,
        "request_bytes": len(proto.encode_infer(1, sample)),
        "response_bytes": len(proto.encode_outputs(1, outputs)),
    }


async def _measure_model(model: str, s: Settings, started: float) -> dict[str, Any]:
    source = await anyio.to_thread.run_sync(load_model, model)
    # The in-process batcher closes before the server starts: each mode has the cores.
    async with Batcher(source, s.config) as b:
        spec = b.spec
        samples = random_samples(spec, 32, seed=1)
        in_process = await _measure_in_process(model, s, b, samples, started)
    with server_process(model, s.config, max_inflight=64) as server:
        _say(f"[{time.perf_counter() - started:6.1f} s] {model}: server on port {server.port}")
        over_tcp = await _measure_server(model, s, samples, server, started)
    codec = codec_cost(spec, samples[0], 2000 if s.quick else 20000)
    return {"model": model, "points": in_process + over_tcp, "codec": codec}


def overhead(points: list[Point], codec: dict[str, float]) -> dict[str, Any]:
    """The server's cost over the in-process batcher, per request."""
    by_key = {(p.mode, p.concurrency): p for p in points}
    out: dict[str, Any] = {"codec_us_per_request": codec["total_us"]}
    one_local, one_tcp = by_key.get(("in-process", 1)), by_key.get(("server", 1))
    if one_local and one_tcp:
        out["latency_p50_ms_at_1"] = 1e3 * (
            one_tcp.result.percentile(50) - one_local.result.percentile(50)
        )
        out["cpu_us_per_request_at_1"] = one_tcp.cpu_us_per_request - one_local.cpu_us_per_request
    top = max(p.concurrency for p in points)
    local, tcp = by_key.get(("in-process", top)), by_key.get(("server", top))
    if local and tcp:
        out["top_concurrency"] = top
        out["cpu_us_per_request_at_top"] = tcp.cpu_us_per_request - local.cpu_us_per_request
        out["throughput_ratio_at_top"] = (
            tcp.result.throughput / local.result.throughput if local.result.throughput else None
        )
    return out


# ---------------------------------------------------------------------------- report


def markdown(document: dict[str, Any]) -> str:
    lines = [
        "# Server vs in-process Batcher",
        "",
        f"{headline(document['machine'])}; load average "
        f"{document['machine']['load_before']} before, "
        f"{document['machine']['load_after']} after"
        + (" — **quick run**, figures are indicative only" if document["quick"] else "")
        + ".",
        "",
        "Closed loop: each of *c* callers sends its next request when the last is answered. "
        "Server mode runs `batcher serve` in a child process and reaches it over loopback "
        "TCP with `batcher.client.Client` (callers spread over up to "
        f"{document['settings']['max_connections']} connections); client and server share "
        "the machine. CPU is process CPU time (all threads) per request: this process, plus "
        "the server process in server mode; OpenVINO's threads spin briefly after each "
        "inference, which inflates it at low load in both modes. *Samples/run* is real "
        "samples per inference. The identity model costs almost nothing to infer, so its "
        "rows show the protocol's own cost.",
        "",
        f"Batcher config: `{document['settings']['config']}`",
        "",
    ]
    for model in document["models"]:
        name = model["model"]
        lines += [
            f"## {name}",
            "",
            "| mode | c | conns | req/s | p50 ms | p95 ms | p99 ms | CPU µs/req | samples/run |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for p in model["points"]:
            lat = p["latency_ms"]
            per_chunk = p["samples_per_chunk"]
            lines.append(
                f"| {p['mode']} | {p['concurrency']} | {p['connections'] or '-'} | "
                f"{p['throughput_rps']:.0f} | {lat['p50']:.3f} | {lat['p95']:.3f} | "
                f"{lat['p99']:.3f} | {p['total_cpu_us_per_request']:.0f} | "
                f"{'-' if per_chunk is None else f'{per_chunk:.2f}'} |"
            )
        o = model["overhead"]
        c = model["codec"]
        lines += [
            "",
            f"Protocol overhead ({name}):",
            "",
            f"- latency at 1 caller: **{o['latency_p50_ms_at_1']:+.3f} ms** p50 per request "
            "(server minus in-process)",
            f"- CPU at 1 caller: **{o['cpu_us_per_request_at_1']:+.0f} µs** per request "
            "(client + server processes minus in-process)",
            f"- CPU at {o['top_concurrency']} callers: **{o['cpu_us_per_request_at_top']:+.0f} µs**"
            f" per request; throughput {100 * o['throughput_ratio_at_top']:.0f} % of in-process",
            f"- encoding + decoding alone: {c['total_us']:.1f} µs per request "
            f"({c['request_bytes']} B request, {c['response_bytes']} B response)",
            "",
        ]
    return "\n".join(lines)


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


async def run(s: Settings) -> dict[str, Any]:
    started = time.perf_counter()
    load_before = _load()
    models = []
    for model in MODELS:
        measured = await _measure_model(model, s, started)
        points: list[Point] = measured["points"]
        models.append(
            {
                "model": model,
                "points": [p.to_json() for p in points],
                "codec": measured["codec"],
                "overhead": overhead(points, measured["codec"]),
            }
        )
    return {
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": s.quick,
        "seconds": time.perf_counter() - started,
        "machine": {**describe(), "load_before": load_before, "load_after": _load()},
        "settings": {
            "concurrencies": list(s.concurrencies),
            "requests": s.requests,
            "requests_at_one": s.requests_at_one,
            "warmup": s.warmup,
            "max_connections": s.max_connections,
            "config": repr(s.config),
        },
        "models": models,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.server", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory")
    args = parser.parse_args(argv)
    document = anyio.run(run, settings(args.quick))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "server.json").write_text(json.dumps(document, indent=2) + "\n")
    (args.out / "server.md").write_text(markdown(document))
    _say(f"wrote {args.out / 'server.json'} and {args.out / 'server.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
