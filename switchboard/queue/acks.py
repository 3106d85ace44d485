"""Acking in delivery-tag order, many messages per frame (``basic.ack`` with ``multiple``).

Delivery tags are per channel and increase with every delivery. A ``multiple`` ack settles every unacked
delivery of the channel up to its tag, so it is only ever sent for a prefix in which every message was
settled: a message still held (not started, or running) is never acked by another one's frame. A message
settled out of order (its batch finished first) waits until every earlier delivery of its channel is settled
too, then one ``multiple`` ack covers them all. If more than ``max_waiting`` settled messages wait behind a
slow one, they are acked one by one instead, so that a slow message never holds the prefetch window full.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)


class AckTracker:
    """The unsettled deliveries of one channel, in delivery order."""

    def __init__(self, max_waiting: int = 64, channel: Any = None) -> None:
        self.max_waiting = max_waiting
        self.channel = channel  # the driver's channel it tracks (the worker drops the tracker once it closed)
        self._outstanding: dict[int, Any] = {}  # delivery tag -> driver message, in delivery order
        self._settled: set[int] = set()  # settled but not acked yet
        self.frames = 0  # ack frames sent (for stats)

    @property
    def channel_open(self) -> bool:
        """The channel it tracks is still open (False without one)."""
        return self.channel is not None and not self.channel.is_closed

    def __len__(self) -> int:
        return len(self._outstanding)

    def delivered(self, tag: int, raw: Any) -> None:
        self._outstanding[tag] = raw

    def forget(self, tag: int) -> None:
        """A delivery acked, nacked or rejected elsewhere (it no longer blocks the prefix)."""
        self._outstanding.pop(tag, None)
        self._settled.discard(tag)

    async def settle(self, tags: Iterable[int]) -> None:
        """Marks ``tags`` as ready to ack and acks what can be acked. Raises what the driver raises.

        The bookkeeping is done before the first ``await``, so concurrent calls (batches finishing together)
        never send the same delivery twice or lose one."""
        self._settled.update(t for t in tags if t in self._outstanding)
        prefix: list[int] = []
        for tag in self._outstanding:
            if tag not in self._settled:
                break
            prefix.append(tag)
        multiple = self._outstanding[prefix[-1]] if prefix else None
        for tag in prefix:
            del self._outstanding[tag]
            self._settled.discard(tag)
        singles = self._take_settled() if len(self._settled) > self.max_waiting else []
        if multiple is not None:
            self.frames += 1
            await multiple.ack(multiple=True)
        await self._ack_each(singles)

    async def flush(self) -> None:
        """Acks every settled message now, one by one (those waiting behind an unsettled one)."""
        await self._ack_each(self._take_settled())

    def _take_settled(self) -> list[Any]:
        taken = [self._outstanding.pop(tag) for tag in sorted(self._settled)]
        self._settled.clear()
        return taken

    async def _ack_each(self, messages: list[Any]) -> None:
        for raw in messages:
            self.frames += 1
            await raw.ack()
