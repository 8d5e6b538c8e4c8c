from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import openvino as ov
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

from batcher import (
    Batcher,
    BatcherClosed,
    BatcherConfig,
    InferenceError,
    InvalidSample,
    models,
)

pytestmark = pytest.mark.anyio

SMALL_MLP = (16, 32, 8)
FAST = {"strategy": "decompose"}  # no start-up profiling: keeps tests quick


async def run_concurrently(batcher: Batcher, samples: list[Any], seed: int) -> list[Any]:
    """Submit every sample from its own task, arriving at random moments."""
    results: list[Any] = [None] * len(samples)
    rng = random.Random(seed)
    delays = [rng.random() * 0.002 for _ in samples]

    async def one(i: int) -> None:
        await anyio.sleep(delays[i])  # spreads arrivals; not used to synchronise anything
        results[i] = await batcher.submit(samples[i])

    async with anyio.create_task_group() as tg:
        for i in range(len(samples)):
            tg.start_soon(one, i)
    return results


@pytest.mark.parametrize(
    "config",
    [
        BatcherConfig(batch_sizes=(1, 2, 4, 8), strategy="decompose"),
        BatcherConfig(batch_sizes=(1, 3, 4), strategy="decompose"),
        BatcherConfig(batch_sizes=(4, 8), strategy="pad", pad_value=1e6),
        BatcherConfig(batch_sizes=(1, 2, 4, 8), strategy="auto", profile_budget=0.05),
        BatcherConfig(batch_sizes="dynamic", max_batch_size=8),
        BatcherConfig(batch_sizes=(1, 2, 4, 8), strategy="decompose", max_delay=0.001),
    ],
    ids=["decompose", "uneven-sizes", "pad", "auto", "dynamic", "max-delay"],
)
async def test_mlp_batched_results_equal_batch1_results(config: BatcherConfig) -> None:
    model = models.mlp(SMALL_MLP)
    samples = rng_samples((16,), 150, seed=1)
    expected = batch1_reference(model, samples)
    async with Batcher(model, config) as b:
        results = await run_concurrently(b, samples, seed=2)
        stats = b.statistics()
    for actual, wanted in zip(results, expected, strict=True):
        assert_close(actual, wanted)
    assert stats.completed == 150
    assert sum(stats.samples_per_size.values()) == 150
    if config.strategy == "pad":
        assert set(stats.chunks_per_size) <= {4, 8}
    assert stats.accounted


async def test_cnn_batched_results_equal_batch1_results() -> None:
    model = models.cnn()
    samples = rng_samples((3, 64, 64), 60, seed=3)
    expected = batch1_reference(model, samples)
    config = BatcherConfig(batch_sizes=(1, 2, 4, 8, 16), **FAST)  # type: ignore[arg-type]
    async with Batcher(model, config) as b:
        results = await run_concurrently(b, samples, seed=4)
    for actual, wanted in zip(results, expected, strict=True):
        assert_close(actual, wanted)


async def test_multi_input_model_takes_and_returns_mappings() -> None:
    model = models.two_heads()
    rng = np.random.default_rng(5)
    samples = [
        {"a": rng.standard_normal(8).astype(np.float32), "b": rng.integers(-5, 5, 4, np.int32)}
        for _ in range(20)
    ]
    expected = batch1_reference(model, samples)
    async with Batcher(model, BatcherConfig(**FAST)) as b:  # type: ignore[arg-type]
        assert b.spec.input_names == ("a", "b")
        assert b.spec.output_names == ("sum", "score")
        results = await run_concurrently(b, samples, seed=6)
    for actual, wanted in zip(results, expected, strict=True):
        assert_close(actual, wanted)


async def test_model_loads_from_an_ir_path(tmp_path: Path) -> None:
    model = models.mlp(SMALL_MLP)
    path = tmp_path / "mlp.xml"
    ov.save_model(model, path, compress_to_fp16=False)
    sample = rng_samples((16,), 1)[0]
    async with Batcher(str(path), BatcherConfig(**FAST)) as b:  # type: ignore[arg-type]
        assert_close(await b.submit(sample), batch1_reference(model, [sample])[0])


