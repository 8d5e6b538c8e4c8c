"""How fast samples arrive while every device slot is busy: ``auto``'s open-stream signal."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["ArrivalMeter"]

# Each window's evidence keeps this weight for the next: recent windows count most, and
# when a closed loop follows a stream (busy time, no arrivals) the rate halves per window.
_CARRY = 0.5
# Less busy time than this, even summed over recent windows, says nothing about arrivals
# then: the rate stays what it was.
_MIN_BUSY_SECONDS = 1e-3


class ArrivalMeter:
    """Samples per second that arrive while every slot is busy, over recent busy time.

    Only those arrivals matter to planning: a sample that finds a free slot is planned
    with the others at once, one that comes while every slot is busy waits for a plan
    already made. The owner counts them (:meth:`arrived`) and marks when every slot
    becomes busy and when one frees up; :meth:`close_window` turns a window's counts into
    a rate.

    Arrivals and busy seconds are summed with older windows' (halved at each window)
    before dividing, so a window weighs as much as the busy time it saw. Taken alone, a
    window with a moment of busy time at light load and no arrival in it would read as
    "no stream", and one with a single arrival in that moment as a flood.
    """

    __slots__ = ("_arrivals", "_busy_seconds", "_busy_since", "clock", "rate")

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        #: Where busy time is read from; tests substitute a manual clock.
        self.clock = clock
        #: The last measured rate (samples per second), 0.0 until there is busy time.
        self.rate = 0.0
        self._arrivals = 0.0
        self._busy_seconds = 0.0
        self._busy_since = 0.0

    def arrived(self) -> None:
        """A sample came while every slot was busy."""
        self._arrivals += 1.0

    def all_busy(self) -> None:
        """The last free slot was just taken."""
        self._busy_since = self.clock()

    def slot_freed(self) -> None:
        """A slot came free after every slot was busy."""
        self._busy_seconds += self.clock() - self._busy_since

    def close_window(self) -> float:
        """Fold this window into the rate and start the next; returns the rate."""
        if self._busy_seconds >= _MIN_BUSY_SECONDS:
            self.rate = self._arrivals / self._busy_seconds
        self._arrivals *= _CARRY
        self._busy_seconds *= _CARRY
        return self.rate
