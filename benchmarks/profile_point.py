"""Run one contender at one load point for a while, to profile it from outside.

    py-spy record -o profile.svg -- python -m benchmarks.profile_point mlp batcher-decompose \
        --closed 64 --seconds 10

Prints the point's figures at the end; the workload, data and contender are exactly those
of the full benchmark.
"""

from __future__ import annotations

import argparse
import sys

import anyio
import openvino as ov

from . import physical
from .contenders import CONTENDERS, SIZES, Options, open_contender
from .load import closed_loop, open_loop
from .metrics import summarize
from .workloads import IDENTITY, WORKLOADS


async def _run(args: argparse.Namespace) -> None:
    workload = IDENTITY if args.model == "identity" else WORKLOADS[args.model]
    spec = next(c for c in CONTENDERS if c.name == args.contender)
    core = ov.Core()
    samples = workload.samples(64, 0)
    best_size = args.auto_batch_size
    rate = 0.0
    if args.open is not None:
        limit = physical.measure_physical_limit(core, workload, samples, SIZES, 3.0)
        best_size, rate = limit.best_size, args.open * limit.best
    options = Options(best_size, 1, 1.0)
    async with open_contender(spec, workload, core, options) as contender:
        if args.open is None:
            raw = await closed_loop(
                contender.infer, samples, args.closed, 0.5, args.seconds, contender.counters, 10
            )
            point = summarize(raw, workload.name, spec.name, "closed", args.closed)
        else:
            raw = await open_loop(
                contender.infer, samples, rate, 0.5, args.seconds, contender.counters, 10, 2048, 0
            )
            point = summarize(raw, workload.name, spec.name, "open", args.open)
    print(point)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_point")
    parser.add_argument("model", choices=[*WORKLOADS, "identity"])
    parser.add_argument("contender", choices=[c.name for c in CONTENDERS])
    load = parser.add_mutually_exclusive_group()
    load.add_argument("--closed", type=int, default=64, help="callers (default)")
    load.add_argument("--open", type=float, help="offered load, fraction of physical limit")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--auto-batch-size", type=int, default=8)
    anyio.run(_run, parser.parse_args())
    return 0


if __name__ == "__main__":
    sys.exit(main())
