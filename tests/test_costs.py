from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from batcher import Batcher, BatcherConfig, Chunk, CostTable, models
from batcher._costs import LiveCosts

pytestmark = pytest.mark.anyio


def test_cost_table_saves_and_loads(tmp_path: Path) -> None:
    table = CostTable({1: 0.001, 8: 0.004})
    path = tmp_path / "costs.json"
    table.save(path)
    loaded = CostTable.load(path)
    assert dict(loaded.seconds) == {1: 0.001, 8: 0.004}
    assert loaded.source == "file"


def test_cost_table_rejects_nonpositive_figures() -> None:
    with pytest.raises(ValueError, match="positive seconds"):
        CostTable({1: 0.0})


def test_live_costs_move_one_speed_factor_and_report_drift() -> None:
    live = LiveCosts(CostTable({1: 1.0, 2: 2.0}), smoothing=0.5, tolerance=0.1)
    live.observe(1, 1.04)
    assert not live.drifted
    live.observe(2, 6.0)  # size 2 ran three times slower than tabled
    assert live.drifted
    planned = live.mark_planned()
    # Both sizes follow the device's speed, keeping their profiled ratio.
    assert planned[2] == pytest.approx(2 * planned[1])
    assert planned[1] == pytest.approx(2.01)
    assert not live.drifted
    assert live.snapshot().source == "live"


def test_live_costs_ignore_unknown_sizes_and_frozen_smoothing() -> None:
    live = LiveCosts(CostTable({1: 1.0}), smoothing=0.0)
    live.observe(1, 5.0)
    live.observe(7, 5.0)
    assert live.current() == {1: 1.0}


async def test_auto_profiles_each_size_within_its_budget() -> None:
    config = BatcherConfig(batch_sizes=(1, 2, 4), strategy="auto", profile_budget=0.1)
    async with Batcher(models.mlp((16, 32, 8)), config) as b:
        stats = b.statistics()
    assert stats.cost_table is not None
    assert stats.cost_table.source == "profiled"
    assert set(stats.cost_table.seconds) == {1, 2, 4}
    assert stats.profile_seconds < 5.0  # budget plus warm-up runs, far below this bound


async def test_auto_loads_a_saved_cost_table_instead_of_profiling(tmp_path: Path) -> None:
    path = tmp_path / "costs.json"
    # Overhead-dominated costs on one slot: auto should pad 3 samples into one 4-row chunk.
    CostTable({1: 1.0, 2: 1.01, 4: 1.02}).save(path)
    config = BatcherConfig(
        batch_sizes=(1, 2, 4),
        strategy="auto",
        cost_table_path=str(path),
        cost_smoothing=0.0,
        max_inflight_chunks=1,
    )
    async with Batcher(models.mlp((16, 32, 8)), config) as b:
        table = b.statistics().cost_table
        assert table is not None
        assert table.source == "file"
        assert b.statistics().profile_seconds < 0.5
        assert b._plan(3, free=1) == (Chunk(4, 3),)
        await b.submit(np.zeros(16, np.float32))


async def test_a_cost_table_missing_a_size_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "costs.json"
    CostTable({1: 1.0}).save(path)
    config = BatcherConfig(batch_sizes=(1, 2), strategy="auto", cost_table_path=str(path))
    with pytest.raises(ValueError, match=r"has no figure for batch sizes \[2\]"):
        async with Batcher(models.mlp((16, 32, 8)), config):
            pass
