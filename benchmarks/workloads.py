"""The models under test and their fixed-seed request samples."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import openvino as ov

from batcher import models

__all__ = ["IDENTITY", "WORKLOADS", "Sample", "Workload"]

Sample = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Workload:
    """One reference model and the shape of one request (no batch axis)."""

    name: str
    build: Callable[[], ov.Model]
    sample_shape: tuple[int, ...]
    description: str

    def samples(self, count: int, seed: int) -> list[Sample]:
        """``count`` distinct samples; the same seed gives every contender the same data."""
        rng = np.random.default_rng(seed)
        return [rng.standard_normal(self.sample_shape).astype(np.float32) for _ in range(count)]

    def batch_of(self, samples: list[Sample], size: int) -> npt.NDArray[Any]:
        """``size`` samples stacked on a new batch axis, cycling through ``samples``."""
        return np.stack([samples[i % len(samples)] for i in range(size)])


WORKLOADS: dict[str, Workload] = {
    "mlp": Workload("mlp", models.mlp, (256,), "MLP 256->1024->1024->10"),
    "cnn": Workload("cnn", models.cnn, (3, 64, 64), "CNN 3x64x64, 3 conv blocks"),
}

#: Inference that costs almost nothing, so a run through it times the scheduler alone.
IDENTITY = Workload("identity", models.identity, (16,), "identity, 16 features")
