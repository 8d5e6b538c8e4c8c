from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batcher import Batcher, BatcherConfig, Chunk, CostTable, _execution, models
from batcher._costs import LiveCosts, plausible_shape

pytestmark = pytest.mark.anyio


def test_cost_table_saves_and_loads(tmp_path: Path) -> None:
    table = CostTable({1: 0.001, 8: 0.004}, overhead=1e-4, shared_seconds={1: 0.002, 8: 0.007})
    path = tmp_path / "costs.json"
    table.save(path)
    loaded = CostTable.load(path)
    assert dict(loaded.seconds) == {1: 0.001, 8: 0.004}
    assert dict(loaded.shared) == {1: 0.002, 8: 0.007}
    assert loaded.overhead == 1e-4
    assert loaded.source == "file"


def test_a_table_without_shared_figures_treats_slots_as_independent(tmp_path: Path) -> None:
    path = tmp_path / "costs.json"
    path.write_text('{"seconds": {"1": 0.001, "4": 0.002}}')
    loaded = CostTable.load(path)
    assert dict(loaded.shared_seconds) == {}
    assert dict(loaded.shared) == {1: 0.001, 4: 0.002}


def test_cost_table_rejects_nonpositive_figures_and_mismatched_sizes() -> None:
    with pytest.raises(ValueError, match="positive seconds"):
        CostTable({1: 0.0})
    with pytest.raises(ValueError, match="shared entries must map a positive size"):
        CostTable({1: 1.0}, shared_seconds={1: -1.0})
    with pytest.raises(ValueError, match="shared entries must cover the same sizes"):
        CostTable({1: 1.0, 2: 2.0}, shared_seconds={1: 1.0})


def test_live_costs_move_one_speed_factor_and_report_drift() -> None:
    live = LiveCosts(CostTable({1: 1.0, 2: 2.0}), smoothing=0.5, tolerance=0.1)
    live.observe(1, 1.04)
    assert not live.drifted
    live.observe(2, 6.0)  # size 2 ran three times slower than tabled
    assert live.drifted
    planned = live.mark_planned().seconds
    # Both sizes follow the device's speed, keeping their profiled ratio.
    assert planned[2] == pytest.approx(2 * planned[1])
    assert planned[1] == pytest.approx(2.01)
    assert not live.drifted
    assert live.snapshot().source == "live"


def test_live_costs_compare_a_chunk_that_ran_beside_others_with_the_shared_figure() -> None:
    table = CostTable({1: 1.0}, shared_seconds={1: 2.0})
    live = LiveCosts(table, smoothing=0.5)
    live.observe(1, 2.0, shared=True)  # exactly what the table expects under load
    assert live.factor == pytest.approx(1.0)
    live.observe(1, 2.0, shared=False)  # alone, twice the idle figure: the device slowed
    assert live.factor == pytest.approx(1.5)
    snapshot = live.snapshot()
    assert snapshot.seconds[1] == pytest.approx(1.5)
    assert snapshot.shared[1] == pytest.approx(3.0)


def test_live_overhead_follows_the_host_time_chunks_add_and_counts_as_drift() -> None:
    live = LiveCosts(CostTable({1: 1.0, 8: 4.0}, overhead=0.1), smoothing=0.5, tolerance=0.1)
    live.observe(1, 1.0, host=0.12)
    assert live.overhead == pytest.approx(0.11)
    assert not live.drifted  # 0.01 against a scale of 0.1 + 1.0
    live.observe(1, 1.0, host=0.5)  # a busy loop: each chunk costs the host far more
    assert live.overhead == pytest.approx(0.305)
    assert live.drifted
    assert live.mark_planned().overhead == pytest.approx(0.305)
    assert not live.drifted
    assert live.factor == pytest.approx(1.0)  # the device itself kept its speed


def test_live_costs_ignore_unknown_sizes_and_frozen_smoothing() -> None:
    live = LiveCosts(CostTable({1: 1.0}), smoothing=0.0)
    live.observe(1, 5.0)
    live.observe(7, 5.0)
    assert dict(live.snapshot().seconds) == {1: 1.0}


