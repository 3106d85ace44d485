"""How many requests a delivery worker has out per subscription and per host, and whether one more may go.

A worker runs ``concurrency * batch`` tasks at once. Slow endpoints must not take them all, and several
slow endpoints on one host must not take all the connections the sender opens to that host (requests past
those wait inside the connection pool, holding their worker slots, in front of every other subscription on
the host). Before a send, ``InFlight.take`` applies four rules; a refused task is deferred by the caller (a
delay queue, no attempt counted) and comes back later, unless its subscription's next slot is due soon enough
for it to wait in the worker (``switchboard.delivery.slots``):

1. **Per subscription**: at most its limit (its ``max_in_flight``, else ``delivery.subscription_in_flight``).
2. **Per host** (the callback URL's host and port, what the sender's pool is keyed by): at most
   ``host_limit``, the sender's own connections per host, so that a request taken here never waits for a
   connection.
3. **A reserve for light subscriptions**: the host's last quarter of ``host_limit`` goes only to
   subscriptions with fewer than ``LIGHT`` requests out on it. An endpoint that answers quickly rarely has
   more than one or two out, so it finds a connection at once even when slow ones share its host.
4. **Heavy subscriptions share the rest**: one with ``LIGHT`` or more out gets another only while it has
   fewer than its share, the non-reserved part divided by the number of heavy subscriptions on the host.
   The share is recomputed at every ``take``: when a subscription becomes heavy, the others keep what they
   have out (nothing is cut short) and get no more until they are below the new share.

Invariants: a host never has more than ``host_limit`` out; heavy subscriptions never take a host's reserve,
so they hold at most ``host_limit - reserve`` together unless light ones grew heavy while holding some of it.
A request counts from ``take`` to ``release`` (the caller's rate-limit wait included), per worker. With the
deliveries stream partitioned by subscription, a subscription's tasks all go to one worker, so its limit holds
across workers; a host's does not: N workers send a host up to N times as much. Pure logic, no I/O; one
event loop changes it (``refusal`` asks without counting), and the metrics thread only reads ``total`` and
``busy_hosts``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

# A subscription with fewer requests out on a host than this is light there (may use the host's reserve).
LIGHT = 4
# The smallest host_limit that leaves a reserve and a shared part (a quarter of it is the reserve).
MIN_HOST_LIMIT = 2 * LIGHT


@dataclass
class _Host:
    total: int = 0
    by_subscription: Counter[str] = field(default_factory=Counter)

    def heavy(self) -> int:
        return sum(1 for n in self.by_subscription.values() if n >= LIGHT)


class InFlight:
    """Counts of requests out, per subscription and per host; ``take`` says whether one more may go."""

    def __init__(self, host_limit: int) -> None:
        if host_limit < MIN_HOST_LIMIT:
            raise ValueError(f"host_limit must be at least {MIN_HOST_LIMIT}")
        self.host_limit = host_limit
        self.reserve = host_limit // 4
        self._subscriptions: Counter[str] = Counter()
        self._hosts: dict[str, _Host] = {}
        self._total = 0

    def subscription(self, subscription_id: str) -> int:
        """Requests the subscription has out (on every host: it may have changed its URL meanwhile)."""
        return self._subscriptions[subscription_id]

    def host(self, host: str) -> int:
        return self._hosts[host].total if host in self._hosts else 0

    def total(self) -> int:
        """Requests out, on every host."""
        return self._total

    def busy_hosts(self) -> int:
        """Hosts whose part for heavy subscriptions is taken: a heavy subscription gets nothing more there.
        Safe to call from the metrics thread: it iterates a copy (``list`` of a dict's values is taken whole
        under the GIL), never the dict the loop changes."""
        return sum(1 for h in list(self._hosts.values()) if h.total >= self.host_limit - self.reserve)

    def take(self, subscription_id: str, host: str, limit: int) -> str | None:
        """Counts one more request of the subscription to ``host`` and returns None, or returns why it may not
        go now (words that follow "the endpoint has", for the delivery's record) and counts nothing. ``limit``:
        the subscription's own."""
        refused = self.refusal(subscription_id, host, limit)
        if refused is None:
            self._subscriptions[subscription_id] += 1
            self._total += 1
            h = self._hosts.setdefault(host, _Host())
            h.total += 1
            h.by_subscription[subscription_id] += 1
        return refused

    def refusal(self, subscription_id: str, host: str, limit: int) -> str | None:
        """What ``take`` would answer now, counting nothing."""
        mine = self._subscriptions.get(subscription_id, 0)
        if mine >= limit:
            return f"{mine} requests in flight, as many as a worker sends it at once"
        h = self._hosts.get(host) or _Host()
        on_host = h.by_subscription.get(subscription_id, 0)
        if h.total >= self.host_limit:
            return f"{on_host} requests in flight and its host {h.total}, as many as a worker opens to one host"
        if on_host >= LIGHT:
            if h.total >= self.host_limit - self.reserve:
                return (
                    f"{on_host} requests in flight and its host {h.total}: the last {self.reserve} of the "
                    f"{self.host_limit} a worker opens to one host are kept for endpoints with fewer than {LIGHT}"
                )
            heavy = h.heavy()
            share = (self.host_limit - self.reserve) // heavy
            if on_host >= share:
                return (
                    f"{on_host} requests in flight, its share of the {self.host_limit - self.reserve} a worker "
                    f"opens to its host for {heavy} endpoints with {LIGHT} or more"
                )
        return None

    def release(self, subscription_id: str, host: str) -> None:
        """One request taken with ``take(subscription_id, host, …)`` is over (answered, failed or cancelled)."""
        self._subscriptions[subscription_id] -= 1
        if self._subscriptions[subscription_id] <= 0:
            del self._subscriptions[subscription_id]
        self._total -= 1
        h = self._hosts[host]
        h.total -= 1
        h.by_subscription[subscription_id] -= 1
        if h.by_subscription[subscription_id] <= 0:
            del h.by_subscription[subscription_id]
        if h.total <= 0:
            del self._hosts[host]
