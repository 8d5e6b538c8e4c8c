"""Event-loop-native primitives: one-shot signals, thread hand-off, the queue's room.

Every request waits on its own signal, so the per-request cost of that signal is the
batcher's per-request floor. anyio's portable Event adds layers on each ``set`` and ``wait``;
a bare asyncio future (or a trio Event) is what anyio itself would use underneath.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

__all__ = ["QueueRoom", "Signal", "loop_clock", "signal_factory", "threadsafe_call_soon"]


class Signal(Protocol):
    def set(self) -> None: ...
    def is_set(self) -> bool: ...
    def wait(self) -> Awaitable[object]: ...


class _FutureSignal:
    """A one-shot event over an asyncio future (no coroutine frame per wait)."""

    __slots__ = ("_future", "_loop", "_set")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._future: asyncio.Future[None] = loop.create_future()
        self._set = False

    def set(self) -> None:
        self._set = True
        if not self._future.done():
            self._future.set_result(None)

    def is_set(self) -> bool:
        return self._set

    def wait(self) -> Awaitable[object]:
        if self._future.cancelled():
            # Cancelling a wait cancels the future itself: waiting again needs a fresh one.
            self._future = self._loop.create_future()
            if self._set:
                self._future.set_result(None)
        return self._future


def _asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The asyncio loop running this task, or None when anyio runs on trio."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    return loop if asyncio.current_task() is not None else None


def signal_factory() -> Callable[[], Signal]:
    """A maker of signals for the event loop running in this thread."""
    loop = _asyncio_loop()
    if loop is not None:
        return lambda: _FutureSignal(loop)
    import trio  # anyio runs on asyncio or trio; this is trio

    return trio.Event


def threadsafe_call_soon() -> Callable[..., object]:
    """``call(fn, *args)`` from any thread runs ``fn(*args)`` soon on this event loop.

    It never blocks the calling thread (unlike ``anyio.from_thread.run_sync``, which waits
    for the result): OpenVINO-side threads hand results over and move on.
    """
    loop = _asyncio_loop()
    if loop is not None:
        return loop.call_soon_threadsafe
    import trio

    return trio.lowlevel.current_trio_token().run_sync_soon


def loop_clock() -> Callable[[], float]:
    """The running loop's clock: the one anyio deadlines (``move_on_at``) are measured on."""
    loop = _asyncio_loop()
    if loop is not None:
        return loop.time
    import trio

    return trio.current_time


class QueueRoom:
    """Free places in a bounded queue, handed to waiters first come, first served.

    Taking a place when one is free costs an integer decrement, not a checkpoint.
    Withdrawing a waiter costs O(1) too: it is only marked, and skipped when its turn comes,
    because timeouts withdraw waiters in bulk from a long line when a server is overloaded.
    """

    __slots__ = ("_make_signal", "_waiters", "_withdrawn", "free")

    def __init__(self, size: int, make_signal: Callable[[], Signal]) -> None:
        self.free = size
        self._make_signal = make_signal
        self._waiters: deque[Signal] = deque()
        # Waiters still in the line that no longer want a place.
        self._withdrawn: set[Signal] = set()

    @property
    def waiting(self) -> int:
        """Waiters still wanting a place."""
        return len(self._waiters) - len(self._withdrawn)

    def try_take(self) -> bool:
        if self.free > 0 and (not self._waiters or not self.waiting):
            self.free -= 1
            return True
        return False

    def enqueue_waiter(self) -> Signal:
        """A signal set when a place has been handed to this waiter."""
        waiter = self._make_signal()
        self._waiters.append(waiter)
        return waiter

    def abandon(self, waiter: Signal) -> None:
        """Withdraw a waiter (cancelled or timed out); give back a place it already got.

        Once per waiter: a second call would mark a waiter no longer in the line.
        """
        if waiter.is_set():
            self.give_back()
            return
        self._withdrawn.add(waiter)
        # A line that only grows (a stuck device, callers timing out) must not keep every
        # withdrawn waiter. Rebuilding it once more than half is withdrawn costs O(1) per
        # withdrawal, amortized.
        if 2 * len(self._withdrawn) > len(self._waiters):
            self._waiters = deque(w for w in self._waiters if w not in self._withdrawn)
            self._withdrawn.clear()

    def _next_waiter(self) -> Signal | None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if waiter in self._withdrawn:
                self._withdrawn.discard(waiter)
            else:
                return waiter
        return None

    def give_back(self) -> None:
        waiter = self._next_waiter()
        if waiter is not None:
            waiter.set()
        else:
            self.free += 1

    def wake_all(self) -> None:
        """Hand every waiter a place so each can see the queue closed (and give it back)."""
        while (waiter := self._next_waiter()) is not None:
            self.free -= 1
            waiter.set()