async def test_model_loads_from_an_onnx_path(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    rng = np.random.default_rng(8)
    weight = rng.standard_normal((6, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor("w", TensorProto.FLOAT, [6, 3], weight.ravel().tolist())],
    )
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    samples = rng_samples((6,), 10, seed=9)
    async with Batcher(str(path), BatcherConfig(**FAST)) as b:  # type: ignore[arg-type]
        results = await run_concurrently(b, samples, seed=10)
    for sample, result in zip(samples, results, strict=True):
        np.testing.assert_allclose(result, np.maximum(sample @ weight, 0), rtol=1e-5, atol=1e-6)


async def test_decomposition_uses_the_fewest_chunks() -> None:
    """13 queued samples on one slot run as 8, then 4 and 1 replanned with what is left."""
    gate = ChunkGate()
    config = BatcherConfig(batch_sizes=(1, 2, 4, 8), strategy="decompose", max_inflight_chunks=1)
    samples = rng_samples((16,), 14)
    async with Batcher(models.mlp(SMALL_MLP), config) as b, anyio.create_task_group() as tg:
        b._chunk_hook = gate
        first = Caller(b, samples[0])
        tg.start_soon(first.run)
        await settle()  # the first sample runs alone, held by the gate
        callers = [Caller(b, s) for s in samples[1:]]
        for caller in callers:
            tg.start_soon(caller.run)
        await settle()
        assert b.statistics().queue_depth == 13
        gate.open_all()
    assert [c.size for c in gate.seen] == [1, 8, 4, 1]
    assert all(c.error is None for c in callers)


async def test_results_are_copies_not_views_of_reused_buffers() -> None:
    samples = rng_samples((16,), 2, seed=7)
    config = BatcherConfig(batch_sizes=(1,), **FAST)  # type: ignore[arg-type]
    async with Batcher(models.mlp(SMALL_MLP), config) as b:
        first = await b.submit(samples[0])
        kept = first.copy()
        second = await b.submit(samples[1])  # reuses the same infer request and output buffer
    assert isinstance(first, np.ndarray)
    assert isinstance(second, np.ndarray)
    np.testing.assert_array_equal(first, kept)
    assert not np.shares_memory(first, second)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("sample", "message"),
    [
        (np.zeros((1, 16), np.float32), r"expected shape \(16,\) .* got \(1, 16\)"),
        (np.zeros(15, np.float32), r"expected shape \(16,\) .* got \(15,\)"),
        (np.zeros(16, np.complex64), "expected dtype float32, got complex64"),
        ({"y": np.zeros(16, np.float32)}, r"expected inputs \['x'\], got \['y'\]"),
        (object(), r"expected shape \(16,\)"),
    ],
)
async def test_bad_samples_fail_before_queueing(sample: object, message: str) -> None:
    async with Batcher(models.mlp(SMALL_MLP), BatcherConfig(**FAST)) as b:  # type: ignore[arg-type]
        with pytest.raises(InvalidSample, match=message):
            await b.submit(sample)
        stats = b.statistics()
        assert (stats.submitted, stats.invalid) == (0, 1)
        # The batcher keeps serving good samples.
        await b.submit(np.zeros(16, np.float32))
    assert issubclass(InvalidSample, ValueError)


async def test_casting_rules_follow_the_config() -> None:
    sample64 = np.arange(16, dtype=np.float64)
    async with Batcher(models.mlp(SMALL_MLP), BatcherConfig(**FAST)) as b:  # type: ignore[arg-type]
        lenient = await b.submit(sample64)  # same kind: float64 -> float32 accepted
    strict = BatcherConfig(input_casting="safe", **FAST)  # type: ignore[arg-type]
    async with Batcher(models.mlp(SMALL_MLP), strict) as b:
        with pytest.raises(InvalidSample, match="cannot be cast under input_casting='safe'"):
            await b.submit(sample64)
        assert_close(await b.submit(sample64.astype(np.float32)), lenient)


async def test_multi_input_errors_name_the_inputs() -> None:
    async with Batcher(models.two_heads(), BatcherConfig(**FAST)) as b:  # type: ignore[arg-type]
        with pytest.raises(InvalidSample, match=r"pass a mapping of \['a', 'b'\]"):
            await b.submit(np.zeros(8, np.float32))
        with pytest.raises(InvalidSample, match=r"missing \['b'\]"):
            await b.submit({"a": np.zeros(8, np.float32)})
        with pytest.raises(InvalidSample, match=r"unknown \['c'\]"):
            await b.submit(
                {"a": np.zeros(8, np.float32), "b": np.zeros(4, np.int32), "c": np.zeros(1)}
            )
        with pytest.raises(InvalidSample, match="input 'b': expected dtype int32, got float32"):
            await b.submit({"a": np.zeros(8, np.float32), "b": np.zeros(4, np.float32)})


