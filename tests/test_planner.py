from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batcher import Chunk, _planner, estimated_time, plan, plan_chunks, plan_cost_based, plan_padded

SIZE_SETS = [(1,), (1, 2), (1, 2, 4, 8), (1, 2, 4, 8, 16, 32), (1, 3, 4), (1, 5, 8), (1, 6, 7, 9)]


def brute_force_fewest(n: int, sizes: tuple[int, ...]) -> int | None:
    """Fewest chunks by breadth-first search over sums: independent of the planner's DP."""
    reached = {0}
    for chunks in range(n + 1):
        if n in reached:
            return chunks
        reached = {total + s for total in reached for s in sizes if total + s <= n}
        if not reached:
            return None
    return None


@pytest.mark.parametrize(
    ("n", "sizes", "expected"),
    [
        (0, (1, 2, 4, 8), ()),
        (5, (1, 2, 4, 8), (4, 1)),
        (13, (1, 2, 4, 8), (8, 4, 1)),
        (37, (1, 2, 4, 8, 16), (16, 16, 4, 1)),
        (6, (1, 3, 4), (3, 3)),
        (10, (1, 5, 8), (5, 5)),
        (8, (4, 1, 2, 8), (8,)),
    ],
)
def test_plan_chunks_examples(n: int, sizes: tuple[int, ...], expected: tuple[int, ...]) -> None:
    assert plan_chunks(n, sizes) == expected


@pytest.mark.parametrize("sizes", SIZE_SETS)
def test_plan_chunks_is_minimal_for_every_n_up_to_64(sizes: tuple[int, ...]) -> None:
    for n in range(65):
        chunks = plan_chunks(n, sizes)
        assert sum(chunks) == n
        assert all(c in sizes for c in chunks)
        assert list(chunks) == sorted(chunks, reverse=True)
        assert len(chunks) == brute_force_fewest(n, sizes)


def test_powers_of_two_give_the_binary_decomposition() -> None:
    sizes = (1, 2, 4, 8, 16, 32)
    for n in range(64):
        expected = tuple(1 << b for b in reversed(range(6)) if n >> b & 1)
        assert plan_chunks(n, sizes) == expected


def test_plan_chunks_without_one_rejects_counts_it_cannot_split() -> None:
    assert plan_chunks(6, (2, 4)) == (4, 2)
    with pytest.raises(ValueError, match="cannot be split exactly"):
        plan_chunks(5, (2, 4))


def test_plan_chunks_rejects_negative_counts_and_bad_sizes() -> None:
    with pytest.raises(ValueError, match="n must be >= 0"):
        plan_chunks(-1, (1, 2))
    with pytest.raises(ValueError, match="positive integers"):
        plan_chunks(3, (0, 1))


def test_padded_plan_splits_into_largest_then_pads_the_rest() -> None:
    assert plan_padded(7, (1, 2, 4, 8)) == (Chunk(8, 7),)
    assert plan_padded(8, (8,)) == (Chunk(8, 8),)
    assert plan_padded(19, (4, 8)) == (Chunk(8, 8), Chunk(8, 8), Chunk(4, 3))
    assert plan_padded(0, (4, 8)) == ()


def test_auto_pads_when_one_big_chunk_is_cheaper_than_several() -> None:
    # A fixed per-inference overhead dominates: one padded 8 beats 4+2+1.
    costs = {1: 1.0, 2: 1.1, 4: 1.2, 8: 1.4}
    assert plan(7, (1, 2, 4, 8), "auto", costs, slots=1) == (Chunk(8, 7),)


def test_auto_splits_when_rows_cost_in_proportion() -> None:
    costs = {1: 1.0, 2: 2.0, 4: 4.0, 8: 8.0}
    chunks = plan(7, (1, 2, 4, 8), "auto", costs, slots=1)
    assert sorted(chunks, reverse=True) == [Chunk(4, 4), Chunk(2, 2), Chunk(1, 1)]


def test_auto_uses_parallel_slots() -> None:
    # One slot: a single 8 costs 8 and 4+4 costs 8 too (padding breaks the tie: neither pads).
    # Two slots run 4+4 side by side in 4, so parallelism must win there.
    costs = {4: 4.0, 8: 8.0}
    chunks = plan(8, (4, 8), "auto", costs, slots=2)
    assert chunks == (Chunk(4, 4), Chunk(4, 4))
    assert estimated_time(chunks, costs, 2) == 4.0


def test_auto_does_not_count_on_parallelism_the_device_does_not_deliver() -> None:
    # Side by side, a 4-row chunk holds its slot for 8 (the slots share one core): 4+4 then
    # takes 8 on two slots, no faster than one 8-row chunk, which wins on fewer chunks.
    costs = {4: 4.0, 8: 8.0}
    shared = {4: 8.0, 8: 16.0}
    chunks = plan(8, (4, 8), "auto", costs, slots=2, overhead=0.1, shared=shared)
    assert chunks == (Chunk(8, 8),)
    assert estimated_time(chunks, costs, 2, 0.1, shared) == pytest.approx(8.1)


