"""Events, their operation results and duplicates, the idempotency claim and the per-source listing index.

Every write is idempotent, so a redelivered message may commit again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from cassandra.query import BatchStatement, BatchType

from switchboard.model.events import (
    Effect,
    EventStatus,
    EventSummary,
    InboundEvent,
    OperationResult,
    Outcome,
    ProcessingState,
    StoredEvent,
)
from switchboard.store.entities import EntityStore
from switchboard.store.session import StoreSession
from switchboard.store.values import ts, us_of

Cursor = tuple[int, int, str]  # (bucket, received_at in ms, event_id) of the last row returned


class EventStore:
    def __init__(self, store: StoreSession, entities: EntityStore) -> None:
        self.store = store
        self.entities = entities
        self.q = store.statements
        self.ttl = store.cfg.ttl_seconds
        self.bucket_us = store.cfg.bucket_seconds * 1_000_000
        self._level = self.q.insert_event.consistency_level

    def bucket_of(self, received_us: int) -> int:
        return received_us // self.bucket_us

    # -- processing -------------------------------------------------------------------------------------
    async def claim(self, source: str, event_id: str, receipt_id: str, now_us: int) -> tuple[bool, str]:
        """Claims (source, event_id) for ``receipt_id`` with a lightweight transaction. Returns (won, the
        receipt holding the claim): only one receipt ever holds it, however many processors race."""
        rows = await self.store.execute(self.q.claim, (source, event_id, receipt_id, ts(now_us), self.ttl))
        row = rows[0]
        if row[0]:  # [applied]
            return True, receipt_id
        return False, str(row.receipt_id)

    async def processing_state(self, source: str, event_id: str) -> ProcessingState:
        rows, records = await asyncio.gather(
            self.store.execute(self.q.state_event, (source, event_id)),
            self.store.execute(self.q.state_records, (source, event_id)),
        )
        status = EventStatus(rows[0].status) if rows and rows[0].status else None
        attempts = int(rows[0].attempts or 0) if rows else 0
        done = frozenset(
            r.operation
            for r in records
            if r.rec.startswith("r:") and r.outcome in (Outcome.OK.value, Outcome.SKIPPED.value)
        )
        return ProcessingState(status, attempts, done)

    async def commit(self, stored: StoredEvent, effects: Sequence[Effect] = (), *, mark_entity: bool = False) -> None:
        """Writes one processing pass. The effects (and the entity's version mark) land first, then the event
        row with its operation results and the index row: a crash in between leaves effects without the
        results that say they were applied, so the operations run again and rewrite the same values."""
        e = stored.event
        if effects or mark_entity:
            batch = BatchStatement(batch_type=BatchType.UNLOGGED, consistency_level=self._level)
            if mark_entity:
                batch.add(*self.entities.mark(e))
            for fx in effects:
                batch.add(*self.entities.snapshot(fx))
            await self.store.execute(batch)
        batch = BatchStatement(batch_type=BatchType.UNLOGGED, consistency_level=self._level)
        batch.add(self.q.insert_event, self._event_params(stored))
        for r in stored.results:
            batch.add(self.q.insert_result, self._result_params(e, r))
        await asyncio.gather(self.store.execute(batch), self.write_index(e, stored.status))

    def _event_params(self, stored: StoredEvent) -> tuple[Any, ...]:
        e = stored.event
        return (
            e.source,
            e.event_id,
            e.event_type,
            e.provider,
            ts(e.received_us),
            ts(e.provider_time_us) if e.provider_time_us else None,
            e.content_type,
            e.body,
            e.headers,
            e.receipt_id,
            e.entity_id,
            e.entity_version,
            e.traceparent,
            e.replay,
            stored.status.value,
            ts(stored.processed_us) if stored.processed_us else None,
            stored.attempts,
            stored.last_error,
            self.ttl,
        )

    def _result_params(self, e: InboundEvent, r: OperationResult) -> tuple[Any, ...]:
        return (
            e.source,
            e.event_id,
            f"r:{r.operation}:{r.attempt:04d}:{r.run_id}",
            r.operation,
            r.outcome.value,
            r.attempt,
            r.duration_us,
            ts(r.finished_us),
            r.error,
            e.receipt_id,
            self.ttl,
        )

    async def write_index(self, e: InboundEvent, status: EventStatus) -> None:
        """The listing row of ``e`` (rewritten with the status of every pass; idempotent)."""
        params = (
            e.source,
            self.bucket_of(e.received_us),
            ts(e.received_us),
            e.event_id,
            e.event_type,
            status.value,
            e.receipt_id,
            self.ttl,
        )
        await self.store.execute(self.q.insert_index, params)

    async def save_duplicate(self, e: InboundEvent) -> None:
        params = (e.source, e.event_id, f"d:{e.receipt_id}", e.receipt_id, ts(e.received_us), self.ttl)
        await self.store.execute(self.q.insert_duplicate, params)

    # -- reads ------------------------------------------------------------------------------------------
    async def get(self, source: str, event_id: str) -> StoredEvent | None:
        rows, records = await asyncio.gather(
            self.store.execute(self.q.get_event, (source, event_id)),
            self.store.execute(self.q.get_records, (source, event_id)),
        )
        if not rows:
            return None
        r = rows[0]
        event = InboundEvent(
            source=r.source,
            event_id=r.event_id,
            event_type=r.event_type or "",
            provider=r.provider or "",
            received_us=us_of(r.received_at),
            body=r.body or b"",
            content_type=r.content_type or "",
            headers=dict(r.headers or {}),
            receipt_id=r.receipt_id or "",
            provider_time_us=us_of(r.provider_time),
            entity_id=r.entity_id or "",
            entity_version=r.entity_version or 0,
            traceparent=r.traceparent or "",
            replay=bool(r.replay),
        )
        results = [
            OperationResult(
                operation=x.operation,
                outcome=Outcome(x.outcome),
                attempt=x.attempt or 0,
                duration_us=x.duration_us or 0,
                finished_us=us_of(x.finished_at),
                error=x.error or "",
                run_id=x.rec.rsplit(":", 1)[-1],
            )
            for x in records
            if x.rec.startswith("r:")
        ]
        results.sort(key=lambda x: (x.finished_us, x.operation))
        return StoredEvent(
            event=event,
            status=EventStatus(r.status),
            results=results,
            processed_us=us_of(r.processed_at),
            attempts=r.attempts or 0,
            last_error=r.last_error or "",
            duplicates=sum(1 for x in records if x.rec.startswith("d:")),
        )

    async def list(
        self, source: str, start_us: int, end_us: int, limit: int, after: Cursor | None
    ) -> tuple[list[EventSummary], Cursor | None]:
        """Events of ``source`` with start <= received_at < end, oldest first, at most ``limit``; returns
        them and the cursor to continue from (None when the range is exhausted)."""
        out: list[EventSummary] = []
        bucket = after[0] if after else self.bucket_of(start_us)
        last_bucket = self.bucket_of(max(end_us - 1, start_us))
        end_ms = end_us // 1000
        while bucket <= last_bucket and len(out) < limit:
            want = limit - len(out)
            if after is not None and after[0] == bucket:
                params: tuple[Any, ...] = (source, bucket, ts(after[1] * 1000), after[2], want)
                rows = await self.store.execute(self.q.list_after, params)
            else:
                params = (source, bucket, ts(start_us), ts(end_us), want)
                rows = await self.store.execute(self.q.list_range, params)
            for row in rows:
                t_us = us_of(row.received_at)
                if t_us // 1000 >= end_ms:  # only possible after a cursor: the range is exhausted
                    return out, None
                status = EventStatus(row.status)
                out.append(EventSummary(source, row.event_id, row.event_type or "", t_us, status, row.receipt_id or ""))
            if len(rows) < want:
                bucket += 1
                after = None
            else:
                after = (bucket, out[-1].received_us // 1000, out[-1].event_id)
        if len(out) >= limit:
            last = out[-1]
            return out, (self.bucket_of(last.received_us), last.received_us // 1000, last.event_id)
        return out, None
