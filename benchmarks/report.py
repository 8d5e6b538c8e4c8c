"""Render ``results.json`` (built by ``__main__``) as the markdown report.

Run as ``python -m benchmarks.report DIR`` to re-render ``DIR/results.md`` from
``DIR/results.json`` without measuring again.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .machine import headline

__all__ = ["render", "write"]


def _num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, int) or abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return [*lines, ""]


def _status(met: bool | None) -> str:
    return {True: "met", False: "**missed**", None: "n/a"}[met]


def _targets(results: dict[str, Any]) -> list[str]:
    rows = []
    for t in results["targets"]:
        op = ">=" if t["higher_is_better"] else "<="
        rows.append(
            [
                t["model"],
                t["description"],
                _num(t["value"], 4),
                _num(t["reference"], 4),
                _num(t["ratio"]),
                f"{op} {t['threshold']:g}",
                _status(t["met"]),
                t["note"],
            ]
        )
    header = ["model", "target", "measured", "reference", "ratio", "need", "status", "note"]
    return ["## Targets", "", *_table(header, rows)]


def _points(model: dict[str, Any], contender: str) -> list[dict[str, Any]]:
    return [p for p in model["points"] if p["contender"] == contender]


def _headline(name: str, model: dict[str, Any]) -> list[str]:
    limit = model["physical_limit"]["samples_per_s"]
    naive = max((p["throughput"] for p in _points(model, "naive")), default=math.nan)
    rows = []
    for contender, info in model["contenders"].items():
        points = _points(model, contender)
        if not points:
            rows.append([contender, f"did not run: {info.get('error')}", *["-"] * 8])
            continue
        best = max(points, key=lambda p: p["throughput"])
        single = next((p for p in points if p["mode"] == "closed" and p["level"] == 1), None)
        setup = info["setup"]
        rows.append(
            [
                contender,
                _num(best["throughput"]),
                _num(best["throughput"] / limit, 2),
                _num(best["throughput"] / naive, 2),
                _num(single["p50_ms"]) if single else "-",
                _num(best["p99_ms"]),
                _num(best["cpu_us_per_sample"]),
                _num(best["mean_chunk_size"]),
                _num(setup["seconds"], 2),
                _num(setup["rss_delta_mib"], 3),
            ]
        )
    header = [
        "contender",
        "best samples/s",
        "x physical",
        "x naive",
        "p50 1 caller (ms)",
        "p99 at best (ms)",
        "CPU us/sample at best",
        "mean chunk at best",
        "ready (s)",
        "RSS delta (MiB)",
    ]
    return _table(header, rows)


def _detail(model: dict[str, Any], mode: str) -> list[str]:
    rows = []
    for p in model["points"]:
        if p["mode"] != mode:
            continue
        level = f"{p['level']:g}" if mode == "closed" else f"{p['level']:g}x"
        rows.append(
            [
                p["contender"],
                level,
                _num(p["offered_rate"]) if mode == "open" else "-",
                _num(p["throughput"]),
                _num(p["p50_ms"]),
                _num(p["p95_ms"]),
                _num(p["p99_ms"]),
                _num(p["mean_chunk_size"]),
                _num(p["chunks_per_s"]),
                _num(p["cpu_us_per_sample"]),
                str(p["dropped"]),
            ]
        )
    what = "callers" if mode == "closed" else "load"
    header = [
        "contender",
        what,
        "offered/s",
        "samples/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "mean chunk",
        "chunks/s",
        "CPU us/sample",
        "shed",
    ]
    return _table(header, rows)


def _model(name: str, model: dict[str, Any]) -> list[str]:
    limit = model["physical_limit"]
    raw = model["raw_batch1_latency_ms"]
    per_size = ", ".join(f"{s}: {_num(v)}" for s, v in limit["per_size"].items())
    lines = [
        f"## {name}: {model['description']}",
        "",
        f"Physical limit: **{_num(limit['samples_per_s'])} samples/s** at batch "
        f"{limit['best_size']} ({limit['infer_requests']} infer requests, THROUGHPUT hint, "
        f"pre-batched; per size {per_size}). Measured before and after the contenders "
        f"({_num(limit['before_contenders'])} and {_num(limit['after_contenders'])}); the "
        "larger is the reference, open-loop rates are fractions of the first.",
        f"Raw batch-1 `infer()` latency: {_num(raw['throughput_hint'])} ms with the "
        f"THROUGHPUT hint (the batcher's), {_num(raw['latency_hint'])} ms with LATENCY.",
        "",
        *_headline(name, model),
        "### Closed loop (C callers, back to back)",
        "",
        *_detail(model, "closed"),
        "### Open loop (Poisson arrivals, load as a fraction of the physical limit)",
        "",
        *_detail(model, "open"),
    ]
    return lines


def _overhead(results: dict[str, Any]) -> list[str]:
    o = results["scheduler_overhead"]
    rows = [
        [
            _num(p["level"]),
            _num(o["generator_ceiling_rps"][str(int(p["level"]))]),
            _num(p["throughput"]),
            _num(p["p50_ms"]),
            _num(p["mean_chunk_size"]),
            _num(p["cpu_us_per_sample"]),
        ]
        for p in o["points"]
    ]
    header = ["callers", "no-op generator req/s", "Batcher req/s", "p50 ms", "mean chunk",
              "CPU us/request"]  # fmt: skip
    return [
        "## Scheduler overhead",
        "",
        f"{o['contender']} ({o['model']}); closed loop. The no-op column is the same load "
        "generator awaiting nothing: the most this process can measure. Offered the run's "
        f"highest open-loop rate ({_num(o['open_loop_generator_offered_rps'])}/s), the "
        "open-loop generator completes "
        f"{_num(o['open_loop_generator_ceiling_rps'])}/s awaiting nothing: open-loop points "
        "above that rate measure the generator, not the contender.",
        "",
        *_table(header, rows),
    ]


def render(results: dict[str, Any]) -> str:
    meta = results["meta"]
    settings = results["settings"]
    lines = [
        "# batcher benchmark results",
        "",
        f"{headline(meta)}; "
        f"{'quick' if settings['quick'] else 'full'} run, {_num(results['elapsed_s'], 3)} s. "
        f"Each point: {settings['warmup_s']:g} s warm-up, {settings['window_s']:g} s window.",
        "",
        *_targets(results),
    ]
    for name, model in results["models"].items():
        lines += _model(name, model)
    if "scheduler_overhead" in results:
        lines += _overhead(results)
    lines += ["## Contenders", ""]
    lines += [f"- **{name}**: {text}" for name, text in results["contenders"].items()]
    return "\n".join(lines) + "\n"


def write(results: dict[str, Any], out: Path) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    (out / "results.md").write_text(render(results), encoding="utf-8")


if __name__ == "__main__":
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results")
    data = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    (folder / "results.md").write_text(render(data), encoding="utf-8")
