"""``python -m benchmarks.strategies``: ``decompose``, ``pad`` and ``auto``, head to head.

One run of a load point moves by 10-20 % on a shared 2-core machine, more than the
differences between planning strategies. So each load point is measured in several rounds;
within a round the contenders run back to back, in an order that rotates from round to
round, so a change in the machine's load hits them alike. A point's figure is the median
over rounds, and the ratio ``auto`` / better-of-the-other-two comes with a bootstrap 95 %
interval, so "within noise" is a measured statement rather than a guess.

Open-loop rates are fractions of the best closed-loop throughput measured first, in the
same run. The open-loop generator costs CPU on the same cores, so the upper points may
already shed load; shed arrivals are recorded with each point.

The best fixed strategy at a point is picked from the same rounds it is compared with,
which leans the ratios slightly towards "behind".

Bootstrap intervals over a handful of rounds may be too narrow, so an A/A control checks
them: a second ``decompose`` batcher, identical to the first, runs in every round beside
the others. Its ratio to its twin says how far two identical contenders stray at that
point (the A/A band), and the report counts how often the control's own interval would
have called identical contenders different. A gap beyond the tolerance is *ahead* or
*behind* only when ``auto``'s interval excludes parity and the gap is wider than the A/A
band; a gap whose interval excludes parity but is no wider than the band is reported
apart, as *noise (A/A)*, so a reader can see every point that depends on the control.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import openvino as ov

from .contenders import CONTENDERS, BatcherContender, ContenderSpec, Options
from .load import run_load
from .machine import describe, headline
from .metrics import Mode, Point, summarize
from .progress import Progress
from .workloads import WORKLOADS, Workload

__all__ = ["main"]

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
STRATEGIES = ("batcher-decompose", "batcher-pad", "batcher-auto")
FIXED = STRATEGIES[:2]
AUTO = STRATEGIES[2]
#: The A/A control: a second, identical ``decompose`` batcher.
TWIN = "batcher-decompose-twin"
TWIN_OF = "batcher-decompose"
CONTENDER_NAMES = (*STRATEGIES, TWIN)
#: Where auto's median may differ from the better fixed strategy's and still count as level.
THROUGHPUT_TOLERANCE = 0.05
P99_TOLERANCE = 0.10
BOOTSTRAP_RESAMPLES = 2000


@dataclass(frozen=True, slots=True)
class StrategySettings:
    rounds: int
    warmup_s: float
    window_s: float
    callers: tuple[int, ...]
    #: Open-loop offered load as fractions of the best closed-loop throughput measured.
    load_factors: tuple[float, ...]
    profile_budget_s: float
    drain_timeout_s: float
    max_outstanding: int
    seed: int


FULL = StrategySettings(
    # A multiple of the four contenders, so that each takes every place in the order alike.
    rounds=8,
    warmup_s=0.2,
    window_s=1.0,
    callers=(1, 2, 4, 8, 16, 32, 64, 256),
    load_factors=(0.1, 0.3, 0.5, 0.7, 0.85),
    profile_budget_s=1.0,
    drain_timeout_s=10.0,
    max_outstanding=2048,
    seed=0,
)
QUICK = dataclasses.replace(
    FULL,
    rounds=2,
    warmup_s=0.05,
    window_s=0.15,
    callers=(1, 8, 64),
    load_factors=(0.5,),
    profile_budget_s=0.1,
    drain_timeout_s=2.0,
    max_outstanding=256,
)


def _point_seconds(s: StrategySettings) -> float:
    return s.warmup_s + s.window_s + 0.05


@dataclass(frozen=True, slots=True)
class Comparison:
    """``auto`` against the better of ``decompose`` and ``pad`` at one load point."""

    mode: Mode
    level: float
    best_throughput_by: str
    throughput_ratio: float
    throughput_ci: tuple[float, float]
    best_p99_by: str
    p99_ratio: float
    p99_ci: tuple[float, float]
    #: The A/A control's ratio to its identical twin, with its interval: how far two equal
    #: contenders stray at this point. ``None`` for runs without the control.
    aa_throughput_ratio: float | None = None
    aa_throughput_ci: tuple[float, float] | None = None
    aa_p99_ratio: float | None = None
    aa_p99_ci: tuple[float, float] | None = None

    @property
    def throughput_verdict(self) -> str:
        band = _aa_band(self.aa_throughput_ci)
        return _verdict(self.throughput_ratio, self.throughput_ci, THROUGHPUT_TOLERANCE, True, band)

    @property
    def p99_verdict(self) -> str:
        return _verdict(self.p99_ratio, self.p99_ci, P99_TOLERANCE, False, _aa_band(self.aa_p99_ci))

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["throughput_verdict"] = self.throughput_verdict
        data["p99_verdict"] = self.p99_verdict
        return data


VERDICTS = ("ahead", "level", "noise", "noise (A/A)", "behind")


def _aa_band(ci: tuple[float, float] | None) -> float:
    """How far (a factor >= 1, either way) two identical contenders' ratio may stray: the
    farther end of the A/A control's interval. 1 when there was no control."""
    if ci is None:
        return 1.0
    if ci[0] <= 0:
        return math.inf  # one twin measured nothing: the control bounds nothing
    return max(ci[1], 1.0 / ci[0], 1.0)


