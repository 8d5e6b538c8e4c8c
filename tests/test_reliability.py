"""Queue policy: bounded queue, deadlines, priorities."""

from __future__ import annotations

import anyio
import numpy as np
import pytest
from support import (
    Caller,
    ChunkGate,
    assert_close,
    batch1_reference,
    rng_samples,
    settle,
    start_behind_one,
)

from batcher import Batcher, BatcherClosed, BatcherConfig, DeadlineExceeded, QueueFull, models

pytestmark = pytest.mark.anyio

SMALL_MLP = (16, 32, 8)


def one_slot(**kwargs: object) -> BatcherConfig:
    return BatcherConfig(max_inflight_chunks=1, strategy="decompose", **kwargs)  # type: ignore[arg-type]


async def test_full_queue_rejects_nowait_and_makes_submit_wait_for_room() -> None:
    gate = ChunkGate()
    samples = rng_samples((16,), 5)
    expected = batch1_reference(models.mlp(SMALL_MLP), samples)
    config = one_slot(max_queue_size=2, batch_sizes=(1,))
    async with Batcher(models.mlp(SMALL_MLP), config) as b, anyio.create_task_group() as tg:
        b._chunk_hook = gate
        callers = [Caller(b, s) for s in samples]
        tg.start_soon(callers[0].run)
        await settle()  # running, held
        tg.start_soon(callers[1].run)
        tg.start_soon(callers[2].run)
        await settle()
        assert b.statistics().queue_depth == 2
        with pytest.raises(QueueFull, match="max_queue_size=2"):
            await b.submit_nowait(samples[3])
        tg.start_soon(callers[4].run)  # waits for room, not queued yet
        await settle()
        stats = b.statistics()
        assert (stats.queue_depth, stats.rejected, stats.submitted) == (2, 1, 3)
        gate.open_all()
    for i in (0, 1, 2, 4):
        assert callers[i].error is None
        assert_close(callers[i].result, expected[i])
    assert b.statistics().accounted


async def test_reject_policy_makes_submit_fail_at_once() -> None:
    gate = ChunkGate()
    config = one_slot(max_queue_size=1, on_full="reject")
    async with Batcher(models.mlp(SMALL_MLP), config) as b, anyio.create_task_group() as tg:
        b._chunk_hook = gate
        tg.start_soon(Caller(b, np.zeros(16, np.float32)).run)
        await settle()
        tg.start_soon(Caller(b, np.zeros(16, np.float32)).run)
        await settle()
        with pytest.raises(QueueFull):
            await b.submit(np.zeros(16, np.float32))
        gate.open_all()


async def test_deadline_passing_in_the_queue_drops_the_sample() -> None:
    gate = ChunkGate()
    samples = rng_samples((16,), 3)
    async with Batcher(models.mlp(SMALL_MLP), one_slot()) as b, anyio.create_task_group() as tg:
        b._chunk_hook = gate
        running = Caller(b, samples[0])
        tg.start_soon(running.run)
        await settle()
        late = Caller(b, samples[1], timeout=0.02)
        patient = Caller(b, samples[2])
        tg.start_soon(late.run)
        tg.start_soon(patient.run)
        await late.done.wait()  # the held chunk keeps it queued past its deadline
        assert isinstance(late.error, DeadlineExceeded)
        assert isinstance(late.error, TimeoutError)
        assert "the sample was not computed" in str(late.error)
        assert b.statistics().queue_depth == 1
        gate.open_all()
    stats = b.statistics()
    assert (stats.expired, stats.completed) == (1, 2)
    assert sum(stats.samples_per_size.values()) == 2  # no device time for the expired one
    assert patient.error is None
    assert stats.accounted


async def test_config_default_timeout_applies_and_a_running_sample_still_finishes() -> None:
    gate = ChunkGate()
    config = one_slot(default_timeout=0.02)
    samples = rng_samples((16,), 2)
    expected = batch1_reference(models.mlp(SMALL_MLP), samples)
    async with Batcher(models.mlp(SMALL_MLP), config) as b, anyio.create_task_group() as tg:
        b._chunk_hook = gate
        running = Caller(b, samples[0])
        queued = Caller(b, samples[1])
        tg.start_soon(running.run)
        await settle()
        tg.start_soon(queued.run)
        await queued.done.wait()
        assert isinstance(queued.error, DeadlineExceeded)
        # The running sample's deadline passed too, but it was already on the device.
        gate.open_all()
    assert running.error is None
    assert_close(running.result, expected[0])


async def test_timeout_argument_is_validated() -> None:
    async with Batcher(models.mlp(SMALL_MLP), one_slot()) as b:
        with pytest.raises(ValueError, match="timeout must be > 0 seconds"):
            await b.submit(np.zeros(16, np.float32), timeout=0)


async def test_higher_priority_is_planned_first() -> None:
    gate = ChunkGate()
    config = one_slot(priority_levels=3, batch_sizes=(1,))
    order: list[Caller] = []
    async with Batcher(models.mlp(SMALL_MLP), config) as b, anyio.create_task_group() as tg:
        b._chunk_hook = gate
        tg.start_soon(Caller(b, np.zeros(16, np.float32)).run)
        await settle()
        low1 = Caller(b, np.zeros(16, np.float32), priority=0)
        mid = Caller(b, np.zeros(16, np.float32), priority=1)
        low2 = Caller(b, np.zeros(16, np.float32), priority=0)
        high = Caller(b, np.zeros(16, np.float32), priority=2)
        for caller in (low1, mid, low2, high):
            tg.start_soon(caller.run, order)
            await settle()
        gate.open_all()
    assert order == [high, mid, low1, low2]


