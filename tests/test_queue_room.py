from __future__ import annotations

import random
from collections.abc import Awaitable

import pytest

from batcher._signals import QueueRoom, Signal


class FlagSignal:
    def __init__(self) -> None:
        self.flag = False

    def set(self) -> None:
        assert not self.flag, "a place was handed to the same waiter twice"
        self.flag = True

    def is_set(self) -> bool:
        return self.flag

    def wait(self) -> Awaitable[object]:
        raise NotImplementedError  # these tests never wait


def test_places_go_to_waiters_first_come_first_served() -> None:
    room = QueueRoom(1, FlagSignal)
    assert room.try_take()
    waiters = [room.enqueue_waiter() for _ in range(3)]
    room.give_back()
    assert [w.is_set() for w in waiters] == [True, False, False]
    room.give_back()
    assert [w.is_set() for w in waiters] == [True, True, False]


def test_a_withdrawn_waiter_is_skipped_and_gets_no_place() -> None:
    room = QueueRoom(1, FlagSignal)
    assert room.try_take()
    first, second, third = (room.enqueue_waiter() for _ in range(3))
    room.abandon(second)
    room.give_back()
    room.give_back()
    assert (first.is_set(), second.is_set(), third.is_set()) == (True, False, True)
    assert room.waiting == 0


def test_a_waiter_that_got_its_place_gives_it_back_when_it_withdraws() -> None:
    room = QueueRoom(1, FlagSignal)
    assert room.try_take()
    first, second = room.enqueue_waiter(), room.enqueue_waiter()
    room.give_back()  # first gets the place, then is cancelled before using it
    room.abandon(first)
    assert second.is_set()


def test_free_places_are_taken_at_once_when_every_waiter_has_withdrawn() -> None:
    room = QueueRoom(1, FlagSignal)
    assert room.try_take()
    waiter = room.enqueue_waiter()
    room.abandon(waiter)
    assert not room.try_take()  # still full: nobody gave a place back
    room.give_back()
    assert room.free == 1
    assert room.try_take()


def test_wake_all_hands_places_only_to_waiters_still_waiting() -> None:
    room = QueueRoom(0, FlagSignal)
    waiters = [room.enqueue_waiter() for _ in range(4)]
    room.abandon(waiters[1])
    room.wake_all()
    assert [w.is_set() for w in waiters] == [True, False, True, True]
    assert room.free == -3  # each woken waiter gives its place back on the way out
    assert room.waiting == 0


def test_a_line_that_only_grows_does_not_keep_withdrawn_waiters() -> None:
    room = QueueRoom(0, FlagSignal)
    for _ in range(10_000):
        room.abandon(room.enqueue_waiter())  # every caller times out; no place ever frees
    assert len(room._waiters) <= 2
    assert room.waiting == 0


def test_a_long_line_timing_out_in_bulk_keeps_its_survivors_in_order() -> None:
    room = QueueRoom(0, FlagSignal)
    waiters = [room.enqueue_waiter() for _ in range(10_000)]
    survivors = waiters[::1000]
    leaving = [w for w in waiters if w not in survivors]
    random.Random(0).shuffle(leaving)
    for waiter in leaving:
        room.abandon(waiter)
        assert len(room._waiters) <= 2 * room.waiting + 1
    assert room.waiting == len(survivors)
    for served in range(1, len(survivors) + 1):
        room.give_back()
        assert [w.is_set() for w in survivors] == [i < served for i in range(len(survivors))]
    assert not any(w.is_set() for w in leaving)


@pytest.mark.parametrize("seed", range(20))
def test_random_traffic_matches_a_plain_first_come_first_served_line(seed: int) -> None:
    """The same operations on a list that removes withdrawn waiters at once agree."""
    rng = random.Random(seed)
    size = rng.randint(0, 3)
    room = QueueRoom(size, FlagSignal)
    free = size
    line: list[Signal] = []
    holders: list[Signal | None] = []  # None: took a free place without waiting
    for _ in range(500):
        op = rng.random()
        if op < 0.35:
            if room.try_take():
                assert free > 0
                assert not line
                free -= 1
                holders.append(None)
            else:
                assert free == 0 or line
                line.append(room.enqueue_waiter())
        elif op < 0.55 and line:
            waiter = line.pop(rng.randrange(len(line)))
            assert not waiter.is_set()
            room.abandon(waiter)
        elif holders:
            holder = holders.pop(rng.randrange(len(holders)))
            if holder is not None and op < 0.7:
                room.abandon(holder)  # it got a place, then was cancelled before using it
            else:
                room.give_back()
            if line:
                woken = line.pop(0)
                assert woken.is_set()
                holders.append(woken)
            else:
                free += 1
        assert room.free == free
        assert room.waiting == len(line)
        assert not any(w.is_set() for w in line)
    room.wake_all()  # closing: every waiter still in the line gets a place at once
    assert all(w.is_set() for w in line)
    assert room.free == free - len(line)
    assert room.waiting == 0
