"""Processor domain: deduplicate, run the matching operations, record everything.

At-least-once delivery from the queue becomes "stored once": the first accepted delivery (receipt) of a
(source, event_id) is processed and stored; later receipts of the same key are recorded as duplicates.
A redelivery of the *same* receipt (the processor died before its ack) is processed again and rewrites the
same rows, which is idempotent.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol

from processor_service.operations import Registry
from switchboard.events import EventStatus, InboundEvent, Outcome, StoredEvent, now_us


class EventStore(Protocol):
    async def first_receipt(self, source: str, event_id: str) -> str | None: ...
    async def save(self, stored: StoredEvent) -> None: ...
    async def save_duplicate(self, e: InboundEvent) -> None: ...


class Disposition(enum.Enum):
    PROCESSED = "processed"
    FAILED = "failed"
    DUPLICATE = "duplicate"


class Processor:
    def __init__(self, store: EventStore, registry: Registry) -> None:
        self.store = store
        self.registry = registry
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def _exclusive(self, key: str) -> AsyncIterator[None]:
        """Serialises deliveries of one key inside this process (two receipts in one prefetch window)."""
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    async def handle(self, event: InboundEvent) -> tuple[Disposition, StoredEvent | None]:
        async with self._exclusive(event.key):
            first = await self.store.first_receipt(event.source, event.event_id)
            if first is not None and first != event.receipt_id and not event.replay:
                await self.store.save_duplicate(event)
                return Disposition.DUPLICATE, None
            results = [await op.run(event, attempt=1) for op in self.registry.matching(event)]
            failed = [r for r in results if r.outcome is Outcome.FAILED]
            stored = StoredEvent(
                event=event,
                status=EventStatus.FAILED if failed else EventStatus.PROCESSED,
                results=results,
                processed_us=now_us(),
                attempts=1,
                last_error=failed[-1].error if failed else "",
            )
            await self.store.save(stored)
            return (Disposition.FAILED if failed else Disposition.PROCESSED), stored