async def test_priority_outside_the_configured_levels_is_rejected() -> None:
    async with Batcher(models.mlp(SMALL_MLP), one_slot(priority_levels=2)) as b:
        with pytest.raises(ValueError, match=r"priority must be an integer in \[0, 1\]"):
            await b.submit(np.zeros(16, np.float32), priority=2)


async def test_low_priority_is_not_starved_past_its_deadline() -> None:
    """A low-priority request behind a stream of high ones still ends: at its deadline."""
    gate = ChunkGate()
    config = one_slot(priority_levels=2, batch_sizes=(1,))
    async with Batcher(models.mlp(SMALL_MLP), config) as b, anyio.create_task_group() as tg:
        b._chunk_hook = gate
        tg.start_soon(Caller(b, np.zeros(16, np.float32)).run)
        await settle()
        low = Caller(b, np.zeros(16, np.float32), priority=0, timeout=0.05)
        tg.start_soon(low.run)
        highs = [Caller(b, np.zeros(16, np.float32), priority=1) for _ in range(3)]
        for caller in highs:
            tg.start_soon(caller.run)
        await low.done.wait()
        assert isinstance(low.error, DeadlineExceeded)
        gate.open_all()
    assert all(c.error is None for c in highs)


async def test_max_delay_holds_a_partial_chunk_only_while_the_device_is_busy() -> None:
    gate = ChunkGate(hold_if=lambda chunk: chunk.samples == 1)
    config = BatcherConfig(
        max_inflight_chunks=2, max_delay=30.0, strategy="decompose", batch_sizes=(1, 2, 4, 8)
    )
    samples = rng_samples((16,), 9)
    async with Batcher(models.mlp(SMALL_MLP), config) as b, anyio.create_task_group() as tg:
        b._chunk_hook = gate
        busy = Caller(b, samples[0])
        tg.start_soon(busy.run)
        await settle()  # nothing else was running, so it went at once, alone
        assert b.statistics().inflight_chunks == 1
        waiting = [Caller(b, s) for s in samples[1:4]]
        for caller in waiting:
            tg.start_soon(caller.run)
        await settle()
        # A slot is free, but a chunk is running: three samples wait for companions.
        assert b.statistics().queue_depth == 3
        more = [Caller(b, s) for s in samples[4:]]
        for caller in more:
            tg.start_soon(caller.run)
        for caller in waiting + more:
            await caller.done.wait()  # eight pending fill the largest size: no more waiting
        gate.open_all()
    assert [c.size for c in gate.seen] == [1, 8]


async def test_bad_priority_values_take_no_queue_room() -> None:
    config = one_slot(max_queue_size=1, priority_levels=2)
    async with Batcher(models.mlp(SMALL_MLP), config) as b:
        for bad in (None, 0.0, "1", True):
            with pytest.raises(ValueError, match="priority must be an integer"):
                await b.submit(np.zeros(16, np.float32), priority=bad)  # type: ignore[arg-type]
        # Integer-like values are fine, and the one queue place is still free.
        await b.submit(np.zeros(16, np.float32), priority=np.int64(1))  # type: ignore[arg-type]
        await b.submit_nowait(np.zeros(16, np.float32))


async def test_cancelling_the_code_around_the_batcher_still_serves_its_queue() -> None:
    gate = ChunkGate()
    samples = rng_samples((16,), 3)
    expected = batch1_reference(models.mlp(SMALL_MLP), samples)
    config = one_slot(drain_timeout=None)
    host_scope = anyio.CancelScope()
    opened = anyio.Event()
    batcher = Batcher(models.mlp(SMALL_MLP), config)

    async def host() -> None:
        with host_scope:
            async with batcher:
                batcher._chunk_hook = gate
                opened.set()
                await anyio.sleep_forever()

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(host)
            await opened.wait()
            callers = [Caller(batcher, s) for s in samples]
            await start_behind_one(tg, callers)
            host_scope.cancel()  # the block is left by cancellation: it must still drain
            await settle()
            gate.open_all()
    for caller, wanted in zip(callers, expected, strict=True):
        assert caller.error is None
        assert_close(caller.result, wanted)


async def test_after_an_internal_failure_new_samples_are_refused_not_queued() -> None:
    samples = rng_samples((16,), 2)
    async with Batcher(models.mlp(SMALL_MLP), one_slot()) as b:

        def broken_delivery(*args: object) -> None:
            raise RuntimeError("a bug while delivering")

        b._deliver = broken_delivery  # type: ignore[method-assign]
        with pytest.raises(BatcherClosed, match="failed internally"):
            await b.submit(samples[0])
        # Nothing would serve it: refused at once with the reason, never left waiting.
        with pytest.raises(BatcherClosed, match=r"internal failure.*a bug while delivering"):
            await b.submit(samples[1])
        assert b.statistics().queue_depth == 0
