"""`batcher tune MODEL`: profile candidate batch sizes and recommend a configuration."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from ._config import BatcherConfig, Strategy
from ._costs import CostTable, plausible_shape
from ._model import compile_for_batch, read_model
from .server import load_model

__all__ = ["SizeProfile", "recommend", "register"]


@dataclass(frozen=True, slots=True)
class SizeProfile:
    """What one compiled batch size costs on this device."""

    size: int
    latency: float  # median seconds of one inference
    throughput: float  # samples/s with every stream busy
    requests: int  # infer requests that kept every stream busy
    compile_seconds: float
    memory_bytes: int  # resident memory added by compiling this size


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "tune", help="profile candidate batch sizes and write a recommended config"
    )
    parser.add_argument(
        "model", help="an IR (.xml) or ONNX path, or a built-in: mlp, cnn, identity, two_heads"
    )
    parser.add_argument("--candidates", default="1,2,4,8,16,32,64")
    parser.add_argument(
        "--latency-target", type=float, default=0.05, help="seconds one chunk may take at most"
    )
    parser.add_argument(
        "--memory-budget", type=float, default=2048.0, help="MiB all compiled sizes may use"
    )
    parser.add_argument("--device", default="CPU")
    parser.add_argument("--seconds", type=float, default=0.5, help="measuring time per size")
    parser.add_argument("--out", default="batcher.toml", help="TOML config to write")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    candidates = sorted({int(s) for s in args.candidates.split(",")})
    try:
        source = load_model(args.model)
    except ValueError as exc:
        print(f"batcher tune: {exc}", file=sys.stderr)
        return 2
    core = ov.Core()
    model = read_model(core, source)
    profiles = []
    print(f"profiling {len(candidates)} batch sizes on {args.device} ...", file=sys.stderr)
    for size in candidates:
        profiles.append(profile_size(core, model, size, args.device, args.seconds))
        p = profiles[-1]
        print(
            f"  size {size:>4}: {p.latency * 1e3:8.3f} ms  {p.throughput:10,.0f} samples/s",
            file=sys.stderr,
        )
    sizes, strategy, reasons = recommend(profiles, args.latency_target, args.memory_budget * 2**20)
    print(render_table(profiles, sizes))
    for reason in reasons:
        print(f"- {reason}")
    out = Path(args.out)
    costs_path = out.with_suffix(".costs.json")
    chosen = [p for p in profiles if p.size in sizes]
    idle = plausible_shape({p.size: p.latency for p in chosen})
    # With every request busy, each chunk holds its request for requests x size / rate.
    shared = plausible_shape({p.size: p.requests * p.size / p.throughput for p in chosen}, idle)
    CostTable(idle, source="file", shared_seconds=shared).save(costs_path)
    config = BatcherConfig(
        batch_sizes=sizes, strategy=strategy, device=args.device, cost_table_path=str(costs_path)
    )
    out.write_text(config.to_toml())
    print(f"wrote {out} (batch_sizes {list(sizes)}, strategy {strategy!r}) and {costs_path}")
    return 0


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def profile_size(
    core: ov.Core, model: ov.Model, size: int, device: str, seconds: float
) -> SizeProfile:
    before = _resident_bytes()
    started = time.perf_counter()
    compiled = compile_for_batch(core, model, size, device, {"PERFORMANCE_HINT": "THROUGHPUT"})
    compile_seconds = time.perf_counter() - started
    request = compiled.create_infer_request()
    for port in compiled.inputs:
        tensor = request.get_tensor(port)
        tensor.data[...] = np.zeros(tensor.shape, tensor.data.dtype)
    request.infer()
    memory = max(0, _resident_bytes() - before)
    times: list[float] = []
    deadline = time.perf_counter() + seconds / 2
    while len(times) < 3 or time.perf_counter() < deadline:
        t = time.perf_counter()
        request.infer()
        times.append(time.perf_counter() - t)
    requests = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    queue = ov.AsyncInferQueue(compiled, requests)
    for i in range(requests):
        for port in compiled.inputs:
            queue[i].get_tensor(port).data[...] = 0
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds / 2 or done < requests:
        queue.start_async()
        done += 1
    queue.wait_all()
    throughput = done * size / (time.perf_counter() - started)
    return SizeProfile(
        size, statistics.median(times), throughput, requests, compile_seconds, memory
    )


def recommend(
    profiles: list[SizeProfile], latency_target: float, memory_budget: float
) -> tuple[tuple[int, ...], Strategy, list[str]]:
    """A batch-size set and strategy: the sizes worth compiling within both budgets.

    A size is worth compiling when it fits the latency target and either serves more
    samples per second than every smaller size kept so far, or is 1 (which lets any count be
    split exactly). Sizes are added smallest first while the memory budget allows.
    """
    reasons = []
    kept: list[SizeProfile] = []
    memory = 0.0
    for p in sorted(profiles, key=lambda p: p.size):
        if p.latency > latency_target:
            reasons.append(
                f"size {p.size} left out: {p.latency * 1e3:.2f} ms exceeds the latency target"
            )
            continue
        if memory + p.memory_bytes > memory_budget:
            reasons.append(f"size {p.size} left out: the memory budget is spent")
            continue
        best = max((k.throughput for k in kept), default=0.0)
        if p.size != 1 and p.throughput < best * 1.02:
            reasons.append(
                f"size {p.size} left out: {p.throughput:,.0f} samples/s is no gain over {best:,.0f}"
            )
            continue
        kept.append(p)
        memory += p.memory_bytes
    if not kept:
        smallest = min(profiles, key=lambda p: p.size)
        kept = [smallest]
        reasons.append(f"nothing fits the budgets; falling back to size {smallest.size}")
    sizes = tuple(p.size for p in kept)
    # Costs are rarely proportional to rows; the cost-based planner exploits that, and it
    # never plans worse than exact splitting or padding under the measured table.
    strategy: Strategy = "auto" if 1 in sizes else "pad"
    reasons.append(f"strategy {strategy!r}: plans with the measured cost of each size")
    return sizes, strategy, reasons


def render_table(profiles: list[SizeProfile], chosen: tuple[int, ...]) -> str:
    lines = [
        "| size | latency ms | samples/s | compile s | memory MiB | kept |",
        "|---:|---:|---:|---:|---:|:---:|",
    ]
    for p in profiles:
        lines.append(
            f"| {p.size} | {p.latency * 1e3:.3f} | {p.throughput:,.0f} | "
            f"{p.compile_seconds:.2f} | {p.memory_bytes / 2**20:.1f} | "
            f"{'yes' if p.size in chosen else ''} |"
        )
    return "\n".join(lines)
