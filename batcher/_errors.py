"""The exceptions a caller of :class:`~batcher.Batcher` can see.

Every failed request gets an exception object of its own: two callers never share one
instance, so one caller's traceback or ``add_note`` never leaks into another's.
"""

from __future__ import annotations

__all__ = [
    "BatcherClosed",
    "BatcherError",
    "DeadlineExceeded",
    "InferenceError",
    "InvalidSample",
    "QueueFull",
]


class BatcherError(Exception):
    """Base class of every error raised by batcher itself."""


class InvalidSample(BatcherError, ValueError):
    """A sample does not match the model's inputs (names, shape or dtype).

    Raised by ``submit`` before the sample is queued: it never reaches a batch.
    """


class BatcherClosed(BatcherError):
    """The batcher is closed (or closing) and does not accept or finish this request."""


class QueueFull(BatcherError):
    """The queue holds ``max_queue_size`` samples and the request asked not to wait."""


class DeadlineExceeded(BatcherError, TimeoutError):
    """The request's deadline passed while it was still queued; it was never computed."""


class InferenceError(BatcherError):
    """The chunk holding this sample failed in OpenVINO; ``__cause__`` is the original error."""