async def test_dynamic_mode_rejects_outputs_without_the_batch_axis() -> None:
    import openvino.opset13 as ops

    x = ops.parameter([-1, 4], np.float32, name="x")
    total = ops.reduce_sum(x, ops.constant(np.array([0], np.int64)), keep_dims=True)
    model = ov.Model([ops.result(total)], [x])
    config = BatcherConfig(batch_sizes="dynamic")
    with pytest.raises(ValueError, match="every output must carry the batch axis first"):
        async with Batcher(model, config):
            pass


async def test_model_with_dynamic_feature_axis_is_rejected_with_the_reason() -> None:
    import openvino.opset13 as ops

    x = ops.parameter([-1, -1], np.float32, name="x")
    model = ov.Model([ops.result(ops.relu(x))], [x])
    with pytest.raises(ValueError, match="every axis but the first \\(batch\\) must be static"):
        async with Batcher(model, BatcherConfig(**FAST)):  # type: ignore[arg-type]
            pass


# ------------------------------------------------------------------ cancellation


async def test_caller_cancelled_while_queued_is_dropped_and_never_computed() -> None:
    gate = ChunkGate()
    config = BatcherConfig(max_inflight_chunks=1, **FAST)  # type: ignore[arg-type]
    samples = rng_samples((16,), 4)
    expected = batch1_reference(models.mlp(SMALL_MLP), samples)
    async with Batcher(models.mlp(SMALL_MLP), config) as b, anyio.create_task_group() as tg:
        b._chunk_hook = gate
        callers = [Caller(b, s) for s in samples]
        await start_behind_one(tg, callers)
        callers[2].scope.cancel()
        await callers[2].done.wait()
        stats = b.statistics()
        assert (stats.queue_depth, stats.cancelled) == (2, 1)
        gate.open_all()
    assert callers[2].cancelled
    for i in (0, 1, 3):
        assert_close(callers[i].result, expected[i])
    stats = b.statistics()
    assert sum(stats.samples_per_size.values()) == 3  # the cancelled sample never ran
    assert (stats.completed, stats.cancelled) == (3, 1)
    assert stats.accounted


async def test_caller_cancelled_during_inference_leaves_its_chunk_mates_alone() -> None:
    gate = ChunkGate()
    config = BatcherConfig(max_inflight_chunks=1, **FAST)  # type: ignore[arg-type]
    samples = rng_samples((16,), 3)
    expected = batch1_reference(models.mlp(SMALL_MLP), samples)
    async with Batcher(models.mlp(SMALL_MLP), config) as b, anyio.create_task_group() as tg:
        b._chunk_hook = gate
        callers = [Caller(b, s) for s in samples]
        tg.start_soon(callers[0].run)
        await settle()
        tg.start_soon(callers[1].run)
        tg.start_soon(callers[2].run)
        await settle()
        gate.release()  # the first chunk ends; callers 1 and 2 now run together, held
        await callers[0].done.wait()
        await settle()
        assert b.statistics().inflight_samples == 2
        callers[1].scope.cancel()
        await callers[1].done.wait()
        gate.open_all()
    assert callers[1].cancelled
    assert callers[1].result is None
    assert_close(callers[2].result, expected[2])
    assert gate.seen[1].samples == 2
    stats = b.statistics()
    assert (stats.completed, stats.cancelled, stats.inflight_samples) == (2, 1, 0)
    assert stats.accounted


# ------------------------------------------------------------------ failures


async def test_a_slow_chunk_does_not_hold_up_the_other_slot() -> None:
    gate = ChunkGate()
    gate.hold_if = lambda chunk: len(gate.seen) == 1  # hold the first chunk only
    config = BatcherConfig(max_inflight_chunks=2, **FAST)  # type: ignore[arg-type]
    samples = rng_samples((16,), 2)
    expected = batch1_reference(models.mlp(SMALL_MLP), samples)
    async with Batcher(models.mlp(SMALL_MLP), config) as b, anyio.create_task_group() as tg:
        b._chunk_hook = gate
        slow = Caller(b, samples[0])
        tg.start_soon(slow.run)
        await gate.wait_seen(1)  # inferred in the first slot, held there
        fast = Caller(b, samples[1])
        tg.start_soon(fast.run)
        await fast.done.wait()  # served by the second slot while the first is still busy
        assert_close(fast.result, expected[1])
        assert not slow.done.is_set()
        gate.open_all()
    assert_close(slow.result, expected[0])


