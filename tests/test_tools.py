"""The `batcher` command's own subcommands: demo and tune."""

from __future__ import annotations

from pathlib import Path

import pytest

from batcher import BatcherConfig, CostTable, _tune
from batcher._cli import main
from batcher._costs import plausible_shape
from batcher._tune import SizeProfile, recommend


def profile(size: int, latency: float, throughput: float, memory: int = 0) -> SizeProfile:
    return SizeProfile(size, latency, throughput, 2, 0.01, memory)


def test_recommend_keeps_sizes_that_pay_off_within_budgets() -> None:
    profiles = [
        profile(1, 0.001, 1000),
        profile(2, 0.0015, 1500),
        profile(4, 0.004, 1400),  # no gain over 2
        profile(8, 0.005, 3000),
        profile(16, 0.2, 5000),  # too slow for the target
    ]
    sizes, strategy, reasons = recommend(profiles, latency_target=0.05, memory_budget=1e9)
    assert sizes == (1, 2, 8)
    assert strategy == "auto"
    assert any("size 4 left out" in r for r in reasons)
    assert any("size 16 left out" in r and "latency target" in r for r in reasons)


def test_recommend_respects_the_memory_budget() -> None:
    profiles = [profile(1, 0.001, 1000, 10), profile(2, 0.001, 2000, 10)]
    sizes, _, reasons = recommend(profiles, latency_target=1.0, memory_budget=15)
    assert sizes == (1,)
    assert any("memory budget" in r for r in reasons)


def test_tune_writes_a_config_the_batcher_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tuned.toml"
    code = main(
        ["tune", "identity", "--candidates", "1,2,4", "--seconds", "0.05", "--out", str(out)]
    )
    assert code == 0
    config = BatcherConfig.from_toml(out)
    assert config.batch_sizes[0] == 1
    assert config.cost_table_path is not None
    table = CostTable.load(config.cost_table_path)
    assert set(table.seconds) == set(config.batch_sizes)
    assert set(table.shared_seconds) == set(config.batch_sizes)
    assert all(table.shared_seconds[s] >= table.seconds[s] for s in table.seconds)
    # Measured figures are held to what batching can do, as a start-up profile's are.
    assert plausible_shape(table.seconds) == dict(table.seconds)
    assert plausible_shape(table.shared_seconds, table.seconds) == dict(table.shared_seconds)
    assert "| size | latency ms |" in capsys.readouterr().out


def test_tune_saves_a_superlinear_reading_in_a_plausible_shape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 4 rows read dearer than two chunks of 2: noise on a shared machine, not batching.
    latency = {1: 0.001, 2: 0.001, 4: 0.005}
    monkeypatch.setattr(
        _tune,
        "profile_size",
        lambda core, model, size, device, seconds: profile(size, latency[size], 1000.0 * size),
    )
    out = tmp_path / "tuned.toml"
    assert main(["tune", "identity", "--candidates", "1,2,4", "--out", str(out)]) == 0
    config = BatcherConfig.from_toml(out)
    assert config.batch_sizes == (1, 2, 4)
    assert config.cost_table_path is not None
    seconds = CostTable.load(config.cost_table_path).seconds
    assert seconds[4] <= 2 * seconds[2] * (1 + 1e-12)
    assert seconds[1] <= seconds[2] <= seconds[4] < 0.005


def test_tune_names_the_rule_for_an_unknown_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tune", "no-such-model"]) == 2
    assert "model must name a built-in model" in capsys.readouterr().err


def test_demo_runs_and_checks_its_results(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo", "--model", "mlp", "--requests", "200", "--callers", "20"])
    assert code == 0
    out = capsys.readouterr().out
    assert "completed 200" in out
    assert "largest difference from batch-1 results" in out