def _verdict(
    ratio: float, ci: tuple[float, float], tolerance: float, higher: bool, band: float = 1.0
) -> str:
    """``level`` within tolerance. Beyond it, either way: ``noise`` when the interval still
    reaches parity, ``noise (A/A)`` when it does not but the gap is no wider than the A/A
    ``band``, else ``ahead`` or ``behind``."""
    gain = ratio - 1.0 if higher else 1.0 - ratio
    if -tolerance <= gain <= tolerance:
        return "level"
    if ci[0] <= 1.0 <= ci[1]:
        return "noise"
    if ratio <= 0 or math.isinf(ratio):
        return "ahead" if (ratio > 0) == higher else "behind"  # one side measured nothing
    if max(ratio, 1.0 / ratio) <= band:
        return "noise (A/A)"
    return "ahead" if gain > 0 else "behind"


def _aa_misfires(comparisons: Sequence[dict[str, Any]], key: str, tolerance: float) -> int:
    """Points where the control's own interval excludes parity and its ratio is beyond the
    tolerance: where the interval alone would call two identical contenders different."""
    count = 0
    for c in comparisons:
        ratio, ci = c.get(f"aa_{key}_ratio"), c.get(f"aa_{key}_ci")
        if ratio is not None and ci is not None:
            count += abs(ratio - 1.0) > tolerance and not ci[0] <= 1.0 <= ci[1]
    return count


def _median_ratio_ci(
    auto: Sequence[float], best: Sequence[float], rng: np.random.Generator
) -> tuple[float, tuple[float, float]]:
    """Median(auto) / median(best) and its bootstrap 95 % interval over rounds.

    Rounds are resampled as pairs (both lists are in round order): the strategies ran back
    to back within a round, so the machine's drift between rounds cancels in the ratio.
    """
    a = np.asarray(auto, dtype=float)
    b = np.asarray(best, dtype=float)
    ratio = float(np.median(a) / np.median(b))
    rounds = rng.integers(0, a.size, (BOOTSTRAP_RESAMPLES, a.size))
    ra = np.median(a[rounds], axis=1)
    rb = np.median(b[rounds], axis=1)
    low, high = np.percentile(ra / rb, [2.5, 97.5])
    return ratio, (float(low), float(high))


