"""`batcher demo`: the quickstart on a model built in code, with figures a user can check."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import anyio
import numpy as np
import openvino as ov

from . import models
from ._config import BatcherConfig
from ._core import Batcher

__all__ = ["register", "run_demo"]

MODELS: dict[str, Callable[[], ov.Model]] = {"mlp": models.mlp, "cnn": models.cnn}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo", help="serve many concurrent callers from a built-in model and report figures"
    )
    parser.add_argument("--model", choices=sorted(MODELS), default="cnn")
    parser.add_argument("--callers", type=int, default=64, help="concurrent callers")
    parser.add_argument("--requests", type=int, default=2000, help="requests in all")
    parser.add_argument(
        "--batch-sizes", default="1,2,4,8,16,32", help='comma-separated sizes, or "dynamic"'
    )
    parser.add_argument("--strategy", choices=("decompose", "pad", "auto"), default="auto")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    code: int = anyio.run(run_demo, args)
    return code


async def run_demo(args: argparse.Namespace) -> int:
    model = MODELS[args.model]()
    sizes: Any = (
        "dynamic"
        if args.batch_sizes == "dynamic"
        else tuple(int(s) for s in args.batch_sizes.split(","))
    )
    config = BatcherConfig(batch_sizes=sizes, strategy=args.strategy)
    shape = tuple(int(d.get_length()) for d in list(model.input(0).get_partial_shape())[1:])
    rng = np.random.default_rng(0)
    samples = rng.standard_normal((256, *shape)).astype(np.float32)

    print(f"model {args.model}: one sample is {shape}; batch sizes {sizes}, {args.strategy}")
    baseline = await anyio.to_thread.run_sync(_batch1_seconds, model, samples[:64])
    print(f"one batch-1 inference, no batcher: {baseline * 1e3:.3f} ms")

    latencies: list[float] = []
    results: dict[int, Any] = {}
    async with Batcher(model, config) as batcher:
        stats = batcher.statistics()
        print(
            f"compiled and warmed batch sizes {sizes} in {stats.compile_seconds:.2f} s; "
            f"{stats.slots} device slot(s)"
        )
        per_caller = args.requests // args.callers

        async def caller(index: int) -> None:
            for k in range(per_caller):
                i = (index * per_caller + k) % len(samples)
                started = time.perf_counter()
                results[i] = await batcher.submit(samples[i])
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for index in range(args.callers):
                tg.start_soon(caller, index)
        elapsed = time.perf_counter() - started
        stats = batcher.statistics()

    done = len(latencies)
    cuts = statistics.quantiles(latencies, n=100)
    print(f"{done} requests from {args.callers} concurrent callers in {elapsed:.2f} s")
    print(
        f"throughput {done / elapsed:,.0f} samples/s "
        f"({done / elapsed * baseline:.1f}x one-at-a-time batch-1)"
    )
    print(f"latency p50 {cuts[49] * 1e3:.2f} ms, p99 {cuts[98] * 1e3:.2f} ms")
    chunks = ", ".join(f"{size}: {n}" for size, n in sorted(stats.chunks_per_size.items()))
    print(f"inferences per batch size: {chunks}; mean chunk {stats.mean_chunk_size:.1f} rows")
    print(
        f"submitted {stats.submitted}, completed {stats.completed}, failed {stats.failed}, "
        f"cancelled {stats.cancelled}"
    )
    worst = await anyio.to_thread.run_sync(_max_difference, model, samples, results)
    print(f"largest difference from batch-1 results over {len(results)} samples: {worst:.2e}")
    return 0 if worst < 1e-3 and stats.accounted else 1


def _compiled_batch1(model: ov.Model) -> Any:
    copy = model.clone()
    copy.reshape({port: [1, *list(port.get_partial_shape())[1:]] for port in copy.inputs})
    return ov.Core().compile_model(copy, "CPU", {"PERFORMANCE_HINT": "LATENCY"})


def _batch1_seconds(model: ov.Model, samples: np.ndarray[Any, Any]) -> float:
    compiled = _compiled_batch1(model)
    request = compiled.create_infer_request()
    request.infer({0: samples[:1]})
    times = []
    for sample in samples:
        started = time.perf_counter()
        request.infer({0: sample[None]})
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _max_difference(
    model: ov.Model, samples: np.ndarray[Any, Any], results: dict[int, Any]
) -> float:
    compiled = _compiled_batch1(model)
    worst = 0.0
    for i, result in results.items():
        expected = compiled({0: samples[i][None]})[0][0]
        worst = max(worst, float(np.abs(expected - result).max()))
    return worst
