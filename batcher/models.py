"""Reference OpenVINO models built in code (opset API, fixed-seed weights, no downloads).

The demo, the tests and the benchmarks share these, so every figure is about the same
networks. Every model has a dynamic batch axis first; the Batcher fixes it per size.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import openvino as ov
import openvino.opset13 as ops

__all__ = ["cnn", "identity", "mlp", "two_heads"]


def _named(node: Any, name: str) -> Any:
    node.set_friendly_name(name)
    node.output(0).get_tensor().set_names({name})
    return node


def _weights(rng: np.random.Generator, *shape: int) -> Any:
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    return ops.constant((rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32))


def mlp(sizes: tuple[int, ...] = (256, 1024, 1024, 10), seed: int = 0) -> ov.Model:
    """Dense layers with ReLU between them: input ``x`` (sizes[0],), output ``logits``."""
    rng = np.random.default_rng(seed)
    x = _named(ops.parameter([-1, sizes[0]], np.float32, name="x"), "x")
    node: Any = x
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        node = ops.matmul(node, _weights(rng, fan_out, fan_in), False, True)
        node = ops.add(node, ops.constant(rng.standard_normal(fan_out).astype(np.float32) * 0.1))
        if i < len(sizes) - 2:
            node = ops.relu(node)
    logits = _named(ops.result(node), "logits")
    return ov.Model([logits], [x], "mlp")


def cnn(channels: tuple[int, ...] = (16, 32, 64), classes: int = 10, seed: int = 0) -> ov.Model:
    """A small image classifier: input ``image`` (3, 64, 64), output ``logits`` (classes,)."""
    rng = np.random.default_rng(seed)
    image = _named(ops.parameter([-1, 3, 64, 64], np.float32, name="image"), "image")
    node: Any = image
    fan_in = 3
    for width in channels:
        kernel = _weights(rng, width, fan_in, 3, 3)
        node = ops.convolution(node, kernel, [1, 1], [1, 1], [1, 1], [1, 1])
        node = ops.relu(node)
        node = ops.max_pool(node, [2, 2], [1, 1], [0, 0], [0, 0], [2, 2]).output(0)
        fan_in = width
    node = ops.reduce_mean(node, ops.constant(np.array([2, 3], np.int64)), keep_dims=False)
    node = ops.matmul(node, _weights(rng, classes, fan_in), False, True)
    logits = _named(ops.result(node), "logits")
    return ov.Model([logits], [image], "cnn")


def identity(features: int = 16) -> ov.Model:
    """Returns its input: inference costs almost nothing, so timings show the batcher's own."""
    x = _named(ops.parameter([-1, features], np.float32, name="x"), "x")
    y = _named(ops.result(ops.multiply(x, ops.constant(np.float32(1.0)))), "y")
    return ov.Model([y], [x], "identity")


def two_heads(seed: int = 0) -> ov.Model:
    """Two inputs (``a`` (8,), ``b`` (4,) int32) and two outputs (``sum`` (8,), ``score`` (1,))."""
    rng = np.random.default_rng(seed)
    a = _named(ops.parameter([-1, 8], np.float32, name="a"), "a")
    b = _named(ops.parameter([-1, 4], np.int32, name="b"), "b")
    b_float = ops.convert(b, np.float32)
    mixed = ops.matmul(b_float, _weights(rng, 8, 4), False, True)
    total = _named(ops.result(ops.add(a, mixed)), "sum")
    score = ops.reduce_sum(ops.multiply(a, a), ops.constant(np.array([1], np.int64)), True)
    score_out = _named(ops.result(score), "score")
    return ov.Model([total, score_out], [a, b], "two_heads")