def compare(points: Sequence[Point], seed: int = 0) -> list[Comparison]:
    """One comparison per load point that every strategy was measured at."""
    rng = np.random.default_rng(seed)
    by_point: dict[tuple[Mode, float], dict[str, list[Point]]] = {}
    for p in points:
        by_point.setdefault((p.mode, p.level), {}).setdefault(p.contender, []).append(p)
    rows = []
    for (mode, level), runs in by_point.items():
        if not all(runs.get(name) for name in STRATEGIES):
            continue

        def median(name: str, key: str, runs: dict[str, list[Point]] = runs) -> float:
            return float(statistics.median(getattr(p, key) for p in runs[name]))

        fast = max(FIXED, key=lambda name: median(name, "throughput"))
        tight = min(FIXED, key=lambda name: median(name, "p99_ms"))
        rate, rate_ci = _median_ratio_ci(
            [p.throughput for p in runs[AUTO]], [p.throughput for p in runs[fast]], rng
        )
        p99, p99_ci = _median_ratio_ci(
            [p.p99_ms for p in runs[AUTO]], [p.p99_ms for p in runs[tight]], rng
        )
        aa: dict[str, Any] = {}
        if runs.get(TWIN):
            for key, field in (("throughput", "throughput"), ("p99", "p99_ms")):
                ratio, ci = _median_ratio_ci(
                    [getattr(p, field) for p in runs[TWIN]],
                    [getattr(p, field) for p in runs[TWIN_OF]],
                    rng,
                )
                aa[f"aa_{key}_ratio"], aa[f"aa_{key}_ci"] = ratio, ci
        rows.append(Comparison(mode, level, fast, rate, rate_ci, tight, p99, p99_ci, **aa))
    rows.sort(key=lambda r: (r.mode, r.level))
    return rows


def _line(p: Point, round_: int) -> str:
    where = f"C={p.level:g}" if p.mode == "closed" else f"{p.level:g}x"
    return (
        f"{p.model:<4} round {round_} {p.contender:<22} {p.mode:<6} {where:<6} "
        f"{p.throughput:>8,.0f}/s  p50 {p.p50_ms:7.3f} ms  p99 {p.p99_ms:7.3f} ms  "
        f"chunk {p.mean_chunk_size or 0:.1f}" + (f"  shed {p.dropped}" if p.dropped else "")
    )


async def _measure_model(
    workload: Workload, s: StrategySettings, core: ov.Core, progress: Progress
) -> dict[str, Any]:
    samples = workload.samples(64, s.seed)
    options = Options(auto_batch_size=0, auto_batch_timeout_ms=0, profile_budget=s.profile_budget_s)
    specs = [c for c in CONTENDERS if c.name in STRATEGIES]
    twin_of = next(c for c in specs if c.name == TWIN_OF)
    specs.append(
        ContenderSpec(TWIN, twin_of.kind, f"{twin_of.description}: A/A control", twin_of.config)
    )
    points: list[Point] = []
    async with contextlib.AsyncExitStack() as stack:
        live = []
        for spec in specs:
            contender = BatcherContender(spec, workload, core, options)
            await stack.enter_async_context(contender)
            progress.note(
                f"{workload.name:<4} {spec.name} ready in {contender.setup.seconds:.2f} s"
            )
            live.append(contender)

        async def measure(mode: Mode, level: float, rate: float, seed: int) -> None:
            for round_ in range(s.rounds):
                turn = round_ % len(live)
                for contender in live[turn:] + live[:turn]:
                    raw = await run_load(
                        contender.infer, samples, contender.counters, s, mode, level, rate, seed
                    )
                    point = summarize(raw, workload.name, contender.spec.name, mode, level)
                    points.append(point)
                    progress.step(_point_seconds(s), _line(point, round_))

        for index, callers in enumerate(s.callers):
            await measure("closed", callers, 0.0, s.seed + index)
        # The open-loop scale: the best median throughput any strategy reached closed-loop.
        capacity = max(
            statistics.median(
                p.throughput
                for p in points
                if p.contender == name and p.mode == "closed" and p.level == callers
            )
            for name in STRATEGIES
            for callers in s.callers
        )
        rates = {f: f * capacity for f in s.load_factors}
        for index, (factor, rate) in enumerate(rates.items()):
            await measure("open", factor, rate, s.seed + 100 + index)
        costs = next(c for c in live if c.spec.name == AUTO).statistics_summary()
    return {
        "description": workload.description,
        "capacity": capacity,
        "offered_rates": {f"{f:g}": r for f, r in rates.items()},
        "auto_cost_table_ms": costs["cost_table_ms"],
        "auto_shared_cost_table_ms": costs["shared_cost_table_ms"],
        "auto_overhead_ms": costs["overhead_ms"],
        "points": [p.to_json() for p in points],
        "comparisons": [c.to_json() for c in compare(points, s.seed)],
    }


