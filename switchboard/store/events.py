"""Events, their operation results and duplicates, and the per-source listing index.

Reads and writes work on a processor's whole batch: one ``IN`` read per source, and every write of the batch
in a few concurrent unlogged batches. Every write is idempotent, so a redelivered message may commit again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from switchboard.errors import StoreUnavailable
from switchboard.headers import never_stored
from switchboard.model.events import (
    Commit,
    EventStatus,
    EventSummary,
    InboundEvent,
    OperationResult,
    Outcome,
    Prior,
    Runs,
    StoredEvent,
)
from switchboard.pagination import check_range
from switchboard.store.batches import BATCH_BYTES, BoundStatement, unit_bytes, write_all
from switchboard.store.entities import EntityStore
from switchboard.store.payloads import Encoder, decode_or
from switchboard.store.session import StoreSession
from switchboard.store.values import ts, us_of

# A row reset for a redrive that changed under it this many times in a row: an outage's answer.
RESET_TRIES = 5

Cursor = tuple[int, int, str]  # (bucket, received_at in ms, event_id) of the last row returned
# The most buckets ``EventStore.list`` reads at once while they come back empty (and the most listing reads out
# at once per store).
LIST_LOOKAHEAD = 64


class EventStore:
    def __init__(self, store: StoreSession, entities: EntityStore) -> None:
        self.store = store
        self.entities = entities
        self.q = store.statements.events
        self.ttl = store.cfg.ttl_seconds
        self.bucket_us = store.cfg.bucket_seconds * 1_000_000
        self._level = self.q.insert_event.consistency_level
        self._list_reads = asyncio.Semaphore(LIST_LOOKAHEAD)  # listing reads out at once, all listings together

    def bucket_of(self, received_us: int) -> int:
        return received_us // self.bucket_us

    # -- processing -------------------------------------------------------------------------------------
    async def priors(self, events: Sequence[InboundEvent]) -> dict[str, Prior]:
        """What is stored of each event (by key), with one ``IN`` read per source; absent keys were never
        committed."""
        by_source: dict[str, list[str]] = {}
        for e in events:
            ids = by_source.setdefault(e.source, [])
            if e.event_id not in ids:
                ids.append(e.event_id)
        reads = await asyncio.gather(
            *(self.store.execute(self.q.priors, (source, ids)) for source, ids in by_source.items())
        )
        out: dict[str, Prior] = {}
        for source, rows in zip(by_source, reads, strict=True):
            for r in rows:
                if r.status:
                    out[f"{source}/{r.event_id}"] = Prior(
                        r.receipt_id or "", EventStatus(r.status), int(r.attempts or 0), r.last_error or ""
                    )
        return out

    async def runs_of(self, source: str, event_id: str, receipt_id: str) -> Runs:
        """What ``receipt_id`` did for the event: its operations with an OK or SKIPPED run (they never run again
        for it) and its attempts. Another receipt's runs do not count: a replay's retry ran again what the
        replay had already run, taken for done by the event's first receipt. (A result without a receipt,
        written before results had one, counts for every receipt: never applied twice.)"""
        rows = await self.store.execute(self.q.run_records, (source, event_id))
        mine = [r for r in rows if r.receipt_id in (receipt_id, None)]
        return Runs(
            done=frozenset(r.operation for r in mine if r.outcome in (Outcome.OK.value, Outcome.SKIPPED.value)),
            attempts=frozenset(r.attempt for r in mine if r.attempt),
        )

    async def commit(
        self,
        commits: Sequence[Commit],
        *,
        duplicates: Sequence[InboundEvent] = (),
        reindex: Sequence[tuple[InboundEvent, EventStatus]] = (),
    ) -> None:
        """Writes processing passes in two phases. First every effect and entity version mark; then the event
        rows with their operation results (each event's row and results are one partition: one atomic
        mutation), their index rows, the duplicate records and any index row to repair. A crash between the
        phases leaves effects without the results that say they were applied: the operations run again and
        rewrite the same values. Every write is idempotent, so a redelivered message may commit again.

        Each phase goes out as unlogged batches of whole units (an event's row and its results are never
        split: one partition, one atomic mutation), all in flight at once (``switchboard.store.batches``); an
        event larger than a batch may be goes without its index row, so that its batch is one partition."""
        first: list[list[BoundStatement]] = []
        second: list[list[BoundStatement]] = []
        encode = Encoder(compress=self.store.cfg.compress_payloads)  # a body kept as its entity's state: once
        for c in commits:
            e = c.stored.event
            effects = self.entities.writes(e, c.mark_entity, c.effects, encode)
            if effects:
                first.append(effects)
            row = [(self.q.insert_event, self._event_params(c.stored, encode))]
            row.extend((self.q.insert_result, self._result_params(e, r)) for r in c.stored.results)
            index = self._index(e, c.stored.status)
            if unit_bytes(row) + unit_bytes([index]) > BATCH_BYTES:
                # A batch of one partition is never measured against the cluster's batch_size_fail_threshold
                # (only batches of several are): an event too large for it goes as its row and results, its
                # index row apart (a lost index row is repaired by the redelivery, as after any crash).
                second.extend([row, [index]])
            else:
                second.append([*row, index])
        for e in duplicates:
            params = (e.source, e.event_id, f"d:{e.receipt_id}", e.receipt_id, ts(e.received_us), self.ttl)
            second.append([(self.q.insert_duplicate, params)])
        second.extend([self._index(e, status)] for e, status in reindex)
        units = self.store.cfg.batch_units
        await write_all(self.store, first, self._level, units)
        await write_all(self.store, second, self._level, units)

    def _event_params(self, stored: StoredEvent, encode: Encoder) -> tuple[Any, ...]:
        e = stored.event
        return (
            e.source,
            e.event_id,
            e.event_type,
            e.provider,
            ts(e.received_us),
            ts(e.provider_time_us) if e.provider_time_us else None,
            e.content_type,
            encode(e.body),
            _stored_headers(e.headers),
            e.receipt_id,
            e.entity_id,
            e.entity_version,
            e.traceparent,
            e.replay,
            e.replay_id,
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

    def _index(self, e: InboundEvent, status: EventStatus) -> BoundStatement:
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
        return self.q.insert_index, params

    async def reset_attempts(self, event: InboundEvent) -> bool:
        """An event redriven from the dead letters (``event``: the dead-lettered receipt): RETRYING with a fresh
        attempt budget (its history of runs stays; the next passes number their attempts from 1 again). False,
        writing nothing, for one processed since (a replay, say), or stored under another receipt that is not a
        replay, or that is a replay that ran and that another replay took over since: the redriven receipt
        would be a duplicate there, acked with nothing run, and the row would have said RETRYING for good. An
        event with no row (dead-lettered before its first commit) gets one with no receipt, which the
        processor takes for nothing stored. A row that changed between the read and the write is read again
        and decided anew, so that False always means settled (the redrive marks such a dead letter REDRIVEN)."""
        for _ in range(RESET_TRIES):
            reset = await self._reset_once(event)
            if reset is not None:
                return reset
        raise StoreUnavailable(f"event {event.key} kept changing while it was reset for a redrive")

    async def _reset_once(self, event: InboundEvent) -> bool | None:
        """``reset_attempts`` against one read of the row; None if the row changed before the write."""
        source, event_id = event.source, event.event_id
        rows = await self.store.execute(self.q.get_event, (source, event_id))
        if rows and rows[0].status in (EventStatus.PROCESSED.value, EventStatus.STALE.value):
            return False
        if rows and rows[0].receipt_id and rows[0].receipt_id != event.receipt_id:
            if not event.replay:
                return False
            # A replay under another receipt: taken for a new replay only if its own receipt never ran. One
            # that ran and that another replay took over since is a duplicate to the processor, so resetting
            # the row for it left the event RETRYING for good.
            if (await self.runs_of(source, event_id, event.receipt_id)).attempts:
                return False
        head = (self.ttl, EventStatus.RETRYING.value, source, event_id)
        if not rows:
            # Only while there is still none (``IF NOT EXISTS``): a first commit between the read and the write
            # (the redriven receipt's, or another one's) was turned back into RETRYING, which nothing would ever
            # process. (Cassandra 2.1 does not take ``IF status = null`` for a row that does not exist.)
            params = (source, event_id, EventStatus.RETRYING.value, self.ttl)
            done = await self.store.execute(self.q.reset_attempts_new, params)
            return True if done and done[0][0] else None
        if rows[0].status is None:  # a row without a status (its cells expired apart): nothing to lose
            await self.store.execute(self.q.reset_attempts, head)
            return True
        # Only the row as read: a pass committed since the read (a replay's PROCESSED, say) is not turned back
        # into RETRYING, which nothing would ever process (found in review). A compare-and-set, once per redrive.
        # Exact on one node (this stack). On a cluster its SERIAL read may miss a commit written at ONE (the
        # processors' default consistency) on another replica: there, write at QUORUM, or LOCAL_QUORUM with
        # LOCAL_SERIAL in one datacentre (docs/scaling.md).
        row = rows[0]
        if row.receipt_id:
            done = await self.store.execute(self.q.reset_attempts_if, (*head, row.status, row.receipt_id))
        else:
            done = await self.store.execute(self.q.reset_attempts_if_status, (*head, row.status))
        return True if done and done[0][0] else None

    # -- reads ------------------------------------------------------------------------------------------
    async def get(self, source: str, event_id: str) -> StoredEvent | None:
        """The event with its runs and duplicates. The row is read first and its records after it, not both at
        once: a pass commits both in one batch, and two concurrent reads could straddle that write and return
        the new status with the runs from before it (a PROCESSED event without its OK run). A row without a
        receipt is no event yet: the mark a redrive leaves for an event dead-lettered before its first commit
        (``reset_attempts``), which the processor takes for nothing stored too. Duplicates are counted by
        Cassandra: a sender that retried an event 100,000 times had every one of its records read and shipped to
        count them."""
        rows = await self.store.execute(self.q.get_event, (source, event_id))
        if not rows or not rows[0].receipt_id:
            return None
        records, counted = await asyncio.gather(
            self.store.execute(self.q.get_results, (source, event_id)),
            self.store.execute(self.q.count_duplicates, (source, event_id)),
        )
        r = rows[0]
        event = InboundEvent(
            source=r.source,
            event_id=r.event_id,
            event_type=r.event_type or "",
            provider=r.provider or "",
            received_us=us_of(r.received_at),
            body=decode_or(r.body_encoded, r.body),
            content_type=r.content_type or "",
            headers=dict(r.headers or {}),
            receipt_id=r.receipt_id or "",
            provider_time_us=us_of(r.provider_time),
            entity_id=r.entity_id or "",
            entity_version=r.entity_version or 0,
            traceparent=r.traceparent or "",
            replay=bool(r.replay),
            replay_id=r.replay_id or "",
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
        ]
        results.sort(key=lambda x: (x.finished_us, x.operation))
        return StoredEvent(
            event=event,
            status=EventStatus(r.status),
            results=results,
            processed_us=us_of(r.processed_at),
            attempts=r.attempts or 0,
            last_error=r.last_error or "",
            duplicates=counted[0][0] if counted else 0,
        )

    async def list(
        self, source: str, start_us: int, end_us: int, limit: int, after: Cursor | None
    ) -> tuple[list[EventSummary], Cursor | None]:
        """Events of ``source`` with start <= received_at < end, oldest first, at most ``limit``; returns
        them and the cursor to continue from (None when the range is exhausted).

        The range is read bucket by bucket, in order. While buckets come back empty, the ones after the bucket
        being read are probed with it, one row each (1, 2, 4 … up to ``LIST_LOOKAHEAD`` buckets at once, back
        to 1 at the first rows found), and the first probe that finds a row is where reading goes on: 30 days
        of one-minute buckets are 43,200 partitions, which one read after another took over a minute for a
        quiet source. At most ``LIST_LOOKAHEAD`` listing reads are out at once per store. A range longer than
        ``check_range`` allows is refused; a cursor outside the range reads from its start, or nothing."""
        check_range(start_us, end_us, self.ttl)
        out: list[EventSummary] = []
        first_bucket = self.bucket_of(start_us)
        bucket = max(after[0], first_bucket) if after else first_bucket  # a cursor before the range: its start
        last_bucket = self.bucket_of(max(end_us - 1, start_us))
        end_ms = end_us // 1000
        ahead = 1
        while bucket <= last_bucket and len(out) < limit:
            want = limit - len(out)
            probed: Sequence[tuple[int, Sequence[Any]]] = ()
            if after is not None and after[0] == bucket:
                params: tuple[Any, ...] = (source, bucket, ts(after[1] * 1000), after[2], want)
                rows = await self._list_read(self.q.list_after, params)
                after = None
            else:
                span = range(bucket, min(last_bucket, bucket + ahead - 1) + 1)
                rows, *probes = await asyncio.gather(
                    *(
                        self._list_read(self.q.list_range, (source, b, ts(start_us), ts(end_us), want if i == 0 else 1))
                        for i, b in enumerate(span)
                    )
                )
                probed = list(zip(span[1:], probes, strict=True))
            for row in rows:
                t_us = us_of(row.received_at)
                if t_us // 1000 >= end_ms:  # only possible after a cursor: the range is exhausted
                    return out, None
                status = EventStatus(row.status)
                out.append(EventSummary(source, row.event_id, row.event_type or "", t_us, status, row.receipt_id or ""))
            # A bucket that gave ``want`` rows filled the page (the loop ends); else it is exhausted: on to the
            # first probed bucket with a row, or past the probed ones.
            found = next((b for b, first in probed if first), None)
            bucket = found if found is not None else (probed[-1][0] if probed else bucket) + 1
            ahead = 1 if rows or found is not None else min(LIST_LOOKAHEAD, 2 * ahead)
        return out, (self.cursor_of(out[-1]) if len(out) >= limit else None)

    def cursor_of(self, event: EventSummary) -> Cursor:
        """Where ``list`` goes on after ``event``: its bucket, received time in ms, and id."""
        return self.bucket_of(event.received_us), event.received_us // 1000, event.event_id

    async def _list_read(self, statement: Any, params: tuple[Any, ...]) -> Sequence[Any]:
        async with self._list_reads:
            return await self.store.execute(statement, params)


def _stored_headers(headers: dict[str, str]) -> dict[str, str]:
    """The event's headers as stored: none that ingest does not store (``never_stored``). Ingest filters
    what it takes; a copy from before a credential's name was covered (a retry in a delay queue, a dead letter
    redriven) stored the credential again with a fresh retention. The same dict when nothing is left out."""
    if not any(never_stored(k) for k in headers):
        return headers
    return {k: v for k, v in headers.items() if not never_stored(k)}
