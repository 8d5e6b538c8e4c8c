"""How samples arrive: how fast while every device slot is busy, and whether callers just
served are about to come back. ``auto``'s signals that more samples are on their way."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["ArrivalMeter"]

# Evidence halves in weight for every this many seconds of newer busy time: the rate
# covers about the last few tens of milliseconds with every slot busy, however long or
# short the windows between plans are (64 chunks: under a millisecond of busy time at
# light load, a second on a slow model at saturation).
_HALF_LIFE_SECONDS = 0.02
# Less busy time than this in the evidence says nothing about arrivals then: the rate
# stays what it was.
_MIN_BUSY_SECONDS = 1e-3
# Fewer arrivals than this over the recent busy time are as good as none: the rate is then
# exactly 0, where it would otherwise shrink at every window, re-deriving every plan.
_LEAST_ARRIVALS = 0.5
# Idle for longer than this since the last chunk landed, the batcher has seen its callers
# leave rather than come back: closed-loop callers resubmit within moments of their answer
# (when both slots land together, every one of them has been answered for an instant).
_FORGET_AFTER_IDLE_SECONDS = 0.02


class ArrivalMeter:
    """Samples per second that arrive while every slot is busy, over recent busy time.

    Only those arrivals matter to planning: a sample that finds a free slot is planned
    with the others at once, one that comes while every slot is busy waits for a plan
    already made. The owner counts them (:meth:`arrived`), marks when every slot becomes
    busy and when one frees up, and turns a window's counts into a rate with
    :meth:`close_window`.

    The rate is arrivals over busy seconds, both summed over past windows with weights
    that halve with every :data:`_HALF_LIFE_SECONDS` of newer busy time. So a window weighs
    as much as the busy time it saw: taken alone, a window with a moment of busy time at
    light load and no arrival in it would read as "no stream", and one with a single
    arrival in that moment as a flood. Windows in which the slots are never all busy
    change nothing: they say nothing about arrivals while every slot is busy. A rate left
    over from a stream then only makes ``auto`` plan the fewest chunks, as ``decompose``
    does.

    The meter also keeps the most samples outstanding at once (queued or running) over
    this window and the last, since the batcher was last idle for a while (see
    :data:`_FORGET_AFTER_IDLE_SECONDS`): callers that wait for their results hold that
    many, and when fewer are outstanding, the rest were just answered and are about to
    submit again (:meth:`returning`). That is a closed loop's own stream, invisible to
    the rate: its callers come back while a slot is still free.
    """

    __slots__ = (
        "_arrivals",
        "_busy_seconds",
        "_busy_since",
        "_landed_at",
        "_last_peak",
        "_window_arrivals",
        "_window_busy_seconds",
        "_window_peak",
        "clock",
        "rate",
    )

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        #: Where busy time is read from; tests substitute a manual clock.
        self.clock = clock
        #: The last measured rate (samples per second), 0.0 until there is busy time.
        self.rate = 0.0
        self._arrivals = 0.0
        self._busy_seconds = 0.0
        self._busy_since = 0.0
        self._window_arrivals = 0
        self._window_busy_seconds = 0.0
        self._window_peak = self._last_peak = 0
        self._landed_at = 0.0

    def outstanding(self, count: int) -> None:
        """A sample was submitted; ``count`` samples are now queued or running."""
        if count == 1 and self.clock() - self._landed_at > _FORGET_AFTER_IDLE_SECONDS:
            # The batcher was idle a while: everyone who held a sample left and none came
            # back, so the earlier peak no longer says who is coming.
            self._window_peak = self._last_peak = 1
        elif count > self._window_peak:
            self._window_peak = count

    def chunk_landed(self) -> None:
        """A chunk finished; its callers are being answered."""
        self._landed_at = self.clock()

    def returning(self, count: int) -> int:
        """How many samples fewer than at the recent peak are queued or running, when
        ``count`` are: their callers were answered (or gave up) a moment ago, and callers
        that wait for their results submit again."""
        return max(self._window_peak, self._last_peak) - count

    def arrived(self) -> None:
        """A sample came while every slot was busy."""
        self._window_arrivals += 1

    def all_busy(self) -> None:
        """The last free slot was just taken."""
        self._busy_since = self.clock()

    def slot_freed(self) -> None:
        """A slot came free after every slot was busy."""
        self._window_busy_seconds += self.clock() - self._busy_since

    def close_window(self) -> float:
        """Fold this window into the rate and start the next; returns the rate."""
        busy = self._window_busy_seconds
        kept = 0.5 ** (busy / _HALF_LIFE_SECONDS)
        self._arrivals = self._arrivals * kept + self._window_arrivals
        self._busy_seconds = self._busy_seconds * kept + busy
        self._window_arrivals = 0
        self._window_busy_seconds = 0.0
        self._last_peak, self._window_peak = self._window_peak, 0
        if self._arrivals < _LEAST_ARRIVALS:
            self._arrivals = 0.0
        if self._busy_seconds >= _MIN_BUSY_SECONDS:
            self.rate = self._arrivals / self._busy_seconds
        return self.rate
