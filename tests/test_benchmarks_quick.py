"""The benchmark suite runs end to end in quick mode and reports every figure it promises.

No timing is asserted: CI machines are shared and noisy. What is checked is that every
contender ran (or recorded why not) at every load point with positive, finite figures.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
VERDICTS = ("ahead", "level", "noise", "noise (A/A)", "behind")
RATE_AND_LATENCY = ("offered_rate", "throughput", "p50_ms", "p95_ms", "p99_ms")


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def _run_quick(module: str, out: Path) -> str:
    """Run ``python -m module --quick`` into ``out``; its stdout, once it has succeeded."""
    done = subprocess.run(
        [sys.executable, "-m", module, "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("bench")
    stdout = _run_quick("benchmarks", out)
    assert "ETA" in stdout  # progress lines, one per measurement
    return json.loads((out / "results.json").read_text()), out


def test_files_written(results: tuple[dict[str, Any], Path]) -> None:
    data, out = results
    assert (out / "results.md").read_text().startswith("# batcher benchmark results")
    for model in data["models"]:
        for mode in ("closed", "open"):
            assert (out / f"{model}_{mode}.png").stat().st_size > 0


def test_every_contender_at_every_load_point(results: tuple[dict[str, Any], Path]) -> None:
    data, _ = results
    settings = data["settings"]
    assert set(data["models"]) == {"mlp", "cnn"}
    for name, model in data["models"].items():
        assert _positive(model["physical_limit"]["samples_per_s"]), name
        assert all(_positive(v) for v in model["raw_batch1_latency_ms"].values())
        assert set(model["contenders"]) == set(data["contenders"])
        for contender, info in model["contenders"].items():
            if info["error"]:
                # Only OpenVINO's automatic batching may be unavailable on a machine.
                assert contender == "ov-auto-batch", info["error"]
                continue
            assert info["output_max_abs_diff"] < 1e-2, (name, contender)
            assert info["setup"]["seconds"] > 0
            points = [p for p in model["points"] if p["contender"] == contender]
            levels = {(p["mode"], p["level"]) for p in points}
            expected = {("closed", c) for c in settings["callers"]} | {
                ("open", f) for f in settings["load_factors"]
            }
            assert levels == expected, (name, contender)
            for p in points:
                for key in RATE_AND_LATENCY:
                    assert _positive(p[key]), (name, contender, p["mode"], p["level"], key)
                assert p["p50_ms"] <= p["p95_ms"] <= p["p99_ms"]
                assert _positive(p["cpu_us_per_sample"])
                assert p["completed"] > 0
                if contender.startswith("batcher") or contender in ("naive", "ov-async-b1"):
                    assert _positive(p["mean_chunk_size"])
                    assert _positive(p["chunks_per_s"])


def test_targets_and_overhead(results: tuple[dict[str, Any], Path]) -> None:
    data, _ = results
    names = {(t["name"], t["model"]) for t in data["targets"]}
    for model in ("mlp", "cnn"):
        for target in ("saturated_vs_physical", "vs_naive", "vs_ov-async-b1", "low_load_p50"):
            assert (target, model) in names
    assert ("scheduler_overhead", "identity") in names
    for t in data["targets"]:
        assert t["met"] in (True, False, None)
        if t["met"] is not None:
            assert _positive(t["ratio"])
    overhead = data["scheduler_overhead"]
    assert _positive(overhead["best_rps"])
    assert all(_positive(v) for v in overhead["generator_ceiling_rps"].values())


def test_strategy_comparison_runs_every_strategy_in_rounds(tmp_path: Path) -> None:
    _run_quick("benchmarks.strategies", tmp_path)
    data = json.loads((tmp_path / "strategies.json").read_text())
    assert (tmp_path / "strategies.md").read_text().startswith("# decompose vs pad vs auto")
    assert (tmp_path / "strategies.png").stat().st_size > 0
    settings = data["settings"]
    for name, model in data["models"].items():
        assert _positive(model["capacity"]), name
        levels = {("closed", float(c)) for c in settings["callers"]} | {
            ("open", f) for f in settings["load_factors"]
        }
        # The three strategies and the A/A control, an identical second decompose batcher.
        contenders = ("batcher-decompose", "batcher-pad", "batcher-auto", "batcher-decompose-twin")
        for strategy in contenders:
            runs = [p for p in model["points"] if p["contender"] == strategy]
            # Every load point, once per round.
            assert len(runs) == len(levels) * settings["rounds"], (name, strategy)
            assert {(p["mode"], p["level"]) for p in runs} == levels
            assert all(_positive(p["throughput"]) and _positive(p["p99_ms"]) for p in runs)
        assert len(model["comparisons"]) == len(levels)
        for row in model["comparisons"]:
            low, high = row["throughput_ci"]
            assert 0 < low <= high
            assert row["throughput_verdict"] in VERDICTS
            assert row["p99_verdict"] in VERDICTS
            for key in ("aa_throughput", "aa_p99"):
                low, high = row[f"{key}_ci"]
                assert 0 < low <= high, (name, key)
                assert _positive(row[f"{key}_ratio"]), (name, key)


def test_verdicts_need_a_gap_beyond_tolerance_interval_and_aa_band_either_way() -> None:
    from benchmarks.strategies import _aa_band, _verdict

    # Within the tolerance: level, whatever the interval.
    assert _verdict(0.97, (0.5, 0.99), 0.05, True) == "level"
    # auto at 0.8x throughput: noise while its interval reaches parity...
    assert _verdict(0.8, (0.7, 1.01), 0.05, True) == "noise"
    # ...behind once it does not, with no control or a narrow A/A band...
    assert _verdict(0.8, (0.7, 0.9), 0.05, True) == "behind"
    assert _verdict(0.8, (0.7, 0.9), 0.05, True, _aa_band((0.9, 1.1))) == "behind"
    # ...and reported apart where two identical contenders strayed as far (0.75-1.1).
    assert _verdict(0.8, (0.7, 0.9), 0.05, True, _aa_band((0.75, 1.1))) == "noise (A/A)"
    # Gains take the same test: a gain whose interval reaches parity is noise, not ahead.
    assert _verdict(1.2, (0.98, 1.4), 0.05, True) == "noise"
    assert _verdict(1.2, (1.1, 1.4), 0.05, True, _aa_band((0.8, 1.3))) == "noise (A/A)"
    assert _verdict(1.2, (1.1, 1.4), 0.05, True, _aa_band((0.9, 1.1))) == "ahead"
    # p99 (lower is better) reads ratios the other way and the band as a factor either way.
    assert _verdict(1.3, (1.2, 1.4), 0.10, False, _aa_band((0.8, 1.35))) == "noise (A/A)"
    assert _verdict(1.3, (1.2, 1.4), 0.10, False, _aa_band((0.9, 1.2))) == "behind"
    assert _verdict(0.7, (0.6, 0.8), 0.10, False, _aa_band((0.9, 1.2))) == "ahead"
    # A contender that measured nothing: throughput 0 is behind; a twin at 0 bounds nothing.
    assert _verdict(0.0, (0.0, 0.0), 0.05, True) == "behind"
    assert _aa_band((0.0, 1.0)) == float("inf")
    assert _aa_band(None) == 1.0
