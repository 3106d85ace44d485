"""Pacer: deferred copies booked one slot-freeing apart, never further than the longest hold, and no pace
before a request of the subscription has ended."""

from __future__ import annotations

import pytest

from switchboard.delivery.pacing import Pacer


def test_no_pace_until_a_request_has_ended() -> None:
    p = Pacer()
    assert p.hold("sub_a", 4, now=100.0) is None
    p.ended("sub_a", 2.0)
    assert p.hold("sub_a", 4, now=100.0) == 1.0
    assert p.hold("sub_b", 4, now=100.0) is None  # each subscription has its own


def test_copies_deferred_together_come_back_one_freed_slot_apart() -> None:
    """Requests of 2 s with 4 out: a slot frees every 0.5 s, so the deferred copies are booked 0.5 s apart,
    from the shortest hold on."""
    p = Pacer(min_hold=1.0, max_hold=30.0)
    p.ended("sub_a", 2.0)
    holds = [p.hold("sub_a", 4, now=10.0) for _ in range(5)]
    assert holds == [1.0, 1.5, 2.0, 2.5, 3.0]
    # Later deferrals queue behind the bookings already made, not before them.
    assert p.hold("sub_a", 4, now=11.0) == pytest.approx(2.5)  # due at 13.5


def test_a_booking_past_the_longest_hold_is_not_made() -> None:
    p = Pacer(min_hold=1.0, max_hold=30.0)
    p.ended("sub_a", 5.0)  # one slot: a copy every 5 s
    holds = [p.hold("sub_a", 1, now=0.0) for _ in range(8)]
    assert holds == [1.0, 6.0, 11.0, 16.0, 21.0, 26.0, 30.0, 30.0]
    # The ones told 30 s booked nothing: the next free moment is still 31 s.
    assert p.hold("sub_a", 1, now=29.0) == pytest.approx(2.0)


def test_the_pace_follows_an_endpoint_that_slows_down() -> None:
    p = Pacer()
    p.ended("sub_a", 0.1)
    for _ in range(20):
        p.ended("sub_a", 5.0)
    latency = p.latency("sub_a")
    assert latency is not None and 4.9 < latency <= 5.0
    first, second = (p.hold("sub_a", 10, now=0.0) for _ in range(2))
    assert first is not None and second is not None and second - first == pytest.approx(latency / 10)


def test_forgetting_a_subscription_drops_its_pace_and_bookings() -> None:
    p = Pacer()
    p.ended("sub_a", 1.0)
    for _ in range(10):
        p.hold("sub_a", 1, now=0.0)
    p.forget("sub_a")
    assert p.hold("sub_a", 1, now=0.0) is None
    p.ended("sub_a", 1.0)
    assert p.hold("sub_a", 1, now=0.0) == 1.0  # no bookings left from before


def test_holds_must_make_sense() -> None:
    with pytest.raises(ValueError, match="min_hold"):
        Pacer(min_hold=0.0)
    with pytest.raises(ValueError, match="min_hold"):
        Pacer(min_hold=40.0, max_hold=30.0)
