"""``python -m benchmarks``: measure every contender on every model, write the results.

The run is sequential and in one process, so every contender sees the same machine state
as far as a shared machine allows; figures are only compared within one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import openvino as ov

from . import physical, plots, report
from .contenders import CONTENDERS, Options
from .machine import describe
from .measure import line, measure_model
from .metrics import Point
from .overhead import measure_overhead
from .progress import Progress
from .settings import FULL, QUICK, point_seconds, setup_seconds
from .targets import evaluate_overhead
from .workloads import IDENTITY, WORKLOADS

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Measure the Batcher against the alternatives; write JSON, markdown, PNGs.",
    )
    parser.add_argument("--quick", action="store_true", help="tiny durations, few load points")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder")
    parser.add_argument(
        "--models", nargs="+", choices=sorted(WORKLOADS), default=list(WORKLOADS), metavar="M"
    )
    parser.add_argument(
        "--contenders",
        nargs="+",
        choices=[c.name for c in CONTENDERS],
        default=[c.name for c in CONTENDERS],
        metavar="C",
        help="subset to run (targets needing a missing one are reported n/a)",
    )
    parser.add_argument("--window", type=float, help="seconds measured per load point")
    parser.add_argument("--no-overhead", action="store_true", help="skip the identity run")
    parser.add_argument("--no-plots", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    s = QUICK if args.quick else FULL
    if args.window:
        s = dataclasses.replace(s, window_s=args.window)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    specs = [c for c in CONTENDERS if c.name in args.contenders]
    workloads = [WORKLOADS[m] for m in args.models]
    overhead_points = 0 if args.no_overhead else 2 * len(s.overhead_callers) + 1
    per_model_points = len(specs) * (len(s.callers) + len(s.load_factors))
    steps = len(workloads) * (3 + len(specs) + per_model_points) + overhead_points
    planned = len(workloads) * (
        2 * s.physical_s
        + s.latency_s
        + sum(setup_seconds(s, c) for c in specs)
        + per_model_points * point_seconds(s)
    ) + overhead_points * point_seconds(s)
    progress = Progress(steps, planned)
    progress.note(f"{steps} steps, about {planned / 60:.1f} min planned; results to {out}")

    core = ov.Core()
    # Load the CPU plugin now so its one-off memory is not charged to the first contender.
    physical.reference_outputs(core, IDENTITY, IDENTITY.samples(1, 0))
    started = time.perf_counter()
    results: dict[str, Any] = {
        "meta": describe(core),
        "settings": dataclasses.asdict(s),
        "contenders": {c.name: c.description for c in specs},
        "models": {},
    }
    targets = []
    open_rates: list[float] = []
    for workload in workloads:
        model = measure_model(workload, specs, core, s, progress)
        targets.extend(model.pop("_targets"))
        open_rates.extend(model["offered_rates"].values())
        results["models"][workload.name] = model
    if not args.no_overhead:
        options = Options(1, s.auto_batch_timeout_ms, s.profile_budget_s)

        def on_point(point: Point) -> None:
            progress.step(point_seconds(s), line(point))

        overhead = anyio.run(
            measure_overhead,
            core,
            list(s.overhead_callers),
            s.warmup_s,
            s.window_s,
            options,
            s.seed,
            max(open_rates, default=1000.0),
            s.max_outstanding,
            on_point,
        )
        results["scheduler_overhead"] = overhead.to_json()
        targets.append(evaluate_overhead(overhead.best.throughput))
    results["targets"] = [t.to_json() for t in targets]
    results["elapsed_s"] = time.perf_counter() - started
    report.write(results, out)
    if not args.no_plots:
        plots.plot(results, out)
    progress.note(f"wrote {out / 'results.json'}, results.md and plots")
    for t in targets:
        ratio = "-" if t.ratio is None else f"{t.ratio:.3f}"
        status = {True: "met", False: "MISSED", None: "n/a"}[t.met]
        print(f"  {status:<6} {t.model:<8} {t.description}: ratio {ratio} {t.note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
