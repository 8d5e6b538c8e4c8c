"""The ``batcher serve`` and ``batcher bench`` subcommands, and the load generator they share.

The CLI builds its parser from every subcommand module at start-up, so this module
imports only the standard library at top level; the server, OpenVINO and numpy are
imported when a subcommand runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from ._config import BatcherConfig
    from ._model import ModelSpec
    from .server import ServerConfig

__all__ = ["LoadResult", "random_samples", "register", "run_load"]

_BACKENDS = ("asyncio", "trio")
_PROGRESS_SECONDS = 0.25


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``serve`` and ``bench`` to the ``batcher`` command."""
    serve = subparsers.add_parser(
        "serve",
        help="serve a model over TCP (docs/protocol.md)",
        description="Serve a model over TCP. Settings come from --config (a TOML file with "
        "[batcher] and [server] tables); flags override them. SIGINT/SIGTERM drain and stop; "
        "a second signal stops at once.",
    )
    serve.add_argument("--config", help="TOML file with [batcher] and [server] tables")
    serve.add_argument(
        "--model", help="model file (.xml/.onnx) or built-in: mlp, cnn, identity, two_heads"
    )
    serve.add_argument("--name", help="the name requests may give for the model")
    serve.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="TCP port (default 7878; 0 picks a free one)")
    serve.add_argument(
        "--token",
        default=os.environ.get("BATCHER_TOKEN"),
        help="shared secret clients must send first (default: $BATCHER_TOKEN)",
    )
    serve.add_argument("--max-frame-bytes", type=int, help="largest request frame accepted")
    serve.add_argument("--max-connections", type=int, help="connections served at once")
    serve.add_argument(
        "--max-inflight", type=int, help="requests in flight per connection before it pauses"
    )
    serve.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    serve.add_argument("--drain-timeout", type=float, help="bound on the drain at shutdown (s)")
    serve.add_argument("--backend", choices=_BACKENDS, default="asyncio")
    serve.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    serve.set_defaults(func=_serve_command)

    bench = subparsers.add_parser(
        "bench",
        help="measure throughput and latency of a server or an in-process batcher",
        description="Send --requests requests, --concurrency at a time, and print throughput "
        "and latency percentiles. Progress goes to stderr.",
    )
    bench.add_argument("--host", default="127.0.0.1")
    bench.add_argument("--port", type=int, default=7878)
    bench.add_argument("--token", default=os.environ.get("BATCHER_TOKEN"))
    bench.add_argument(
        "--connections", type=int, default=1, help="client connections to spread callers over"
    )
    bench.add_argument(
        "--in-process",
        action="store_true",
        help="drive an in-process Batcher (no server, no network) on --model",
    )
    bench.add_argument(
        "--model",
        help="with --in-process: model file or built-in (default mlp); else the model name "
        "to request (default: the server's only model)",
    )
    bench.add_argument("--config", help="with --in-process: TOML file with a [batcher] table")
    bench.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    bench.add_argument("--requests", type=int, default=2000, help="requests to time")
    bench.add_argument("--warmup", type=int, default=100, help="untimed requests sent first")
    bench.add_argument("--json", action="store_true", help="print the result as JSON")
    bench.add_argument("--backend", choices=_BACKENDS, default="asyncio")
    bench.set_defaults(func=_bench_command)


# ---------------------------------------------------------------------------- serve