def _medians(model: dict[str, Any], name: str, mode: str, key: str) -> dict[float, float]:
    values: dict[float, list[float]] = {}
    for p in model["points"]:
        if p["contender"] == name and p["mode"] == mode:
            values.setdefault(p["level"], []).append(p[key])
    return {level: statistics.median(v) for level, v in sorted(values.items())}


def _markdown(results: dict[str, Any]) -> str:
    s = results["settings"]
    m = results["machine"]
    lines = [
        "# decompose vs pad vs auto",
        "",
        f"{headline(m)}; {results['seconds']:.0f} s. Batch sizes 1..32. "
        f"Each point: {s['rounds']} rounds of {s['window_s']:g} s (after {s['warmup_s']:g} s "
        "warm-up) per strategy, the strategies taking turns in a rotating order; figures "
        "are medians over rounds. Ratios are auto / the better of decompose and pad at that "
        "point (throughput: higher is better; p99: lower is better), with a bootstrap 95 % "
        f"interval. Verdicts: *level* within {THROUGHPUT_TOLERANCE:.0%} (throughput) or "
        f"{P99_TOLERANCE:.0%} (p99). Beyond that, either way: *noise* when the interval still "
        "reaches parity; *noise (A/A)* when it does not, but the gap is no wider than the A/A "
        "band; else *ahead* or *behind*. The A/A band is the farther end of the interval of "
        "an A/A control's ratio to its twin: a second decompose batcher, identical to the "
        "first, run in the same rounds. It shows how far two equal contenders stray at that "
        "point.",
        "",
    ]
    for name, model in results["models"].items():
        lines += [
            f"## {name}: {model['description']}",
            "",
            f"Best closed-loop throughput (the open-loop scale): {model['capacity']:,.0f} "
            "samples/s. " + _cost_line(model),
            "",
            "| load | decompose /s | pad /s | auto /s | auto/best | A/A | verdict "
            "| decompose p99 ms | pad p99 ms | auto p99 ms | auto/best | A/A | verdict |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        med = {
            (n, m, k): _medians(model, n, m, k)
            for n in STRATEGIES
            for m in ("closed", "open")
            for k in ("throughput", "p99_ms")
        }
        for c in model["comparisons"]:
            mode, level = c["mode"], c["level"]
            where = f"{int(level)} callers" if mode == "closed" else f"open {level:g}x"
            rate = [f"{med[(n, mode, 'throughput')][level]:,.0f}" for n in STRATEGIES]
            p99 = [f"{med[(n, mode, 'p99_ms')][level]:.3g}" for n in STRATEGIES]
            rci, pci = c["throughput_ci"], c["p99_ci"]
            lines.append(
                f"| {where} | {' | '.join(rate)} | {c['throughput_ratio']:.3f} "
                f"[{rci[0]:.2f}, {rci[1]:.2f}] | {_band_text(c.get('aa_throughput_ci'))} "
                f"| {c['throughput_verdict']} | {' | '.join(p99)} "
                f"| {c['p99_ratio']:.3f} [{pci[0]:.2f}, {pci[1]:.2f}] "
                f"| {_band_text(c.get('aa_p99_ci'))} | {c['p99_verdict']} |"
            )
        lines.append("")
    lines += ["## Summary", "", *summary_lines(results), ""]
    return "\n".join(lines)


def _band_text(ci: list[float] | None) -> str:
    if ci is None:
        return "-"
    return f"x{_aa_band((ci[0], ci[1])):.2f}"


def _cost_line(model: dict[str, Any]) -> str:
    idle = model["auto_cost_table_ms"]
    shared = model.get("auto_shared_cost_table_ms") or idle
    figures = ", ".join(f"{k}: {v:.3f} / {shared[k]:.3f}" for k, v in idle.items())
    overhead = model.get("auto_overhead_ms")
    return f"auto's cost table at the end (ms per size, idle / shared): {figures}" + (
        f"; host overhead per chunk {overhead:.3f} ms." if overhead is not None else "."
    )


