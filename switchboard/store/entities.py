"""The ``entities`` table: per provider entity, the version mark of the newest applied event (the
out-of-order guard) and, where the ``entity`` operation runs, its latest state.

Both are written with the cell timestamp set to the entity version, so the highest version wins whatever
order the writes land in.

**The state by reference.** When the state is the body of the event that sets it (``ctx.save_entity_state``
of the event being processed, which is what the ``entity`` operation stages), the row keeps only that event's
id (``state_event_id``) and the body is read from the event's own row: the body is stored once per event
instead of twice (~1.3 KB less per ~5 KB event, compressed). The event row is written by the same commit,
after the entity row (its second phase), with the same TTL, and only a newer version of the entity moves the
reference, so the event row is there for as long as the reference, except in one window: a processor that
dies between the two phases leaves the reference before the event row exists, until the message's
redelivery commits it (a few seconds, ``processor.redelivery_delay_seconds`` and a pass); ``get`` answers
``Unavailable`` (``ENTITY_STATE_PENDING``, retry) meanwhile. Any other staged state (another body, or another
event's) is stored in the row (``state_encoded``), as before.

**Two events with the same version** (provider timestamps in whole seconds: an invoice created and
finalized in one second) write the row with the same cell timestamp, and Cassandra settles such a tie cell
by cell, the larger value winning each: the row's event id may come from one event and its type from the
other. The id is one cell, and a state by reference names the same event (same tie, same values), so ``get``
takes the type (and, for such a state, the content type) from that event's own row, never the row's
mixed cells.

A row may hold its state three ways, from three versions of this code: the reference, the encoded column,
and the old column as received (``state``, from before payloads were encoded). Every write of a state sets
``state_event_id``, so the newest of the three by write time is the state; a write by value sets the
reference too, with the same timestamp, and wins that tie.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from typing import Any

from switchboard.errors import Unavailable
from switchboard.model.events import Entity, EntitySnapshot, InboundEvent
from switchboard.store.batches import BoundStatement
from switchboard.store.payloads import Encoder, decode, decode_or
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
        state, referenced = await self._state(r)
        content_type = r.content_type or ""
        if referenced is not None and referenced.content_type:
            content_type = referenced.content_type
        # The type of the event the row names, from that event's row (module docstring: ties).
        event_type = r.event_type or ""
        if r.event_id:
            if referenced is not None and r.state_event_id == r.event_id:
                own = referenced
            else:
                found = await self.store.execute(self.q.event_type, (r.source, r.event_id))
                own = found[0] if found else None
            if own is not None and own.event_type:
                event_type = own.event_type
        return Entity(
            source=r.source,
            entity_id=r.entity_id,
            version=int(r.version),
            event_id=r.event_id or "",
            event_type=event_type,
            updated_us=us_of(r.updated_at),
            content_type=content_type,
            state=state,
            state_event_id=r.state_event_id or "",
        )

    def mark(self, e: InboundEvent) -> BoundStatement:
        """The version mark of ``e`` (which passed the guard)."""
        return self.q.mark_entity, (*self._mark_values(e), e.source, e.entity_id)

    def _mark_values(self, e: InboundEvent) -> tuple[Any, ...]:
        """The leading values of every statement that writes ``e``'s version mark: the cell timestamp, the TTL,
        then version, event id, type and update time."""
        return (e.entity_version, self.ttl, e.entity_version, e.event_id, e.event_type, ts(e.entity_version))

    def writes(
        self, e: InboundEvent, mark: bool, effects: Sequence[EntitySnapshot], encode: Encoder
    ) -> list[BoundStatement]:
        """A pass's entity writes: its version mark (if it passed the guard) and the states its operations
        staged. The mark and the event's own state (the ``entity`` operation) are one statement: one row, one
        cell timestamp; that state is stored as a reference to the event's row (module docstring)."""
        own = [
            fx for fx in effects if (fx.source, fx.entity_id, fx.version) == (e.source, e.entity_id, e.entity_version)
        ]
        if mark and own:
            fx = own[0]
            rest = [x for x in effects if x is not fx]
            head = self._mark_values(e)
            params: tuple[Any, ...]
            if fx.event_id == e.event_id and (fx.body is e.body or fx.body == e.body):
                params = (*head, fx.content_type, e.event_id, e.source, e.entity_id)
                statement = self.q.mark_and_reference_entity
            else:
                params = (*head, fx.content_type, encode(fx.body), fx.event_id, e.source, e.entity_id)
                statement = self.q.mark_and_snapshot_entity
            return [(statement, params), *(self.snapshot(x, encode) for x in rest)]
        return [*([self.mark(e)] if mark else []), *(self.snapshot(fx, encode) for fx in effects)]

    def snapshot(self, fx: EntitySnapshot, encode: Encoder) -> BoundStatement:
        """The state staged by an operation (``ctx.save_entity_state``)."""
        params = (fx.version, self.ttl, fx.content_type, encode(fx.body), fx.event_id, fx.source, fx.entity_id)
        return self.q.snapshot_entity, params

    async def _state(self, r: Any) -> tuple[bytes, Any]:
        """The row's state: the newest of the reference, the encoded column and the old column (module
        docstring); ``b""`` when no state was ever staged. With it, the event row read for a reference."""
        held = [
            (r.state_encoded_written, 2, "encoded") if r.state_encoded is not None else None,
            (r.state_written, 1, "received") if r.state is not None else None,
            (r.state_event_written, 0, "reference") if r.state_event_id else None,
        ]
        newest = max((h for h in held if h is not None), default=None)
        if newest is None:
            return b"", None
        if newest[2] == "encoded":
            return decode(r.state_encoded), None
        if newest[2] == "received":
            return bytes(r.state), None
        rows = await self.store.execute(self.q.event_body, (r.source, r.state_event_id))
        if not rows:
            raise Unavailable(
                f"the state of entity {r.entity_id!r} is its event {r.state_event_id!r}, which is not stored yet "
                "(its processor stopped between two writes; the redelivery stores it): retry",
                reason="ENTITY_STATE_PENDING",
                metadata={"source": r.source, "entity_id": r.entity_id, "event_id": r.state_event_id},
            )
        return decode_or(rows[0].body_encoded, rows[0].body), rows[0]