def _serve_command(args: argparse.Namespace) -> int:
    import logging

    import anyio

    try:
        batcher_config, server_config = _serve_configs(args)
    except (OSError, ValueError) as exc:  # tomllib.TOMLDecodeError is a ValueError
        print(f"batcher serve: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        anyio.run(_serve_until_signalled, batcher_config, server_config, backend=args.backend)
    except (OSError, ExceptionGroup) as exc:
        # A port already in use deserves one line, not a traceback.
        if isinstance(exc, ExceptionGroup) and exc.split(OSError)[1] is not None:
            raise
        print(f"batcher serve: {_first_leaf(exc)}", file=sys.stderr)
        return 1
    return 0


def _first_leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def _serve_configs(args: argparse.Namespace) -> tuple[BatcherConfig, ServerConfig]:
    from ._config import BatcherConfig
    from .server import ServerConfig, check_model, load_configs

    if args.config is not None:
        batcher_config, server_config = load_configs(args.config)
    else:
        batcher_config, server_config = BatcherConfig(), ServerConfig()
    overrides = {
        "model": args.model,
        "name": args.name,
        "host": args.host,
        "port": args.port,
        "token": args.token,
        "max_frame_bytes": args.max_frame_bytes,
        "max_connections": args.max_connections,
        "max_inflight_per_connection": args.max_inflight,
        "metrics_port": args.metrics_port,
        "drain_timeout": args.drain_timeout,
    }
    server_config = dataclasses.replace(
        server_config, **{k: v for k, v in overrides.items() if v is not None}
    )
    if server_config.model is None:
        raise ValueError("no model to serve: pass --model or set `model` in [server]")
    check_model(server_config.model)
    return batcher_config, server_config


async def _serve_until_signalled(batcher_config: BatcherConfig, config: ServerConfig) -> None:
    import logging
    import signal

    import anyio
    import anyio.abc

    from .server import Server, serve

    logger = logging.getLogger("batcher.server")
    running: list[Server] = []

    async def watch_signals(signals: Any, scope: anyio.CancelScope) -> None:
        draining = False
        async for signum in signals:
            name = signal.Signals(signum).name
            if running and not draining:
                draining = True
                logger.info("%s: draining in-flight requests, then stopping", name)
                running[0].shutdown()
            else:  # during start-up, or a second signal: the user wants out now
                logger.warning("%s: stopping at once", name)
                scope.cancel()
                return

    async def run(scope: anyio.CancelScope, *, task_status: anyio.abc.TaskStatus[Server]) -> None:
        await serve(None, config, batcher_config, task_status=task_status)
        scope.cancel()  # drained and closed: stop watching for signals

    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as task_group:
            scope = task_group.cancel_scope
            task_group.start_soon(watch_signals, signals, scope)
            logger.info("loading model %r", config.model)
            server: Server = await task_group.start(run, scope)
            running.append(server)
            host, port = server.address
            logger.info(
                "model %r listening on %s:%d (max %d connections, %d in flight each%s%s)",
                config.model_name,
                host,
                port,
                config.max_connections,
                config.max_inflight_per_connection,
                ", token required" if config.token else "",
                f", metrics on {server.metrics_address[0]}:{server.metrics_address[1]}"
                if server.metrics_address
                else "",
            )
    logger.info("stopped")


# ---------------------------------------------------------------------------- load


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What one load run measured; latencies are of successful requests, in seconds."""

    requests: int
    concurrency: int
    seconds: float
    #: CPU seconds this process spent during the run (all threads).
    cpu_seconds: float
    latencies: tuple[float, ...]
    #: Failed requests by exception type.
    errors: Mapping[str, int]

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    @property
    def throughput(self) -> float:
        """Successful requests per second."""
        return len(self.latencies) / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, q: float) -> float:
        """Latency at percentile ``q`` (0..100), nearest-rank; nan without successes."""
        ordered = sorted(self.latencies)
        if not ordered:
            return math.nan
        rank = max(1, math.ceil(q / 100 * len(ordered)))
        return ordered[min(rank, len(ordered)) - 1]

    def summary(self) -> dict[str, Any]:
        """Plain numbers, for JSON."""
        return {
            "requests": self.requests,
            "failed": self.failed,
            "errors": dict(self.errors),
            "concurrency": self.concurrency,
            "seconds": self.seconds,
            "throughput_rps": self.throughput,
            "latency_ms": {
                "mean": 1e3 * sum(self.latencies) / len(self.latencies)
                if self.latencies
                else math.nan,
                "p50": 1e3 * self.percentile(50),
                "p95": 1e3 * self.percentile(95),
                "p99": 1e3 * self.percentile(99),
                "max": 1e3 * max(self.latencies, default=math.nan),
            },
            "cpu_us_per_request": 1e6 * self.cpu_seconds / self.requests
            if self.requests
            else math.nan,
        }


async def run_load(
    infer: Callable[[object], Awaitable[object]],
    samples: Sequence[object],
    *,
    concurrency: int,
    requests: int,
    warmup: int = 0,
    progress: TextIO | None = None,
) -> LoadResult:
    """Call ``infer`` ``requests`` times, ``concurrency`` calls at a time, and time each.

    ``warmup`` calls run first, untimed. With ``progress`` set, a progress line is
    written there while the run goes on.
    """
    import anyio

    if concurrency < 1 or requests < 1 or warmup < 0 or not samples:
        raise ValueError(
            "concurrency and requests must be >= 1, warmup >= 0, and samples non-empty"
        )
    if warmup:
        await _drive(infer, samples, concurrency, warmup, [], Counter())
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    cpu_started = time.process_time()
    started = time.perf_counter()
    async with anyio.create_task_group() as task_group:
        if progress is not None:
            task_group.start_soon(_show_progress, progress, latencies, errors, requests, started)
        await _drive(infer, samples, concurrency, requests, latencies, errors)
        task_group.cancel_scope.cancel()
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    if progress is not None:
        progress.write("\r" + " " * 60 + "\r" if progress.isatty() else "")
        progress.flush()
    return LoadResult(requests, concurrency, seconds, cpu, tuple(latencies), dict(errors))


async def _drive(
    infer: Callable[[object], Awaitable[object]],
    samples: Sequence[object],
    concurrency: int,
    total: int,
    latencies: list[float],
    errors: Counter[str],
) -> None:
    import anyio

    issued = 0

    async def worker() -> None:
        nonlocal issued
        while issued < total:
            sample = samples[issued % len(samples)]
            issued += 1
            started = time.perf_counter()
            try:
                await infer(sample)
            except Exception as exc:
                errors[type(exc).__name__] += 1
            else:
                latencies.append(time.perf_counter() - started)

    async with anyio.create_task_group() as task_group:
        for _ in range(min(concurrency, total)):
            task_group.start_soon(worker)


async def _show_progress(
    out: TextIO, latencies: list[float], errors: Counter[str], total: int, started: float
) -> None:
    import anyio

    tty = out.isatty()
    next_mark = 0.25
    while True:
        await anyio.sleep(_PROGRESS_SECONDS)
        done = len(latencies) + sum(errors.values())
        rate = done / max(time.perf_counter() - started, 1e-9)
        line = f"{done}/{total} requests, {rate:,.0f} req/s, {sum(errors.values())} failed"
        if tty:
            out.write("\r" + line.ljust(60))
        elif done / total >= next_mark:
            # Not a terminal (a log file): a line per quarter instead of a redrawn one.
            out.write(line + "\n")
            next_mark += 0.25
        out.flush()


def random_samples(spec: ModelSpec, count: int, seed: int = 0) -> list[object]:
    """``count`` random samples for ``spec``: arrays, or dicts for several inputs."""
    import numpy as np

    rng = np.random.default_rng(seed)
    samples: list[object] = []
    for _ in range(count):
        values = {}
        for tensor in spec.inputs:
            if tensor.dtype.kind == "f":
                value = rng.standard_normal(tensor.shape).astype(tensor.dtype)
            elif tensor.dtype.kind == "b":
                value = rng.integers(0, 2, tensor.shape).astype(bool)
            else:
                value = rng.integers(0, 10, tensor.shape).astype(tensor.dtype)
            values[tensor.name] = value
        samples.append(values[spec.inputs[0].name] if len(values) == 1 else values)
    return samples


# ---------------------------------------------------------------------------- bench


def _bench_command(args: argparse.Namespace) -> int:
    import json

    import anyio

    for name in ("concurrency", "requests", "connections"):
        if getattr(args, name) < 1:
            print(f"batcher bench: --{name} must be >= 1", file=sys.stderr)
            return 2
    try:
        target, result = anyio.run(_bench, args, backend=args.backend)
    except (OSError, ValueError) as exc:
        print(f"batcher bench: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"target": target, **result.summary()}, indent=2))
    else:
        print(format_result(target, result))
    return 0 if result.failed == 0 else 1


async def _bench(args: argparse.Namespace) -> tuple[str, LoadResult]:
    from contextlib import AsyncExitStack

    samples: list[object]
    async with AsyncExitStack() as stack:
        if args.in_process:
            import anyio

            from ._config import BatcherConfig
            from ._core import Batcher
            from .server import load_configs, load_model

            model = args.model or "mlp"
            config = load_configs(args.config)[0] if args.config else BatcherConfig()
            source = await anyio.to_thread.run_sync(load_model, model)
            batcher = await stack.enter_async_context(Batcher(source, config))
            samples = random_samples(batcher.spec, 16)
            target = f"in-process batcher, model {model}"

            async def infer(sample: object) -> object:
                return await batcher.submit(sample)
        else:
            from .client import Client

            clients = [
                await stack.enter_async_context(Client(args.host, args.port, token=args.token))
                for _ in range(args.connections)
            ]
            samples = random_samples(await clients[0].spec(args.model), 16)
            target = (
                f"tcp {args.host}:{args.port}, {args.connections} connection"
                f"{'s' if args.connections > 1 else ''}"
            )
            turn = 0

            async def infer(sample: object) -> object:
                nonlocal turn
                client = clients[turn % len(clients)]
                turn += 1
                return await client.infer(sample, model=args.model)

        print(f"bench: {target}: warming up with {args.warmup} requests", file=sys.stderr)
        result = await run_load(
            infer,
            samples,
            concurrency=args.concurrency,
            requests=args.requests,
            warmup=args.warmup,
            progress=sys.stderr,
        )
        return target, result
    raise AssertionError("unreachable")  # pragma: no cover


def format_result(target: str, result: LoadResult) -> str:
    """The human-readable report ``batcher bench`` prints."""
    ms = 1e3
    errors = ", ".join(f"{n} {kind}" for kind, n in sorted(result.errors.items()))
    lines = [
        f"target       {target}",
        f"requests     {result.requests} at concurrency {result.concurrency}, "
        f"{result.failed} failed{f' ({errors})' if errors else ''}",
        f"wall time    {result.seconds:.3f} s",
        f"throughput   {result.throughput:,.1f} requests/s",
        f"latency      p50 {ms * result.percentile(50):.3f} ms   "
        f"p95 {ms * result.percentile(95):.3f} ms   p99 {ms * result.percentile(99):.3f} ms   "
        f"max {ms * max(result.latencies, default=math.nan):.3f} ms",
        f"client CPU   {1e6 * result.cpu_seconds / result.requests:.1f} µs/request",
    ]
    return "\n".join(lines)
