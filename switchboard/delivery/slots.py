"""Tasks that wait in the worker for one of their subscription's in-flight slots, instead of a trip through a
delay queue.

A task refused a slot by ``switchboard.delivery.inflight`` (its subscription at its limit, or at its share of
its host's connections) is deferred: published to a delay queue (the shortest waits 1 s), consumed, decoded
and checked again, and a delivery never tried is recorded PENDING first. When the subscription's requests end
within milliseconds (a fast endpoint that a burst, or a worker short of CPU, brought to its bound) that round
trip costs the worker, the broker and Cassandra more than the send itself, and the delivery a second or more;
at a worker's saturation it fed itself (docs/benchmarks.md, "Waiting for a slot"). ``SlotQueue`` lets such a
task wait in the worker instead, in line behind its subscription's other waiters, when the pace of its
requests says a slot should come its way soon:

- **Admission** (``admits``): with ``slots`` requests out, each holding its slot for ``latency`` seconds on
  average (``Pacer.latency``), one frees every ``latency / slots`` seconds, so the ``n``-th waiter should have
  one after ``n * latency / slots``. A task waits if that is at most ``max_wait`` (and fewer than
  ``WAITERS_PER_SLOT * slots`` wait, a guard against a pace that is off); otherwise (a slow endpoint, a pace
  not known yet, nothing out) the caller defers it as before. A subscription thus holds about ``max_wait``
  of its own throughput in line: a slow endpoint 1 waiter for requests of 5 s with 32 out and ``max_wait``
  0.25 s, none past 8 s; its share of the worker stays bounded.
- **Hand-over** (``handover``): when a request of the subscription ends, the caller releases its slot and
  calls ``handover``, which takes a slot for the first waiter with the caller's ``take`` (so every in-flight
  rule still applies) before any other task runs. A task of a subscription with waiters lines up behind them
  (``waiting``; the caller's part) if it may wait, after ``fill`` gave them whatever room opened without a
  request ending (a limit raised, a host's share grown).
- **A line that stops moving stops growing**: an endpoint that stops answering keeps its average latency
  until a request ends (its timeout, 10 s later); once no request of it has ended for its average latency
  plus ``max_wait`` (since the last end, or the last request that went out without waiting), it gets no
  new waiter.
- **Bounded in time**: a waiter gives up after ``timeout`` seconds (False: the caller defers it). If ``take``
  refuses the first waiter (its host's rules), every waiter of the subscription gives up at once: a slot of
  its own is what they wait for, and the host's rules say it gets none now.

Invariants: ``wait`` answers True only when a slot was taken for the waiter, which the caller then owns and
must release; a waiter cancelled after a slot was taken for it releases that slot itself (``release``). One
event loop; per worker, in memory.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

# At most this many tasks of a subscription wait per request it has out (a guard against a pace that is off:
# the time bound alone would let a subscription answering in 1 ms with 32 out have 8,000 in line).
WAITERS_PER_SLOT = 4


@dataclass(eq=False)
class _Waiter:
    future: asyncio.Future[bool]
    take: Callable[[], str | None]
    timer: asyncio.TimerHandle | None = None


class SlotQueue:
    def __init__(self, max_wait: float, timeout: float) -> None:
        if max_wait < 0 or timeout < max_wait:
            raise ValueError("max_wait must be at least 0 and timeout at least max_wait")
        self.max_wait = max_wait
        self.timeout = timeout
        self._lines: dict[str, deque[_Waiter]] = {}
        # Per subscription: when one of its requests last ended, or last went out without waiting.
        self._moved: dict[str, float] = {}

    def waiting(self, subscription_id: str) -> int:
        line = self._lines.get(subscription_id)
        return len(line) if line else 0

    def total(self) -> int:
        """Tasks waiting, every subscription's (safe to read from the metrics thread)."""
        return sum(len(line) for line in list(self._lines.values()))

    def admits(self, subscription_id: str, latency: float | None, slots: int, now: float) -> bool:
        """Whether one more task of the subscription, which has ``slots`` requests out and may not have another
        now, should wait for one of them to end rather than be deferred. Not while its line has stopped: when no
        request of it has ended for longer than ``latency`` plus ``max_wait`` (since the last end, or the last
        request that went out without waiting), its endpoint is slower than its average says, which moves only
        when a request ends."""
        if latency is None or slots < 1 or self.max_wait <= 0:
            return False
        if now - self._moved.get(subscription_id, now) > latency + self.max_wait:
            return False
        n = self.waiting(subscription_id) + 1
        return n <= WAITERS_PER_SLOT * slots and n * latency / slots <= self.max_wait

    def started(self, subscription_id: str, now: float) -> None:
        """A request of the subscription went out without waiting (its line, if it had stopped, moves again)."""
        self._moved[subscription_id] = now

    def fill(self, subscription_id: str) -> None:
        """Room opened without a request of the subscription ending (its limit raised, its host's share grown):
        its waiters take slots in order while ``take`` allows, and the others stay in line."""
        line = self._lines.get(subscription_id)
        while line:
            first = line[0]
            if first.future.done():  # cancelled, not resumed yet to leave the line
                line.popleft()
                continue
            if first.take() is not None:
                break
            line.popleft()
            self._settle(first, True)
        if line is not None and not line:
            del self._lines[subscription_id]

    def subscriptions(self) -> set[str]:
        """The subscriptions it keeps anything for (a line, or when their line last moved)."""
        return {*self._moved, *self._lines}

    def forget(self, subscription_id: str) -> None:
        """The subscription is gone or disabled (its waiters, if any, are served or time out as usual)."""
        self._moved.pop(subscription_id, None)

    async def wait(self, subscription_id: str, take: Callable[[], str | None], release: Callable[[], None]) -> bool:
        """Waits in line for a slot; True once ``take`` took one for this task (the caller owns it), False when
        the wait ran out or ``take`` refused. ``release`` gives back a slot taken for a waiter cancelled
        before it could use it."""
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop.create_future(), take)
        line = self._lines.setdefault(subscription_id, deque())
        line.append(waiter)
        waiter.timer = loop.call_later(self.timeout, self._expire, subscription_id, waiter)
        try:
            return await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled() and waiter.future.result():
                release()
            else:
                self._drop(subscription_id, waiter)
            raise

    def handover(self, subscription_id: str, now: float) -> None:
        """A request of the subscription ended and its slot was released: the first waiter gets it."""
        self._moved[subscription_id] = now
        line = self._lines.get(subscription_id)
        while line:
            first = line.popleft()
            if first.future.done():  # cancelled, its task not resumed yet to leave the line: no slot for it
                continue
            refused = first.take()
            self._settle(first, refused is None)
            if refused is not None:
                while line:
                    self._settle(line.popleft(), False)
            break
        if line is not None and not line:
            del self._lines[subscription_id]

    def _expire(self, subscription_id: str, waiter: _Waiter) -> None:
        self._drop(subscription_id, waiter)
        if not waiter.future.done():
            waiter.future.set_result(False)

    def _drop(self, subscription_id: str, waiter: _Waiter) -> None:
        if waiter.timer is not None:
            waiter.timer.cancel()
        line = self._lines.get(subscription_id)
        if line is None:
            return
        if waiter in line:  # not when handover took it out of the line first
            line.remove(waiter)
        if not line:
            del self._lines[subscription_id]

    @staticmethod
    def _settle(waiter: _Waiter, taken: bool) -> None:
        if waiter.timer is not None:
            waiter.timer.cancel()
        if not waiter.future.done():
            waiter.future.set_result(taken)