def test_plausible_shape_undoes_the_readings_that_misled_auto() -> None:
    # One real profile of the MLP: 32 rows measured dearer than two chunks of 16. Neither
    # reading is trusted over the other: both move to their mean seconds per row.
    shaped = plausible_shape({1: 0.000825, 16: 0.000825, 32: 0.002223})
    per_row = (0.000825 / 16 + 0.002223 / 32) / 2
    assert shaped == pytest.approx({1: 0.000825, 16: per_row * 16, 32: per_row * 32})
    # One low reading at a small size does not cap every bigger one.
    assert plausible_shape({1: 0.05, 2: 0.25, 4: 0.35, 8: 0.6}) == pytest.approx(
        {1: 0.0875, 2: 0.175, 4: 0.35, 8: 0.6}
    )
    # And one where 2 rows measured cheaper than 1.
    assert plausible_shape({1: 0.00030, 2: 0.00028}) == {1: 0.00030, 2: 0.00030}
    # Company never makes a chunk faster: the idle figure is a floor, even where it breaks
    # the per-row rule.
    assert plausible_shape({1: 1.0, 2: 1.0}, floor={1: 1.0, 2: 3.0}) == {1: 1.0, 2: 3.0}


def test_a_plausible_table_is_left_as_measured() -> None:
    measured = {1: 0.227, 2: 0.227, 4: 0.266, 8: 0.472, 16: 0.846, 32: 1.632}
    assert plausible_shape(measured) == measured


_tables = st.dictionaries(
    st.integers(1, 64), st.floats(1e-6, 1.0, allow_nan=False), min_size=1, max_size=8
)


@settings(deadline=None)
@given(_tables, st.floats(0.0, 2.0))
def test_plausible_shape_never_lets_splitting_or_fewer_rows_look_cheaper(
    measured: dict[int, float], floor_scale: float
) -> None:
    floor = {size: sec * floor_scale for size, sec in measured.items()}
    plain, floored = plausible_shape(measured), plausible_shape(measured, floor)
    sizes = sorted(measured)
    for shaped in (plain, floored):
        assert sorted(shaped) == sizes
        assert all(shaped[a] <= shaped[b] for a, b in itertools.pairwise(sizes))
    assert all(floored[size] >= floor[size] for size in sizes)
    for i, a in enumerate(sizes):
        for b in sizes[i + 1 :]:
            assert plain[b] <= plain[a] * b / a * (1 + 1e-12)
    # A shaped table is already plausible.
    assert plausible_shape(plain) == pytest.approx(plain, rel=1e-9)


async def test_auto_profiles_each_size_within_its_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    budgets: list[tuple[str, float]] = []

    def recording(kind: str, measure: Callable[[Any, float], float]) -> Any:
        def wrapped(target: Any, budget: float) -> float:
            budgets.append((kind, budget))
            return measure(target, budget)

        return wrapped

    for name in ("_idle_seconds", "_shared_seconds"):
        monkeypatch.setattr(_execution, name, recording(name, getattr(_execution, name)))
    config = BatcherConfig(batch_sizes=(1, 2, 4), strategy="auto", profile_budget=0.1)
    async with Batcher(models.mlp((16, 32, 8)), config) as b:
        stats = b.statistics()
    # Every size measured idle and shared in each pass; the budget split over all of them.
    assert len(budgets) == 2 * 3 * _execution._PROFILE_PASSES
    assert {kind for kind, _ in budgets} == {"_idle_seconds", "_shared_seconds"}
    assert sum(budget for _, budget in budgets) == pytest.approx(0.1)
    assert stats.cost_table is not None
    assert stats.cost_table.source == "profiled"
    assert set(stats.cost_table.seconds) == {1, 2, 4}
    # Measured both ways; company never makes a chunk faster, nor do more rows.
    idle, shared = stats.cost_table.seconds, stats.cost_table.shared_seconds
    assert set(shared) == {1, 2, 4}
    assert all(shared[s] >= idle[s] for s in idle)
    assert idle[1] <= idle[2] <= idle[4]
    assert shared[1] <= shared[2] <= shared[4]


async def test_auto_loads_a_saved_cost_table_instead_of_profiling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_profiling(*args: object) -> None:
        raise AssertionError("a loaded cost table must not be profiled")

    monkeypatch.setattr(_execution, "profile", no_profiling)
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
        assert b._plan(3, free=1) == (Chunk(4, 3),)
        await b.submit(np.zeros(16, np.float32))


async def test_a_cost_table_missing_a_size_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "costs.json"
    CostTable({1: 1.0}).save(path)
    config = BatcherConfig(batch_sizes=(1, 2), strategy="auto", cost_table_path=str(path))
    with pytest.raises(ValueError, match=r"has no figure for batch sizes \[2\]"):
        async with Batcher(models.mlp((16, 32, 8)), config):
            pass
