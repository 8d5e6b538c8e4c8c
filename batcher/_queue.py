"""The pending requests: priority levels, FIFO within a level, lazy removal."""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterator
from typing import Any

import numpy.typing as npt

from ._signals import Signal

__all__ = ["PendingQueue", "Request", "State"]


class State(enum.Enum):
    QUEUED = enum.auto()
    RUNNING = enum.auto()
    DONE = enum.auto()


class Request:
    """One submitted sample and the slot its caller waits on."""

    __slots__ = ("arrival", "deadline", "done", "error", "inputs", "priority", "result", "state")

    def __init__(
        self,
        inputs: tuple[npt.NDArray[Any], ...],
        priority: int,
        arrival: float,
        deadline: float,
        done: Signal,
    ) -> None:
        self.inputs = inputs
        self.arrival = arrival
        self.priority = priority
        self.deadline = deadline
        self.state = State.QUEUED
        self.done = done
        self.result: object = None
        self.error: BaseException | None = None


class PendingQueue:
    """Queued requests, highest priority level first, oldest first within a level.

    A request that leaves early (cancelled, expired) is only marked: it stays in its deque
    until ``take`` skips it, so removal is O(1) and ``depth`` always counts live requests.
    """

    __slots__ = ("_levels", "depth")

    def __init__(self, levels: int) -> None:
        self._levels: list[deque[Request]] = [deque() for _ in range(levels)]
        self.depth = 0

    def push(self, request: Request) -> None:
        self._levels[request.priority].append(request)
        self.depth += 1

    def forget(self, request: Request) -> None:
        """Count out a request whose state the caller has already moved off QUEUED."""
        self.depth -= 1

    def take(self, limit: int) -> Iterator[Request]:
        """Yield up to ``limit`` live requests, removing them; the caller owns each one."""
        taken = 0
        for level in reversed(self._levels):
            while level and taken < limit:
                request = level.popleft()
                if request.state is State.QUEUED:
                    self.depth -= 1
                    taken += 1
                    yield request
            if taken >= limit:
                return

    def put_back(self, requests: list[Request]) -> None:
        """Return taken requests to the front of their levels, keeping their order."""
        for request in reversed(requests):
            self._levels[request.priority].appendleft(request)
            self.depth += 1

    def oldest_arrival(self) -> float:
        """Arrival time of the oldest live request (``inf`` when none is queued)."""
        oldest = float("inf")
        for level in self._levels:
            while level and level[0].state is not State.QUEUED:
                level.popleft()
            if level:
                oldest = min(oldest, level[0].arrival)
        return oldest

    def drain(self) -> list[Request]:
        """Remove and return every live request."""
        live = [r for level in self._levels for r in level if r.state is State.QUEUED]
        for level in self._levels:
            level.clear()
        self.depth = 0
        return live
