"""Measuring one model: yardsticks first, then each contender at every load point."""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any

import anyio
import numpy as np
import openvino as ov

from . import physical
from .contenders import (
    SIZES,
    BatcherContender,
    Contender,
    ContenderSpec,
    Options,
    open_contender,
)
from .load import run_load
from .metrics import Mode, Point, summarize
from .progress import Progress
from .settings import Settings, point_seconds, setup_seconds
from .targets import evaluate
from .workloads import Sample, Workload

__all__ = ["line", "measure_model"]

SAMPLES = 64
#: Samples whose outputs each contender must reproduce before it is measured.
CHECKED_SAMPLES = 4


def line(point: Point) -> str:
    """One progress line for a measured point."""
    if point.mode == "closed":
        where = f"C={point.level:g}"
    else:  # a load factor, or an absolute rate for the no-op generator check
        where = f"{point.level:g}x" if point.level < 100 else f"{point.level:,.0f}/s"
    chunk = f" chunk {point.mean_chunk_size:.1f}" if point.mean_chunk_size else ""
    shed = f" shed {point.dropped}" if point.dropped else ""
    return (
        f"{point.model:<8} {point.contender:<17} {point.mode:<6} {where:<6} "
        f"{point.throughput:>9,.0f}/s  p50 {point.p50_ms:8.3f} ms  p99 {point.p99_ms:8.3f} ms"
        f"{chunk}{shed}"
    )


@dataclass(slots=True)
class _ModelRun:
    workload: Workload
    samples: list[Sample]
    references: list[Any]
    rates: dict[float, float]
    options: Options
    settings: Settings
    progress: Progress
    infos: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    points: list[Point] = dataclasses.field(default_factory=list)

    def failed(self, spec: ContenderSpec, exc: Exception, steps_left: int) -> None:
        # A contender this machine cannot run (automatic batching, typically) is a result.
        error = self.infos[spec.name]["error"] = f"{type(exc).__name__}: {exc}"
        self.progress.note(
            f"{self.workload.name:<8} {spec.name:<17} FAILED, recorded as the reason: {error}"
        )
        self.progress.skip(steps_left, steps_left * point_seconds(self.settings))


async def _open_checked(
    stack: contextlib.AsyncExitStack, spec: ContenderSpec, run: _ModelRun, core: ov.Core
) -> Contender | None:
    """Compile one contender and check its outputs; None (error recorded) if it cannot run."""
    s = run.settings
    info = run.infos[spec.name] = {"description": spec.description, "error": None}
    contender = open_contender(spec, run.workload, core, run.options)
    try:
        await stack.enter_async_context(contender)
        setup = contender.setup
        run.progress.step(
            setup_seconds(s, spec),
            f"{run.workload.name:<8} {spec.name:<17} ready in {setup.seconds:.2f} s "
            f"(compile {setup.compile_seconds:.2f} s, RSS {setup.rss_delta_mib:+.1f} MiB)",
        )
        diffs = [
            float(np.max(np.abs(await contender.infer(sample) - ref)))
            for sample, ref in zip(run.samples, run.references, strict=False)
        ]
        info["output_max_abs_diff"] = max(diffs)
    except Exception as exc:
        run.failed(spec, exc, len(s.callers) + len(s.load_factors))
        return None
    finally:
        info["setup"] = dataclasses.asdict(contender.setup)
    return contender


