"""One line per finished step with elapsed time and an ETA, so long runs never look hung."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


def _clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60:d}:{seconds % 60:02d}"


class Progress:
    """Steps are weighted by their planned seconds; the ETA scales the plan by the pace so far."""

    def __init__(self, steps: int, planned_seconds: float, stream: TextIO = sys.stdout) -> None:
        self._steps = steps
        self._planned = planned_seconds
        self._done_steps = 0
        self._done_planned = 0.0
        self._started = time.perf_counter()
        self._stream = stream

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._started

    def step(self, planned_seconds: float, message: str) -> None:
        """Report one finished step that was planned to take ``planned_seconds``."""
        self._done_steps += 1
        self._done_planned += planned_seconds
        elapsed = self.elapsed
        pace = elapsed / self._done_planned if self._done_planned > 0 else 1.0
        eta = max(0.0, self._planned - self._done_planned) * pace
        width = len(str(self._steps))
        print(
            f"[{self._done_steps:>{width}}/{self._steps} {_clock(elapsed)} ETA {_clock(eta)}] "
            f"{message}",
            file=self._stream,
            flush=True,
        )

    def skip(self, steps: int, planned_seconds: float) -> None:
        """Count steps that will not run (a contender failed), so the ETA stays right."""
        self._steps -= steps
        self._planned -= planned_seconds

    def note(self, message: str) -> None:
        """A line that is not a step (a phase starting, a skipped contender)."""
        print(f"[{_clock(self.elapsed)}] {message}", file=self._stream, flush=True)