def test_auto_picks_the_size_that_is_cheapest_per_row_under_load() -> None:
    # Alone, 32 rows cost less per row than 16; with both slots busy they cost more (a
    # cache-bound model). A deep queue on two free slots gets 16-row chunks.
    costs = {16: 8.0, 32: 14.0}
    shared = {16: 10.0, 32: 24.0}
    chunks = plan(64, (16, 32), "auto", costs, slots=2, shared=shared)
    assert chunks == (Chunk(16, 16),) * 4


def test_auto_keeps_the_fixed_plan_for_a_gain_within_the_margin() -> None:
    # 4+4 on two slots is estimated 5 % faster than one 8-row chunk: within a measured
    # table's noise, so the single chunk stays; with no margin the estimate alone decides.
    costs = {4: 4.0, 8: 8.0}
    shared = {4: 7.6, 8: 8.0}
    assert plan(8, (4, 8), "auto", costs, slots=2, shared=shared) == (Chunk(8, 8),)
    assert plan(8, (4, 8), "auto", costs, slots=2, shared=shared, margin=0.0) == (
        Chunk(4, 4),
        Chunk(4, 4),
    )


def test_auto_takes_fewer_chunks_among_plans_within_the_margin_of_the_fastest() -> None:
    # Sixteen rows on two slots: eight 2-row chunks are estimated fastest, but 8+8 is within
    # 10 % of them and far faster than one 16-row chunk on a single slot.
    costs = {2: 0.8, 8: 3.2, 16: 6.4}
    shared = {2: 0.8, 8: 3.5, 16: 7.0}
    chunks = plan(16, (2, 8, 16), "auto", costs, slots=2, overhead=0.01, shared=shared)
    assert chunks == (Chunk(8, 8), Chunk(8, 8))


def test_an_open_stream_gets_the_fewest_chunks_plan() -> None:
    # 4+4 on both free slots beats one 8-row chunk by half. But at 1 sample per unit of
    # time, one arrives before the 8 would finish: samples come as a stream, and the
    # fewest-chunks plan leaves the other slot to it.
    costs = {1: 1.0, 4: 4.0, 8: 8.0}
    split = (Chunk(4, 4), Chunk(4, 4))
    assert plan(8, (1, 4, 8), "auto", costs, slots=2) == split
    assert plan(8, (1, 4, 8), "auto", costs, slots=2, arrivals=1.0) == (Chunk(8, 8),)
    # Nor does it pad for a stream where padding costs device time: with rows costing in
    # proportion, 7 rows are 4+1+1+1 there, not one padded 8 (8 units against 7).
    assert plan(7, (1, 4, 8), "auto", costs, slots=1, overhead=10.0) == (Chunk(8, 7),)
    assert plan(7, (1, 4, 8), "auto", costs, slots=1, overhead=10.0, arrivals=10.0) == (
        Chunk(4, 4),
        Chunk(1, 1),
        Chunk(1, 1),
        Chunk(1, 1),
    )
    # Arrivals too rare to come before the plan ends (one per 100) change nothing.
    assert plan(8, (1, 4, 8), "auto", costs, slots=2, arrivals=0.01) == split
    # Samples known to be on their way (callers about to submit again) are a stream too.
    assert plan(8, (1, 4, 8), "auto", costs, slots=2, more_coming=True) == (Chunk(8, 8),)


def test_an_open_stream_is_padded_where_padding_costs_the_device_nothing() -> None:
    # One padded 8 costs 1.4 units; 4+1+1+1 cost 4.2 and four round trips: fewer chunks
    # and less device time, whatever the stream.
    flat_costs = {1: 1.0, 4: 1.2, 8: 1.4}
    assert plan(7, (1, 4, 8), "auto", flat_costs, slots=1, arrivals=10.0) == (Chunk(8, 7),)


def test_plan_rejects_unknown_strategies_and_missing_costs() -> None:
    with pytest.raises(ValueError, match="strategy must be one of"):
        plan(3, (1, 2), "greedy")
    with pytest.raises(ValueError, match='"auto" needs costs'):
        plan(3, (1, 2), "auto")
    with pytest.raises(ValueError, match="missing \\[2\\]"):
        plan_cost_based(3, (1, 2), {1: 1.0}, 1)
    with pytest.raises(ValueError, match="shared costs must give a time for every batch size"):
        plan_cost_based(3, (1, 2), {1: 1.0, 2: 2.0}, 1, shared={1: 1.0})
    with pytest.raises(ValueError, match=r"margin must be within \[0, 1\)"):
        plan_cost_based(3, (1, 2), {1: 1.0, 2: 2.0}, 1, margin=1.0)


size_sets = st.lists(st.integers(1, 24), min_size=1, max_size=5, unique=True).map(
    lambda sizes: tuple(sorted(sizes))
)


@functools.cache
def brute_force_cached(n: int, sizes: tuple[int, ...]) -> int | None:
    return brute_force_fewest(n, sizes)