async def _measure_all(specs: list[ContenderSpec], run: _ModelRun, core: ov.Core) -> None:
    """Every contender at every load point, load point by load point.

    All contenders stay open and take turns at each load point (in a rotating order), so a
    change in the shared machine's load during the run hits them alike instead of whichever
    happened to run then.
    """
    s = run.settings
    name = run.workload.name
    loads: list[tuple[Mode, float, float]] = [("closed", c, 0.0) for c in s.callers]
    loads += [("open", f, r) for f, r in run.rates.items()]
    async with contextlib.AsyncExitStack() as stack:
        live: list[tuple[ContenderSpec, Contender]] = []
        for spec in specs:
            contender = await _open_checked(stack, spec, run, core)
            if contender is not None:
                live.append((spec, contender))
        for index, (mode, level, rate) in enumerate(loads):
            turn = index % len(live) if live else 0
            for spec, contender in live[turn:] + live[:turn]:
                try:
                    raw = await run_load(
                        contender.infer,
                        run.samples,
                        contender.counters,
                        s,
                        mode,
                        level,
                        rate,
                        s.seed + index,
                    )
                except Exception as exc:
                    run.failed(spec, exc, len(loads) - index - 1)
                    live.remove((spec, contender))
                    continue
                run.points.append(summarize(raw, name, spec.name, mode, level))
                run.progress.step(point_seconds(s), line(run.points[-1]))
        for spec, contender in live:
            if isinstance(contender, BatcherContender):
                run.infos[spec.name]["statistics"] = contender.statistics_summary()
    # Report contenders in the order asked for, whatever order they ran in.
    run.points.sort(key=lambda p: [c.name for c in specs].index(p.contender))


def _physical(
    core: ov.Core,
    workload: Workload,
    samples: list[Sample],
    s: Settings,
    progress: Progress,
    when: str,
) -> physical.PhysicalLimit:
    limit = physical.measure_physical_limit(core, workload, samples, SIZES, s.physical_s)
    sizes = ", ".join(f"{k}: {v:,.0f}" for k, v in limit.per_size.items())
    progress.step(
        s.physical_s,
        f"{workload.name:<8} physical limit ({when}) {limit.best:,.0f} samples/s at batch "
        f"{limit.best_size} ({sizes})",
    )
    return limit


def measure_model(
    workload: Workload,
    specs: list[ContenderSpec],
    core: ov.Core,
    s: Settings,
    progress: Progress,
) -> dict[str, Any]:
    """Yardsticks, then every contender at every load point: one model's ``results`` entry.

    The ``"_targets"`` key holds the evaluated targets (objects), for the caller to pop.
    """
    samples = workload.samples(SAMPLES, s.seed)
    limit = _physical(core, workload, samples, s, progress, "before")
    raw = physical.measure_raw_latency(core, workload, samples[0], s.latency_s)
    progress.step(
        s.latency_s,
        f"{workload.name:<8} raw batch-1 infer() {raw.throughput_hint * 1e3:.3f} ms (THROUGHPUT), "
        f"{raw.latency_hint * 1e3:.3f} ms (LATENCY)",
    )
    run = _ModelRun(
        workload=workload,
        samples=samples,
        references=physical.reference_outputs(core, workload, samples[:CHECKED_SAMPLES]),
        rates={f: f * limit.best for f in s.load_factors},
        options=Options(limit.best_size, s.auto_batch_timeout_ms, s.profile_budget_s),
        settings=s,
        progress=progress,
    )
    anyio.run(_measure_all, specs, run, core)
    contenders, points = run.infos, run.points
    # Measured again at the end: on a shared machine either may be depressed, and a capacity
    # is best estimated by the faster of the two. Open-loop rates used the first.
    after = _physical(core, workload, samples, s, progress, "after")
    reference = after if after.best > limit.best else limit
    errors = {name: info["error"] for name, info in contenders.items() if info["error"]}
    return {
        "description": workload.description,
        "physical_limit": {
            "per_size": {str(k): v for k, v in reference.per_size.items()},
            "best_size": reference.best_size,
            "samples_per_s": reference.best,
            "before_contenders": limit.best,
            "after_contenders": after.best,
            "infer_requests": reference.infer_requests,
        },
        "raw_batch1_latency_ms": {
            "throughput_hint": raw.throughput_hint * 1e3,
            "latency_hint": raw.latency_hint * 1e3,
        },
        "offered_rates": {f"{f:g}": r for f, r in run.rates.items()},
        "contenders": contenders,
        "points": [p.to_json() for p in points],
        "_targets": evaluate(workload.name, points, reference.best, raw.throughput_hint, errors),
    }
