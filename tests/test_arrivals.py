from __future__ import annotations

import anyio
import pytest
from support import Caller, ChunkGate, rng_samples, start_behind_one

import batcher._core
from batcher import Batcher, BatcherConfig, models
from batcher._arrivals import ArrivalMeter

pytestmark = pytest.mark.anyio


class ManualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def busy_window(meter: ArrivalMeter, clock: ManualClock, seconds: float, arrivals: int) -> float:
    """Every slot busy for ``seconds`` with ``arrivals`` samples coming meanwhile."""
    meter.all_busy()
    for _ in range(arrivals):
        meter.arrived()
    clock.now += seconds
    meter.slot_freed()
    return meter.close_window()


def test_the_rate_is_arrivals_over_the_time_every_slot_was_busy() -> None:
    clock = ManualClock()
    meter = ArrivalMeter(clock)
    assert busy_window(meter, clock, 0.010, 5) == pytest.approx(500.0)
    assert meter.rate == pytest.approx(500.0)


def test_a_moment_of_busy_time_is_no_evidence_of_a_flood_or_of_silence() -> None:
    clock = ManualClock()
    meter = ArrivalMeter(clock)
    # One arrival in 0.1 ms would read as 10,000/s taken alone.
    assert busy_window(meter, clock, 0.0001, 1) == 0.0
    clock = ManualClock()
    meter = ArrivalMeter(clock)
    busy_window(meter, clock, 0.010, 5)
    # No arrival in 0.1 ms would read as no stream taken alone.
    assert busy_window(meter, clock, 0.0001, 0) > 450.0


def test_windows_without_busy_time_leave_the_rate_as_it_was() -> None:
    clock = ManualClock()
    meter = ArrivalMeter(clock)
    busy_window(meter, clock, 0.010, 5)
    for _ in range(100):
        assert meter.close_window() == pytest.approx(500.0)


def test_busy_time_without_arrivals_brings_the_rate_down_within_a_few_windows() -> None:
    clock = ManualClock()
    meter = ArrivalMeter(clock)
    busy_window(meter, clock, 0.010, 5)
    rates = [busy_window(meter, clock, 0.020, 0) for _ in range(6)]
    assert rates == sorted(rates, reverse=True)
    assert rates[0] < 500.0
    assert rates[2] < 50.0
    # The stream has ended, and the rate says so: it does not keep halving (each change
    # would re-derive every plan).
    assert rates[-2:] == [0.0, 0.0]


def test_callers_answered_a_moment_ago_count_as_returning_for_two_windows() -> None:
    meter = ArrivalMeter()
    for outstanding in range(1, 65):
        meter.outstanding(outstanding)
    # 64 callers held samples at once; with 32 queued or running, 32 are on their way back.
    assert meter.returning(32) == 32
    assert meter.returning(64) == 0
    meter.close_window()
    assert meter.returning(32) == 32
    meter.outstanding(32)
    meter.close_window()
    # Fewer callers now: the old peak has aged out.
    assert meter.returning(32) == 0


def test_an_idle_spell_forgets_who_was_outstanding() -> None:
    clock = ManualClock()
    meter = ArrivalMeter(clock)
    for outstanding in range(1, 17):
        meter.outstanding(outstanding)
    meter.chunk_landed()
    # Every caller was answered at once (both slots landed together) and the first is back
    # a moment later: the others are coming too.
    clock.now = 0.001
    meter.outstanding(1)
    assert meter.returning(1) == 15
    # Idle for a second instead: a new burst, not callers returning. (Windows close only
    # as chunks finish, so they cannot age the peak while nothing runs.)
    clock.now = 1.0
    meter.outstanding(1)
    assert meter.returning(1) == 0


def recording_plans(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bool]]:
    """Every (n, more_coming) the batcher plans with, in order."""
    planned: list[tuple[int, bool]] = []
    real_plan = batcher._core.Batcher._plan

    def recording(self: Batcher, n: int, free: int, more_coming: bool = False) -> object:
        planned.append((n, more_coming))
        return real_plan(self, n, free, more_coming)

    monkeypatch.setattr(batcher._core.Batcher, "_plan", recording)
    return planned


