"""Acking in delivery-tag order, many messages per frame (``basic.ack`` with ``multiple``).

Delivery tags are per channel and increase with every delivery. A ``multiple`` ack settles every unacked
delivery of the channel up to its tag, so it is only ever sent for a prefix in which every message was
settled: a message still held (not started, or running) is never acked by another one's frame. A message
settled out of order (its batch finished first) waits until every earlier delivery of its channel is settled
too, then one ``multiple`` ack covers them all. If more than ``max_waiting`` settled messages wait behind a
slow one, they are acked one by one instead, so that a slow message never holds the prefetch window full.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class AckTracker:
    """The unsettled deliveries of one channel, in delivery order; ``channel`` is pika's (``basic_ack``)."""

    def __init__(self, channel: Any, max_waiting: int = 64) -> None:
        self.max_waiting = max_waiting
        self.channel = channel
        self._outstanding: dict[int, None] = {}  # delivery tags, in delivery order
        self._settled: set[int] = set()  # settled but not acked yet
        self.frames = 0  # ack frames sent (for stats)

    def __len__(self) -> int:
        return len(self._outstanding)

    def delivered(self, tag: int) -> None:
        self._outstanding[tag] = None

    def returned(self, tag: int) -> None:
        """A delivery the caller has just nacked or rejected: it no longer blocks the prefix, and the settled ones
        that waited behind it are acked now (they waited for the next settle of the channel, which on a quiet
        partition could be its next hand-over: a crash meanwhile redelivered committed work). Called after the
        nack: a ``multiple`` ack sent before it would cover the nacked delivery."""
        self._outstanding.pop(tag, None)
        self._settled.discard(tag)
        self.settle(())

    def settle(self, tags: Iterable[int]) -> None:
        """Marks ``tags`` as ready to ack and acks what can be acked. Raises what the driver raises (the channel
        closed: the broker has every unacked delivery back)."""
        self._settled.update(t for t in tags if t in self._outstanding)
        last = 0
        for tag in self._outstanding:
            if tag not in self._settled:
                break
            last = tag
        if last:
            for tag in list(self._outstanding):
                if tag > last:
                    break
                del self._outstanding[tag]
                self._settled.discard(tag)
        singles = self._take_settled() if len(self._settled) > self.max_waiting else []
        if last:
            self.frames += 1
            self.channel.basic_ack(last, multiple=True)
        self._ack_each(singles)

    def flush(self) -> None:
        """Acks every settled message now, one by one (those waiting behind an unsettled one)."""
        self._ack_each(self._take_settled())

    def _take_settled(self) -> list[int]:
        taken = sorted(self._settled)
        for tag in taken:
            del self._outstanding[tag]
        self._settled.clear()
        return taken

    def _ack_each(self, tags: list[int]) -> None:
        for tag in tags:
            self.frames += 1
            self.channel.basic_ack(tag)
