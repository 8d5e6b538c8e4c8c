"""A frozen snapshot of what a :class:`~batcher.Batcher` has done so far."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ._costs import CostTable

__all__ = ["BatcherStatistics"]


@dataclass(frozen=True, slots=True)
class BatcherStatistics:
    """Counters at one instant.

    Every submitted request is, at any instant, exactly one of: queued (``queue_depth``),
    running (``inflight_samples``), ``completed``, ``failed``, ``cancelled`` or ``expired``;
    :attr:`accounted` checks that the numbers add up. ``rejected`` (queue full) and
    ``invalid`` (bad sample) requests were never submitted to the queue.
    """

    submitted: int
    completed: int
    failed: int
    cancelled: int
    expired: int
    rejected: int
    invalid: int
    queue_depth: int
    inflight_chunks: int
    inflight_samples: int
    #: Inferences run per compiled batch size (dynamic mode: per chunk size).
    chunks_per_size: Mapping[int, int]
    #: Real samples computed per compiled batch size.
    samples_per_size: Mapping[int, int]
    #: Chunks that failed, per compiled batch size.
    failed_chunks_per_size: Mapping[int, int]
    #: Rows computed only as padding and thrown away.
    padded_rows: int
    #: Chunks that may run at once (device slots).
    slots: int
    compile_seconds: float
    profile_seconds: float
    #: The cost table the planner currently uses (strategy "auto" with static sizes only,
    #: else ``None``).
    cost_table: CostTable | None
    #: Samples per second arriving while every slot is busy, as measured when the current
    #: plans were made: at least one expected before the fewest-chunks plan ends makes
    #: ``auto`` plan for a stream (strategy "auto" with static sizes only, else ``None``).
    arrival_rate: float | None

    @property
    def accounted(self) -> bool:
        """True when every submitted request is in exactly one state."""
        return self.submitted == (
            self.queue_depth
            + self.inflight_samples
            + self.completed
            + self.failed
            + self.cancelled
            + self.expired
        )

    @property
    def mean_chunk_size(self) -> float:
        """Real samples per inference run, on average (0 before the first)."""
        chunks = sum(self.chunks_per_size.values())
        return sum(self.samples_per_size.values()) / chunks if chunks else 0.0