async def test_auto_counts_callers_just_answered_as_more_coming_until_it_idles(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    planned = recording_plans(monkeypatch)
    gate = ChunkGate()
    config = BatcherConfig(
        batch_sizes=(1, 2, 4), strategy="auto", max_inflight_chunks=1, profile_budget=0.05
    )
    clock = ManualClock()
    async with Batcher(models.mlp((16, 32, 8)), config) as b:
        b._arrival_meter.clock = clock
        b._chunk_hook = gate
        callers = [Caller(b, sample) for sample in rng_samples((16,), 4)]
        async with anyio.create_task_group() as tg:
            await start_behind_one(tg, callers)
            gate.open_all()
        assert all(c.error is None for c in callers)
        # The first sample was planned alone, before any caller had been answered; the
        # other three only after the first caller was, as it might have come back.
        assert planned == [(1, False), (3, True)]
        # One caller comes back at once: the other three were answered too.
        await Caller(b, rng_samples((16,), 1)[0]).run()
        assert planned[-1] == (1, True)
        # After an idle second, the next one is a new burst.
        clock.now = 1.0
        await Caller(b, rng_samples((16,), 1)[0]).run()
        assert planned[-1] == (1, False)


async def test_auto_counts_callers_waiting_for_room_as_more_coming(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    planned = recording_plans(monkeypatch)
    # Only the callers waiting for room can make it more_coming here.
    monkeypatch.setattr(ArrivalMeter, "returning", lambda self, count: 0)
    gate = ChunkGate()
    config = BatcherConfig(
        batch_sizes=(1, 2, 4),
        strategy="auto",
        max_inflight_chunks=1,
        max_queue_size=2,
        profile_budget=0.05,
    )
    async with Batcher(models.mlp((16, 32, 8)), config) as b:
        b._chunk_hook = gate
        # One runs (held), two fill the queue, two wait for room.
        callers = [Caller(b, sample) for sample in rng_samples((16,), 5)]
        async with anyio.create_task_group() as tg:
            await start_behind_one(tg, callers)
            assert b._room is not None
            assert b._room.waiting == 2
            gate.open_all()
        assert all(c.error is None for c in callers)
        assert planned[:2] == [(1, False), (2, True)]


async def test_auto_plans_with_the_rate_of_samples_arriving_while_every_slot_is_busy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stream, then callers that wait for their results: the rate follows both."""
    monkeypatch.setattr(batcher._core, "_DRIFT_CHECK_EVERY", 1)
    clock = ManualClock()
    gate = ChunkGate()
    config = BatcherConfig(
        batch_sizes=(1, 2, 4), strategy="auto", max_inflight_chunks=1, profile_budget=0.05
    )
    async with Batcher(models.mlp((16, 32, 8)), config) as b:
        assert b.statistics().arrival_rate == 0.0
        b._arrival_meter.clock = clock
        b._chunk_hook = gate
        callers = [Caller(b, sample) for sample in rng_samples((16,), 4)]
        async with anyio.create_task_group() as tg:
            # The only slot is busy with the first sample, held by the gate, while the
            # other 3 come.
            await start_behind_one(tg, callers)
            clock.now = 0.010
            gate.open_all()
        assert all(c.error is None for c in callers)
        # 3 samples in the 10 ms the slot was busy; the chunk that ran them took no time
        # on the manual clock, so it added no evidence either way.
        assert b.statistics().arrival_rate == pytest.approx(300.0)

        def take_ten_milliseconds(chunk: object) -> None:
            clock.now += 0.010

        b._chunk_hook = take_ten_milliseconds
        for sample in rng_samples((16,), 20):
            await b.submit(sample)  # the slot is free again whenever the next one comes
        assert b.statistics().arrival_rate == 0.0


async def test_only_auto_reports_an_arrival_rate() -> None:
    config = BatcherConfig(batch_sizes=(1, 2), strategy="decompose")
    async with Batcher(models.mlp((16, 32, 8)), config) as b:
        await b.submit(rng_samples((16,), 1)[0])
    assert b.statistics().arrival_rate is None