def summary_lines(results: dict[str, Any]) -> list[str]:
    """Per model and figure: how many points auto is at each verdict, and how often the
    A/A control's own interval called two identical contenders different."""
    out = []
    for name, model in results["models"].items():
        comparisons = model["comparisons"]
        for key, tolerance in (("throughput", THROUGHPUT_TOLERANCE), ("p99", P99_TOLERANCE)):
            verdicts = [c[f"{key}_verdict"] for c in comparisons]
            counts = ", ".join(f"{v} {verdicts.count(v)}" for v in VERDICTS)
            ratios = [c[f"{key}_ratio"] for c in comparisons]
            worst = min(ratios) if key == "throughput" else max(ratios)
            line = f"- {name} {key}: {counts} of {len(verdicts)} points; worst ratio {worst:.3f}"
            if any(c.get(f"aa_{key}_ci") for c in comparisons):
                misfires = _aa_misfires(comparisons, key, tolerance)
                line += (
                    f"; the A/A control's own interval excluded parity beyond the tolerance "
                    f"at {misfires} of {len(comparisons)} points"
                )
            out.append(line + ".")
    return out


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = results["models"]
    fig, axes = plt.subplots(len(models), 3, figsize=(17, 4.5 * len(models)), squeeze=False)
    panels = (("closed", "throughput"), ("closed", "p99_ms"), ("open", "p99_ms"))
    for row, (name, model) in zip(axes, models.items(), strict=True):
        for ax, (mode, key) in zip(row, panels, strict=True):
            for strategy in STRATEGIES:
                series = _medians(model, strategy, mode, key)
                lw = 2.5 if strategy == AUTO else 1.3
                ax.plot(list(series), list(series.values()), marker="o", ms=3, lw=lw,
                        label=strategy.removeprefix("batcher-"))  # fmt: skip
            what = "samples/s" if key == "throughput" else "p99 ms"
            where = "callers (closed loop)" if mode == "closed" else "load x saturated (open loop)"
            ax.set_title(f"{name}: {what}, median of {results['settings']['rounds']} rounds")
            ax.set_xlabel(where)
            ax.grid(True, alpha=0.3)
            if mode == "closed":
                ax.set_xscale("log", base=2)
            if key == "p99_ms":
                ax.set_yscale("log")
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.strategies",
        description="decompose, pad and auto in interleaved rounds; JSON, markdown, PNG.",
    )
    parser.add_argument("--quick", action="store_true", help="tiny durations, few load points")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder")
    parser.add_argument("--rounds", type=int, help="rounds per load point")
    parser.add_argument(
        "--models", nargs="+", choices=sorted(WORKLOADS), default=list(WORKLOADS), metavar="M"
    )
    parser.add_argument(
        "--from-json",
        type=Path,
        metavar="FILE",
        help="measure nothing: recompute verdicts and rewrite the report from a saved run",
    )
    args = parser.parse_args(argv)
    if args.from_json:
        results = json.loads(args.from_json.read_text())
        for model in results["models"].values():
            points = [Point(**p) for p in model["points"]]
            model["comparisons"] = [
                c.to_json() for c in compare(points, results["settings"]["seed"])
            ]
        _write(results, args.out)
        return 0
    s = QUICK if args.quick else FULL
    if args.rounds:
        s = dataclasses.replace(s, rounds=args.rounds)
    per_model = (len(s.callers) + len(s.load_factors)) * s.rounds * len(CONTENDER_NAMES)
    progress = Progress(
        per_model * len(args.models), per_model * len(args.models) * _point_seconds(s)
    )
    core = ov.Core()
    machine = describe(core)
    models = {}
    for name in args.models:
        models[name] = anyio.run(_measure_model, WORKLOADS[name], s, core, progress)
    results = {
        "seconds": progress.elapsed,
        "machine": machine,
        "settings": dataclasses.asdict(s),
        "models": models,
    }
    _write(results, args.out)
    return 0


def _write(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "strategies.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "strategies.md").write_text(_markdown(results))
    _plot(results, out / "strategies.png")
    for text in summary_lines(results):
        print(text)


if __name__ == "__main__":
    sys.exit(main())
