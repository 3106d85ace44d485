"""SlotQueue: who may wait for a subscription's next in-flight slot, in what order they get one, and that a slot
taken for a waiter is never lost (timed out, refused, cancelled before or after the hand-over)."""

from __future__ import annotations

import asyncio

import pytest

from switchboard.delivery.slots import WAITERS_PER_SLOT, SlotQueue


class Slots:
    """A subscription's in-flight count with a limit, as InFlight keeps it."""

    def __init__(self, limit: int, out: int) -> None:
        self.limit = limit
        self.out = out
        self.refuse = ""  # set: take refuses with it (its host's rules)

    def take(self) -> str | None:
        if self.refuse:
            return self.refuse
        if self.out >= self.limit:
            return "at its limit"
        self.out += 1
        return None

    def release(self) -> None:
        self.out -= 1


def test_a_task_waits_only_when_its_turn_is_due_within_the_wait_and_the_line_is_shorter_than_its_slots() -> None:
    q = SlotQueue(max_wait=0.25, timeout=0.5)
    assert not q.admits("s", None, 4, 0.0)  # no pace yet: deferred, as before
    assert not q.admits("s", 0.01, 0, 0.0)  # nothing out: nothing will end to hand a slot over
    assert q.admits("s", 0.01, 4, 0.0)  # one frees every 2.5 ms
    assert q.admits("s", 1.0, 4, 0.0)  # one frees every 250 ms: the first waiter's turn is due at 0.25 s
    assert not q.admits("s", 1.01, 4, 0.0)
    assert q.admits("s", 5.0, 32, 0.0)  # a 5 s endpoint with 32 out: a slot every 156 ms, the first waiter's
    assert not q.admits("s", 8.1, 32, 0.0)  # past 8 s: 253 ms
    assert not SlotQueue(max_wait=0, timeout=0).admits("s", 0.001, 32, 0.0)  # slot_wait_ms 0: never


async def test_the_line_is_bounded_by_the_slots_out_and_by_when_its_last_turn_is_due() -> None:
    q = SlotQueue(max_wait=0.25, timeout=5)
    slots = Slots(limit=2, out=2)
    waiters = []
    while q.admits("s", 0.001, slots.out, 0.0):
        waiters.append(asyncio.create_task(q.wait("s", slots.take, slots.release)))
        await asyncio.sleep(0)
    # Requests of 1 ms: the time bound would take 500 in line; the guard keeps it to 4 per request out.
    assert q.waiting("s") == WAITERS_PER_SLOT * 2 == len(waiters)
    slow = SlotQueue(max_wait=0.25, timeout=5)
    held = []
    while slow.admits("t", 2.0, 32, 0.0):  # 62.5 ms per slot: turns due at 62.5, 125, 187.5, 250 ms
        held.append(asyncio.create_task(slow.wait("t", slots.take, slots.release)))
        await asyncio.sleep(0)
    assert slow.waiting("t") == 4
    for t in [*waiters, *held]:
        t.cancel()
    await asyncio.gather(*waiters, *held, return_exceptions=True)
    assert q.waiting("s") == 0 == slow.waiting("t") == q.total()


async def test_each_ended_request_hands_its_slot_to_the_first_waiter_in_order() -> None:
    q = SlotQueue(max_wait=0.25, timeout=5)
    slots = Slots(limit=2, out=2)
    a = asyncio.create_task(q.wait("s", slots.take, slots.release))
    await asyncio.sleep(0)
    b = asyncio.create_task(q.wait("s", slots.take, slots.release))
    await asyncio.sleep(0)
    assert q.total() == 2
    slots.release()
    q.handover("s", 0.0)
    assert slots.out == 2  # taken for the first waiter before anything else could
    assert await a is True and not b.done()
    q.handover("s", 0.0)  # nothing was released: take refuses, and nobody of the line can have a slot now
    assert await b is False and q.waiting("s") == 0 and slots.out == 2


