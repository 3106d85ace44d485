"""Deliveries (one per event and subscription) and their attempts, each written with the retention TTL.

A delivery's row is rewritten after every attempt, together with its listing rows (by subscription and day,
newest first; by event) and the attempt's rows (by delivery; by subscription and day, newest first): one
unlogged batch, shared with the records of other deliveries that finish meanwhile (``GroupCommit``). Every
write is idempotent (an attempt row is keyed by its own run id). Lookups of deliveries by id from concurrent
callers share ``IN`` reads (``GroupRead``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from switchboard.model.subscriptions import Attempt, Delivery, DeliveryStatus
from switchboard.pagination import DAY_US, AttemptCursor, DeliveryCursor, attempt_cursor, check_range, delivery_cursor
from switchboard.store.batches import BoundStatement, GroupCommit
from switchboard.store.lookups import GroupRead
from switchboard.store.session import StoreSession
from switchboard.store.values import ts, us_of


def ms_floor(us: int) -> int:
    """``us`` down to its millisecond: Cassandra keeps timestamps (and the driver sends bounds) in
    milliseconds, so a row is compared with a bound at that precision. Compared in microseconds, a row at
    .7 ms fell outside both [a, .5 ms) and [.5 ms, b)."""
    return us - us % 1000


def day_of(us: int) -> int:
    return us // DAY_US


def days_to_read(start_us: int, end_us: int, after_day: int | None, ttl_seconds: int) -> tuple[int, int]:
    """The day a newest-first listing of [start, end) by day reads first (its cursor's, if it has one, but never
    after the range's last day) and the last one it reads (the range's first); a range longer than
    ``check_range`` allows is refused."""
    check_range(start_us, end_us, ttl_seconds)
    last_day = day_of(max(end_us - 1, start_us))
    return (last_day if after_day is None else min(after_day, last_day)), day_of(start_us)


class DeliveryStore:
    def __init__(self, store: StoreSession) -> None:
        self.store = store
        self.ttl = store.cfg.ttl_seconds
        self.q = store.statements.deliveries
        self.group = GroupCommit(store, self.q.put.consistency_level)
        self.lookups: GroupRead[str, Delivery] = GroupRead(self._read)

    async def get_many(self, ids: Sequence[str]) -> dict[str, Delivery]:
        """The stored state of these deliveries; concurrent callers share ``IN`` reads (``GroupRead``)."""
        return await self.lookups.get(ids)

    async def _read(self, ids: list[str]) -> dict[str, Delivery]:
        rows = await self.store.execute(self.q.get, (ids,))
        return {r.id: _delivery(r) for r in rows}

    async def record(self, d: Delivery, attempt: Attempt | None = None, *, state: bool = True) -> None:
        """Writes the delivery's state (and the attempt that led to it): five rows, one unit of the group
        commit, so that the records of a worker's concurrent deliveries share requests. Without ``state``, the
        attempt's rows only. Written again (a retried write), the same rows: the attempt's run id is its own."""
        unit: list[BoundStatement] = self._state_rows(d) if state else []
        if attempt is not None:
            run = attempt.run_id
            common = (
                ts(attempt.started_us),
                attempt.source,
                attempt.event_id,
                attempt.duration_us,
                attempt.http_status,
                attempt.response_headers,
                attempt.response_body,
                attempt.error_class,
                attempt.error,
                attempt.outcome.value,
            )
            a = attempt
            unit.append((self.q.attempt_put, (a.delivery_id, a.attempt, run, a.subscription_id, *common, self.ttl)))
            unit.append(
                (
                    self.q.attempt_by_subscription_put,
                    (a.subscription_id, day_of(a.started_us), a.delivery_id, a.attempt, run, *common, self.ttl),
                )
            )
        await self.group.write(unit)

    def _state_rows(self, d: Delivery) -> list[BoundStatement]:
        """The delivery's row and its two index rows."""
        return [
            (
                self.q.put,
                (
                    d.id,
                    d.subscription_id,
                    d.source,
                    d.event_id,
                    d.event_type,
                    d.status.value,
                    d.attempts,
                    d.last_http_status,
                    d.last_error,
                    ts(d.created_us),
                    ts(d.updated_us),
                    ts(d.next_attempt_us) if d.next_attempt_us else None,
                    self.ttl,
                ),
            ),
            (
                self.q.by_subscription_put,
                (
                    d.subscription_id,
                    day_of(d.created_us),
                    ts(d.created_us),
                    d.id,
                    d.source,
                    d.event_id,
                    d.event_type,
                    d.status.value,
                    self.ttl,
                ),
            ),
            (self.q.by_event_put, (d.source, d.event_id, d.subscription_id, d.id, d.status.value, self.ttl)),
        ]

    async def by_event(self, source: str, event_id: str) -> list[Delivery]:
        """Every delivery of the event: the originals and each replay's, from ``deliveries_of_event`` and from
        the index written before it (one row per subscription, which a replay's delivery overwrote)."""
        rows, before = await asyncio.gather(
            self.store.execute(self.q.by_event, (source, event_id)),
            self.store.execute(self.q.by_event_before, (source, event_id)),
        )
        ids = list(dict.fromkeys(r.id for r in (*rows, *before)))
        found = await self.get_many(ids)
        return [found[i] for i in ids if i in found]

    async def page(
        self, subscription_id: str, start_us: int, end_us: int, limit: int, after: DeliveryCursor | None
    ) -> tuple[list[Delivery], DeliveryCursor | None]:
        """Deliveries of a subscription created in [start, end), newest first; the cursor of the next page."""
        ids: list[tuple[int, int, str]] = []
        day, first_day = days_to_read(start_us, end_us, after[0] if after else None, self.ttl)
        while day >= first_day and len(ids) < limit:
            want = limit - len(ids)
            if after is not None and after[0] == day:
                params: tuple[Any, ...] = (subscription_id, day, ts(after[1] * 1000), after[2], want)
                rows = await self.store.execute(self.q.by_subscription_after, params)
            else:
                params = (subscription_id, day, ts(start_us), ts(end_us), want)
                rows = await self.store.execute(self.q.by_subscription_range, params)
            page = [
                delivery_cursor(us_of(r.created_at), r.id) for r in rows if us_of(r.created_at) >= ms_floor(start_us)
            ]
            ids += page
            if len(rows) < want or len(page) < len(rows):
                day -= 1
                after = None
                if len(page) < len(rows):
                    break
            else:
                after = ids[-1]
        found = await self.get_many([i for _, _, i in ids])
        out = [found[i] for _, _, i in ids if i in found]
        return out, (ids[-1] if len(ids) >= limit else None)

    async def attempts_of(self, delivery_id: str) -> list[Attempt]:
        rows = await self.store.execute(self.q.attempts_of, (delivery_id,))
        return sorted((_attempt(r) for r in rows), key=lambda a: (a.attempt, a.started_us), reverse=True)

    async def attempts_page(
        self, subscription_id: str, start_us: int, end_us: int, limit: int, after: AttemptCursor | None
    ) -> tuple[list[Attempt], AttemptCursor | None]:
        """Attempts of a subscription's deliveries started in [start, end), newest first."""
        out: list[tuple[AttemptCursor, Attempt]] = []
        day, first_day = days_to_read(start_us, end_us, after[0] if after else None, self.ttl)
        while day >= first_day and len(out) < limit:
            want = limit - len(out)
            if after is not None and after[0] == day:
                params: tuple[Any, ...] = (
                    subscription_id,
                    day,
                    ts(after[1] * 1000),
                    after[2],
                    after[3],
                    after[4],
                    want,
                )
                rows = await self.store.execute(self.q.attempts_after, params)
            else:
                rows = await self.store.execute(
                    self.q.attempts_range, (subscription_id, day, ts(start_us), ts(end_us), want)
                )
            page = [(attempt_cursor(a), a) for a in map(_attempt, rows) if a.started_us >= ms_floor(start_us)]
            out += page
            if len(rows) < want or len(page) < len(rows):
                day -= 1
                after = None
                if len(page) < len(rows):
                    break
            else:
                after = out[-1][0]
        return [a for _, a in out], (out[-1][0] if len(out) >= limit else None)


def _delivery(r: Any) -> Delivery:
    return Delivery(
        id=r.id,
        subscription_id=r.subscription_id or "",
        source=r.source or "",
        event_id=r.event_id or "",
        event_type=r.event_type or "",
        status=DeliveryStatus(r.status),
        attempts=int(r.attempts or 0),
        last_http_status=int(r.last_http_status or 0),
        last_error=r.last_error or "",
        created_us=us_of(r.created_at),
        updated_us=us_of(r.updated_at),
        next_attempt_us=us_of(r.next_attempt_at),
    )


def _attempt(r: Any) -> Attempt:
    return Attempt(
        delivery_id=r.delivery_id,
        subscription_id=r.subscription_id or "",
        source=r.source or "",
        event_id=r.event_id or "",
        attempt=int(r.attempt),
        started_us=us_of(r.started_at),
        duration_us=int(r.duration_us or 0),
        http_status=int(r.http_status or 0),
        response_headers=dict(r.response_headers or {}),
        response_body=r.response_body or b"",
        error_class=r.error_class or "",
        error=r.error or "",
        outcome=DeliveryStatus(r.outcome),
        run_id=r.run or "",  # its key in the history (and a listing's cursor): not a new one drawn
    )
