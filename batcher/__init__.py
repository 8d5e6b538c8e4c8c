"""batcher: single inference requests in, efficient batched OpenVINO inference out."""

import contextlib

from ._config import BatcherConfig
from ._core import Batcher, Output
from ._costs import CostTable
from ._errors import (
    BatcherClosed,
    BatcherError,
    DeadlineExceeded,
    InferenceError,
    InvalidSample,
    QueueFull,
)
from ._model import ModelSpec, TensorSpec
from ._planner import Chunk, estimated_time, plan, plan_chunks, plan_cost_based, plan_padded
from ._stats import BatcherStatistics

__all__ = [
    "Batcher",
    "BatcherClosed",
    "BatcherConfig",
    "BatcherError",
    "BatcherStatistics",
    "Chunk",
    "CostTable",
    "DeadlineExceeded",
    "InferenceError",
    "InvalidSample",
    "ModelSpec",
    "Output",
    "QueueFull",
    "TensorSpec",
    "estimated_time",
    "plan",
    "plan_chunks",
    "plan_cost_based",
    "plan_padded",
]

__version__ = "0.1.0"

# Report public objects as batcher.X, not batcher._module.X (as anyio and trio do).
for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("batcher._"):
        with contextlib.suppress(AttributeError, TypeError):
            _obj.__module__ = __name__
del _name, _obj