@settings(max_examples=300, deadline=None)
@given(sizes=size_sets, n=st.integers(0, 48))
def test_decompose_equals_brute_force_minimum(sizes: tuple[int, ...], n: int) -> None:
    expected = brute_force_cached(n, sizes)
    if expected is None:
        with pytest.raises(ValueError, match="cannot be split exactly"):
            plan_chunks(n, sizes)
    else:
        chunks = plan_chunks(n, sizes)
        assert sum(chunks) == n
        assert len(chunks) == expected


def covers_exactly(chunks: tuple[Chunk, ...], n: int, sizes: tuple[int, ...]) -> bool:
    return sum(c.samples for c in chunks) == n and all(
        0 < c.samples <= c.size and c.size in sizes for c in chunks
    )


@settings(max_examples=300, deadline=None)
@given(
    sizes=size_sets,
    n=st.integers(0, 80),
    slots=st.integers(1, 4),
    data=st.data(),
)
def test_every_strategy_covers_n_and_auto_is_never_worse(
    sizes: tuple[int, ...], n: int, slots: int, data: st.DataObject
) -> None:
    seconds = st.floats(1e-4, 1.0, allow_nan=False, allow_infinity=False)
    costs = {s: data.draw(seconds) for s in sizes}
    # Contention slows a chunk down by up to the slot count.
    shared = {s: c * data.draw(st.floats(1.0, float(slots))) for s, c in costs.items()}
    overhead = data.draw(st.sampled_from((0.0, 1e-4, 1e-2)))
    margin = data.draw(st.sampled_from((0.0, 0.1, 0.5)))
    # Samples per second arriving while every slot is busy: none, rare, an open stream.
    arrivals = data.draw(st.sampled_from((0.0, 1.0, 1e4)))
    more_coming = data.draw(st.booleans())

    def estimate(chunks: tuple[Chunk, ...]) -> float:
        return estimated_time(chunks, costs, slots, overhead, shared)

    padded = plan_padded(n, sizes)
    auto = plan_cost_based(n, sizes, costs, slots, overhead, shared, margin, arrivals, more_coming)
    assert covers_exactly(padded, n, sizes)
    assert covers_exactly(auto, n, sizes)
    best_fixed = estimate(padded)
    if brute_force_cached(n, sizes) is not None:
        decomposed = plan(n, sizes, "decompose")
        assert covers_exactly(decomposed, n, sizes)
        if n and (more_coming or arrivals * estimate(decomposed) >= 1.0):
            # An open stream: the fewest-chunks plan, or the padded plan where that is
            # fewer chunks for no more device time.
            device_seconds = {
                chunks: sum(shared[c.size] for c in chunks) for chunks in (decomposed, padded)
            }
            if auto == padded and padded != decomposed:
                assert len(padded) < len(decomposed)
                assert device_seconds[padded] <= device_seconds[decomposed]
            else:
                assert auto == decomposed
            return
        best_fixed = min(best_fixed, estimate(decomposed))
    assert estimate(auto) <= best_fixed + 1e-12


@settings(deadline=None)
@given(sizes=size_sets, n=st.integers(1, 80), slots=st.integers(1, 4), data=st.data())
def test_leaving_out_sizes_above_the_one_that_holds_n_never_changes_the_plan(
    sizes: tuple[int, ...], n: int, slots: int, data: st.DataObject
) -> None:
    """With costs that never fall as size grows, the planner skips coverings with sizes
    bigger than needed; they can never win, so planning with them gives the same plan.
    Tables that do fall somewhere must get every candidate."""
    if data.draw(st.booleans()):
        steps = [data.draw(st.floats(0.0, 0.5)) for _ in sizes]
        costs = {s: 1e-3 + sum(steps[: i + 1]) for i, s in enumerate(sizes)}
        shared = {s: c * data.draw(st.floats(1.0, float(slots))) for s, c in costs.items()}
        for size, bigger in itertools.pairwise(sizes):
            shared[bigger] = max(shared[bigger], shared[size])
    else:
        costs = {s: data.draw(st.floats(1e-4, 1.0)) for s in sizes}
        shared = {s: c * data.draw(st.floats(1.0, float(slots))) for s, c in costs.items()}
    overhead = data.draw(st.sampled_from((0.0, 1e-4, 1e-2)))
    margin = data.draw(st.sampled_from((0.0, 0.1, 0.5)))
    trimmed = plan_cost_based(n, sizes, costs, slots, overhead, shared, margin)
    with _every_candidate():
        full = plan_cost_based(n, sizes, costs, slots, overhead, shared, margin)
    assert trimmed == full


@contextlib.contextmanager
def _every_candidate() -> Iterator[None]:
    """The planner as if costs were not known to grow with size: every size cap tried."""
    real = _planner._mixed_candidates

    def every_cap(
        n: int, sizes: tuple[int, ...], per_chunk: tuple[float, ...], monotone: bool
    ) -> tuple[tuple[Chunk, ...], ...]:
        return real(n, sizes, per_chunk, False)

    _planner._mixed_candidates = every_cap
    try:
        yield
    finally:
        _planner._mixed_candidates = real