async def test_a_wait_that_runs_out_is_left_and_later_slots_go_to_the_next() -> None:
    q = SlotQueue(max_wait=0.01, timeout=0.02)
    slots = Slots(limit=1, out=1)
    assert await q.wait("s", slots.take, slots.release) is False
    assert q.waiting("s") == 0
    q.handover("s", 0.0)  # nobody waits: nothing taken
    assert slots.out == 1


async def test_a_refusal_for_the_host_sends_the_whole_line_back_to_be_deferred() -> None:
    q = SlotQueue(max_wait=0.25, timeout=5)
    slots = Slots(limit=4, out=4)
    line = [asyncio.create_task(q.wait("s", slots.take, slots.release)) for _ in range(3)]
    await asyncio.sleep(0)
    slots.release()
    slots.refuse = "its host is full"
    q.handover("s", 0.0)
    assert await asyncio.gather(*line) == [False, False, False]
    assert slots.out == 3 and q.waiting("s") == 0


async def test_a_waiter_cancelled_before_the_hand_over_gets_no_slot_and_one_cancelled_after_gives_it_back() -> None:
    q = SlotQueue(max_wait=0.25, timeout=5)
    slots = Slots(limit=2, out=2)
    gone = asyncio.create_task(q.wait("s", slots.take, slots.release))
    nxt = asyncio.create_task(q.wait("s", slots.take, slots.release))
    await asyncio.sleep(0)
    gone.cancel()  # its future is cancelled; it leaves the line only when it runs again
    slots.release()
    q.handover("s", 0.0)  # skips it: the slot goes to the next one
    assert await nxt is True and slots.out == 2
    with pytest.raises(asyncio.CancelledError):
        await gone

    late = asyncio.create_task(q.wait("s", slots.take, slots.release))
    await asyncio.sleep(0)
    slots.release()
    q.handover("s", 0.0)  # a slot taken for it...
    assert slots.out == 2
    late.cancel()  # ...which it cannot use: it gives it back
    with pytest.raises(asyncio.CancelledError):
        await late
    assert slots.out == 1 and q.total() == 0


def test_a_line_that_stops_moving_stops_taking_waiters() -> None:
    """A fast endpoint (10 ms, 32 out) that stops answering keeps its 10 ms average until a request times out;
    once nothing ended for that average plus max_wait, nobody more waits. A burst's first requests (0.4 s)
    all end about together: until then, the time since it got busy counts, not a last end long before."""
    q = SlotQueue(max_wait=0.25, timeout=0.5)
    q.started("s", 100.0)  # its first request out
    assert q.admits("s", 0.01, 32, 100.01)
    q.handover("s", 100.02)  # a request ended (nobody waited)
    assert q.admits("s", 0.01, 32, 100.2)  # 180 ms without an end: within 10 + 250 ms
    assert not q.admits("s", 0.01, 32, 100.3)  # 280 ms: the line has stopped
    q.handover("s", 100.31)  # it answers again
    assert q.admits("s", 0.01, 32, 100.32)
    q.forget("s")
    assert q.admits("s", 0.01, 32, 500.0)  # gone and back: its next request out starts the count again
    q.started("b", 0.0)  # a burst: 8 requests of 0.4 s on average go out after a long quiet time
    assert q.admits("b", 0.4, 8, 0.6)  # none has ended yet, as expected for 0.4 s + 0.25 s
    assert not q.admits("b", 0.4, 8, 0.7)


async def test_room_that_opens_without_a_request_ending_goes_to_the_line_first_in_order() -> None:
    q = SlotQueue(max_wait=0.25, timeout=5)
    slots = Slots(limit=1, out=1)
    line = [asyncio.create_task(q.wait("s", slots.take, slots.release)) for _ in range(3)]
    await asyncio.sleep(0)
    slots.limit = 3  # raised: two slots free, nothing ended
    q.fill("s")
    assert slots.out == 3 and q.waiting("s") == 1  # the first two took them; take refused the third
    await asyncio.sleep(0)
    assert [t.done() for t in line] == [True, True, False]
    slots.release()
    q.handover("s", 1.0)
    assert await asyncio.gather(*line) == [True, True, True] and slots.out == 3
