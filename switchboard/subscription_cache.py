"""Every subscription in memory, for the processors' fan-out and the delivery workers: no per-event read.

The cache loads all subscriptions at start, reloads one when a change notice names it (the control service
publishes the id of every subscription it creates, changes or deletes on the ``subscriptions.changed``
fanout exchange; each cache binds an exclusive queue of its own to it), and reloads everything every
``refresh_seconds`` in case a notice was lost while its queue did not exist (a reconnect). A subscription
changed elsewhere is therefore seen within milliseconds, and at worst after one refresh.

``matching`` looks only at the enabled subscriptions whose sources and event types can match the event
(``switchboard.delivery.routing.FilterIndex``), not at every subscription: its cost grows with the matches,
not with the number of subscriptions (``python -m bench.matching``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from switchboard.delivery.filters import Filter
from switchboard.delivery.routing import FilterIndex
from switchboard.errors import SwitchboardError
from switchboard.model.events import InboundEvent
from switchboard.model.subscriptions import Subscription
from switchboard.queue import connect, publish_confirmed
from switchboard.store.subscriptions import SubscriptionStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry:
    subscription: Subscription
    filter: Filter | None  # None: its stored filter no longer compiles; it matches nothing, and it still exists


def _entry(s: Subscription) -> Entry:
    try:
        condition = s.trigger_conditions or None
        # Held to the rules of the day it was stored (strict=False), not refused by a later, stricter one.
        return Entry(s, Filter(sources=s.sources, event_types=s.event_types, condition=condition, strict=False))
    except SwitchboardError as exc:
        # Validated at create; a stored one that no longer compiles matches nothing, but the subscription is
        # there: taken for deleted, its queued retries were recorded CANCELLED and its circuit forgotten.
        log.error("subscription filter does not compile", extra={"subscription": s.id, "error": exc.message})
        return Entry(s, None)


class SubscriptionCache:
    def __init__(
        self,
        store: SubscriptionStore,
        url: str,
        exchange: str,
        *,
        purpose: str,
        refresh_seconds: float = 60.0,
    ) -> None:
        self.store = store
        self.url = url
        self.exchange = exchange
        self.purpose = purpose
        self.refresh_seconds = refresh_seconds
        self._entries: dict[str, Entry] = {}
        self._index = FilterIndex()  # the enabled entries', by source and event type
        self._refreshed_meanwhile: set[str] | None = None  # while a reload reads: the ids refreshed meanwhile
        self._reads = itertools.count()
        # id → [refresh reads in flight, the ticket of the newest read applied], while reads are in flight
        self._reading: dict[str, list[int]] = {}
        self._conn: AbstractRobustConnection | None = None
        self._refresher: asyncio.Task[None] | None = None

    async def start(self, stop: asyncio.Event | None = None) -> None:
        self._conn = await connect(self.url, purpose=self.purpose, stop=stop)
        channel = await self._conn.channel()
        exchange = await channel.declare_exchange(self.exchange, aio_pika.ExchangeType.FANOUT, durable=True)
        queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
        await queue.bind(exchange)
        await queue.consume(self._on_notice, no_ack=True)
        await self.reload()  # after binding: a change made meanwhile is either loaded now or noticed
        self._refresher = asyncio.create_task(self._refresh_forever())

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
        if self._conn is not None:
            await self._conn.close()

    async def reload(self) -> None:
        """Every subscription from the store. One refreshed while the store was read is read again after:
        the whole read may have seen it before its change, and would otherwise undo the refresh until the next
        notice or reload."""
        self._refreshed_meanwhile = set()
        try:
            stored = await self.store.all()
        finally:
            meanwhile, self._refreshed_meanwhile = self._refreshed_meanwhile, None
        entries = {}
        index = FilterIndex()
        for s in stored:
            entry = entries[s.id] = _entry(s)
            if s.enabled and entry.filter is not None:
                index.add(s.id, entry.filter)
        self._entries, self._index = entries, index
        log.info("subscriptions loaded", extra={"subscriptions": len(entries)})
        for subscription_id in meanwhile:
            await self.refresh(subscription_id)

    async def refresh(self, subscription_id: str) -> Subscription | None:
        """Reloads one subscription from the store (after a notice, or on a miss). A read is applied only if no
        read of the id started after it was applied already: notices are handled concurrently and reads may
        end in any order, so two quick changes (disable, enable) left whichever read ended last, the older
        state until the next reload. A later read that fails does not hold back an earlier one's result."""
        if self._refreshed_meanwhile is not None:
            self._refreshed_meanwhile.add(subscription_id)
        ticket = next(self._reads)
        reading = self._reading.setdefault(subscription_id, [0, -1])
        reading[0] += 1
        try:
            s = await self.store.get(subscription_id)
        finally:
            reading[0] -= 1
            if reading[0] == 0:
                del self._reading[subscription_id]
        if ticket < reading[1]:
            return s  # a read started later was applied: it saw this change or a newer one
        reading[1] = ticket
        if s is None:
            self._entries.pop(subscription_id, None)
            self._index.remove(subscription_id)
            return None
        entry = self._entries[subscription_id] = _entry(s)
        if entry.subscription.enabled and entry.filter is not None:
            self._index.add(subscription_id, entry.filter)
        else:
            self._index.remove(subscription_id)
        return s

    def get(self, subscription_id: str) -> Subscription | None:
        entry = self._entries.get(subscription_id)
        return entry.subscription if entry else None

    def __len__(self) -> int:
        return len(self._entries)

    def matching(self, event: InboundEvent) -> list[Subscription]:
        """The enabled subscriptions whose sources, event type globs and condition match ``event``. The body
        is parsed as JSON once, and only if a candidate has a condition (an unparsable body matches none)."""
        entries = self._entries
        candidates = [
            (e.subscription, f)
            for e in (entries[k] for k in self._index.candidates(event.source, event.event_type))
            if (f := e.filter) is not None and e.subscription.enabled and f.matches_meta(event.source, event.event_type)
        ]
        if not candidates:
            return []
        document: Any = None
        if any(f.condition is not None for _, f in candidates):
            try:
                document = json.loads(event.body)
            except (ValueError, RecursionError):
                document = None
        out = []
        for sub, f in candidates:
            if f.condition is None or (isinstance(document, dict) and f.condition.matches(document)):
                out.append(sub)
        return out

    async def _on_notice(self, message: AbstractIncomingMessage) -> None:
        subscription_id = message.body.decode("utf-8", "replace")
        try:
            await self.refresh(subscription_id)
        except SwitchboardError as exc:  # the store is down: the periodic reload catches up
            log.warning(
                "could not reload a changed subscription", extra={"subscription": subscription_id, "error": exc.message}
            )

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_seconds)
            try:
                await self.reload()
            except SwitchboardError as exc:
                log.warning("could not reload the subscriptions", extra={"error": exc.message})


class ChangeNotices:
    """Publishes the id of a subscription that changed, with a publisher confirm (the control service)."""

    def __init__(self, url: str, exchange: str, *, purpose: str, confirm_timeout: float = 5.0) -> None:
        self.url = url
        self.exchange_name = exchange
        self.purpose = purpose
        self.confirm_timeout = confirm_timeout
        self._conn: AbstractRobustConnection | None = None
        self._exchange: aio_pika.abc.AbstractExchange | None = None

    async def start(self, stop: asyncio.Event | None = None) -> None:
        self._conn = await connect(self.url, purpose=self.purpose, stop=stop)
        channel = await self._conn.channel(publisher_confirms=True)
        self._exchange = await channel.declare_exchange(self.exchange_name, aio_pika.ExchangeType.FANOUT, durable=True)

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()

    async def changed(self, subscription_id: str) -> None:
        """Best effort beyond the confirm: a cache that misses it reloads within its refresh interval."""
        if self._exchange is None:
            return
        try:
            await publish_confirmed(
                self._exchange, "", aio_pika.Message(subscription_id.encode()), self.confirm_timeout
            )
        except SwitchboardError as exc:
            log.warning("change notice not sent", extra={"subscription": subscription_id, "error": exc.message})