async def test_failed_chunk_fails_only_its_own_callers_each_with_its_own_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate = ChunkGate(fail_if=lambda chunk: chunk.samples == 4)
    config = BatcherConfig(max_inflight_chunks=1, **FAST)  # type: ignore[arg-type]
    samples = rng_samples((16,), 6)
    expected = batch1_reference(models.mlp(SMALL_MLP), samples)
    async with Batcher(models.mlp(SMALL_MLP), config) as b:
        async with anyio.create_task_group() as tg:
            b._chunk_hook = gate
            callers = [Caller(b, s) for s in samples]
            await start_behind_one(tg, callers)
            gate.open_all()  # five queued samples run as 4 (fails) + 1
        failed = [c for c in callers if c.error is not None]
        assert len(failed) == 4
        errors = [c.error for c in failed]
        assert all(isinstance(e, InferenceError) for e in errors)
        assert len({id(e) for e in errors}) == 4  # one exception object per caller
        assert all(e is not None and isinstance(e.__cause__, RuntimeError) for e in errors)
        causes = {id(e.__cause__) for e in errors if e is not None}
        assert len(causes) == 1  # all chained to the one real cause
        assert "injected failure in a 4-row chunk" in str(errors[0])
        for i, caller in enumerate(callers):
            if caller.error is None:
                assert_close(caller.result, expected[i])
        # The batcher keeps serving after a failure.
        assert_close(await b.submit(samples[0]), expected[0])
        stats = b.statistics()
    assert stats.failed == 4
    assert stats.failed_chunks_per_size == {4: 1}
    assert "inference of a 4-row chunk failed (1 failure(s) at this size so far)" in caplog.text
    assert stats.completed == 3
    assert stats.accounted


# ------------------------------------------------------------------ lifecycle


async def test_submit_outside_the_context_raises_closed() -> None:
    b = Batcher(models.mlp(SMALL_MLP), BatcherConfig(**FAST))  # type: ignore[arg-type]
    with pytest.raises(BatcherClosed, match="not open yet"):
        await b.submit(np.zeros(16, np.float32))
    async with b:
        await b.submit(np.zeros(16, np.float32))
    with pytest.raises(BatcherClosed, match="closed and accepts no more samples"):
        await b.submit(np.zeros(16, np.float32))
    with pytest.raises(RuntimeError, match="entered only once"):
        async with b:
            pass


async def test_an_error_in_the_block_propagates_unwrapped() -> None:
    with pytest.raises(KeyError, match="mine"):
        async with Batcher(models.mlp(SMALL_MLP), BatcherConfig(**FAST)):  # type: ignore[arg-type]
            raise KeyError("mine")


async def test_exit_drains_queued_and_running_samples() -> None:
    gate = ChunkGate()
    config = BatcherConfig(max_inflight_chunks=1, **FAST)  # type: ignore[arg-type]
    samples = rng_samples((16,), 5)
    expected = batch1_reference(models.mlp(SMALL_MLP), samples)
    callers: list[Caller] = []
    async with anyio.create_task_group() as tg:
        async with Batcher(models.mlp(SMALL_MLP), config) as b:
            b._chunk_hook = gate
            callers = [Caller(b, s) for s in samples]
            await start_behind_one(tg, callers)
            assert b.statistics().queue_depth == 4
            gate.open_all()
        # Leaving the block waited for every queued sample.
        assert all(c.done.is_set() for c in callers)
    for caller, wanted in zip(callers, expected, strict=True):
        assert caller.error is None
        assert_close(caller.result, wanted)


async def test_bounded_drain_fails_the_leftovers_with_closed() -> None:
    gate = ChunkGate()
    config = BatcherConfig(max_inflight_chunks=1, drain_timeout=0.05, **FAST)  # type: ignore[arg-type]
    samples = rng_samples((16,), 3)
    async with anyio.create_task_group() as tg, Batcher(models.mlp(SMALL_MLP), config) as b:
        b._chunk_hook = gate
        callers = [Caller(b, s) for s in samples]
        for caller in callers:
            tg.start_soon(caller.run)
        await settle()
        await b.aclose()  # the held chunk never finishes within the bound
        for caller in callers:
            await caller.done.wait()
            assert isinstance(caller.error, BatcherClosed)
            assert "drain bound (0.05 s) passed" in str(caller.error)
        gate.open_all()  # the held inference may now end; nobody receives it
    stats = b.statistics()
    assert (stats.failed, stats.completed) == (3, 0)
    assert stats.accounted
