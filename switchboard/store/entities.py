"""The ``entities`` table: per provider entity, the version mark of the newest applied event (the
out-of-order guard) and, where the ``entity`` operation runs, its latest state.

Both are written with the cell timestamp set to the entity version, so the highest version wins whatever
order the writes land in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from typing import Any

from switchboard.model.events import Entity, EntitySnapshot, InboundEvent
from switchboard.store.batches import BoundStatement
from switchboard.store.payloads import Encoder, decode
from switchboard.store.session import StoreSession
from switchboard.store.values import ts, us_of


class EntityStore:
    def __init__(self, store: StoreSession) -> None:
        self.store = store
        self.ttl = store.cfg.ttl_seconds
        self.q = store.statements.events

    async def versions(self, keys: Collection[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """The version of the newest applied event of each (source, entity id) that has one, with one ``IN``
        read per source."""
        by_source: dict[str, list[str]] = {}
        for source, entity_id in keys:
            by_source.setdefault(source, []).append(entity_id)
        reads = await asyncio.gather(
            *(self.store.execute(self.q.entity_versions, (s, sorted(set(ids)))) for s, ids in by_source.items())
        )
        return {
            (source, r.entity_id): int(r.version)
            for source, rows in zip(by_source, reads, strict=True)
            for r in rows
            if r.version is not None
        }

    async def get(self, source: str, entity_id: str) -> Entity | None:
        rows = await self.store.execute(self.q.get_entity, (source, entity_id))
        if not rows or rows[0].version is None:
            return None
        r = rows[0]
        return Entity(
            source=r.source,
            entity_id=r.entity_id,
            version=int(r.version),
            event_id=r.event_id or "",
            event_type=r.event_type or "",
            updated_us=us_of(r.updated_at),
            content_type=r.content_type or "",
            state=_state(r),
            state_event_id=r.state_event_id or "",
        )

    def mark(self, e: InboundEvent) -> BoundStatement:
        """The version mark of ``e`` (which passed the guard)."""
        params = (
            e.entity_version,
            self.ttl,
            e.entity_version,
            e.event_id,
            e.event_type,
            ts(e.entity_version),
            e.source,
            e.entity_id,
        )
        return self.q.mark_entity, params

    def writes(
        self, e: InboundEvent, mark: bool, effects: Sequence[EntitySnapshot], encode: Encoder
    ) -> list[BoundStatement]:
        """A pass's entity writes: its version mark (if it passed the guard) and the states its operations
        staged. The mark and the event's own state (the ``entity`` operation) are one statement: one row, one
        cell timestamp."""
        own = [
            fx for fx in effects if (fx.source, fx.entity_id, fx.version) == (e.source, e.entity_id, e.entity_version)
        ]
        if mark and own:
            fx = own[0]
            params = (
                e.entity_version,
                self.ttl,
                e.entity_version,
                e.event_id,
                e.event_type,
                ts(e.entity_version),
                fx.content_type,
                encode(fx.body),
                fx.event_id,
                e.source,
                e.entity_id,
            )
            rest = [x for x in effects if x is not fx]
            return [(self.q.mark_and_snapshot_entity, params), *(self.snapshot(x, encode) for x in rest)]
        return [*([self.mark(e)] if mark else []), *(self.snapshot(fx, encode) for fx in effects)]

    def snapshot(self, fx: EntitySnapshot, encode: Encoder) -> BoundStatement:
        """The state staged by an operation (``ctx.save_entity_state``)."""
        params = (fx.version, self.ttl, fx.content_type, encode(fx.body), fx.event_id, fx.source, fx.entity_id)
        return self.q.snapshot_entity, params


def _state(r: Any) -> bytes:
    """The entity's state: the encoded column, unless the row's old column (``state``, as received, from
    before payloads were encoded) holds a newer version's state. Both are written with the version as cell
    timestamp, so the newer write is the one with the higher write time."""
    if r.state_encoded is not None and (r.state is None or r.state_encoded_written >= r.state_written):
        return decode(r.state_encoded)
    return bytes(r.state or b"")
