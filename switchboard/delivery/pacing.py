"""When a task deferred for an in-flight limit should come back: at the pace its subscription's slots free up.

With a doubling wait alone (1, 2, 4 … 30 s), a subscription with a backlog leaves its slots idle: once fewer of
its copies come back per second than its requests end, the backlog drains like an exponential decay with the
longest wait as its time constant, not at the rate the endpoint can take. ``Pacer`` instead books each deferral
into the subscription's next free moment: a request of it holds a slot for ``latency`` seconds on average (an
average of the measured holds: rate-limit wait and answer), so with ``slots`` taken one frees every
``latency / slots`` seconds; the first deferred copy comes back after ``min_hold``, the next one gap later, and
so on. A booking further out than ``max_hold`` is not made: that copy waits ``max_hold`` and asks again (a copy
waits in the shortest delay queue that holds its wait, where it may wait behind longer waits of that queue:
short bookings stay accurate, and a far one is asked about again). Until a request of the subscription
has ended there is no pace, and ``hold`` says None (the caller doubles).

Bookings are a guess, not a promise: a fresh task may take a freed slot first, and a copy that finds none is
deferred again with a new booking. Per worker, in memory; pure logic (the caller passes the clock).
"""

from __future__ import annotations

# Weight of the newest hold in the average (an endpoint that slows down is followed within a few requests).
ALPHA = 0.2


class Pacer:
    def __init__(self, min_hold: float = 1.0, max_hold: float = 30.0) -> None:
        if not 0 < min_hold <= max_hold:
            raise ValueError("min_hold must be positive and at most max_hold")
        self.min_hold = min_hold
        self.max_hold = max_hold
        self._latency: dict[str, float] = {}  # per subscription: seconds a request holds its slot, averaged
        self._next: dict[str, float] = {}  # per subscription: its next free moment (the caller's clock)

    def ended(self, subscription_id: str, seconds: float) -> None:
        """A request of the subscription held its slot for ``seconds`` (from taking it to its answer)."""
        before = self._latency.get(subscription_id)
        self._latency[subscription_id] = seconds if before is None else before + ALPHA * (seconds - before)

    def latency(self, subscription_id: str) -> float | None:
        return self._latency.get(subscription_id)

    def hold(self, subscription_id: str, slots: int, now: float) -> float | None:
        """Seconds a copy deferred now should wait, booking its moment; None while no request of the
        subscription has ended. ``slots``: the requests it has out (it is at its limit)."""
        latency = self._latency.get(subscription_id)
        if latency is None:
            return None
        due = max(now + self.min_hold, self._next.get(subscription_id, 0.0))
        if due - now > self.max_hold:
            return self.max_hold
        self._next[subscription_id] = due + latency / max(1, slots)
        return due - now

    def subscriptions(self) -> set[str]:
        """The subscriptions it keeps a pace or a booking for."""
        return {*self._latency, *self._next}

    def forget(self, subscription_id: str) -> None:
        """The subscription is gone or disabled."""
        self._latency.pop(subscription_id, None)
        self._next.pop(subscription_id, None)
