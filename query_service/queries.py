"""Query domain: read stored events, with opaque page tokens bound to the request they came from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from switchboard import pagination
from switchboard.errors import InvalidRequest, NotFound
from switchboard.model.events import (
    MAX_ENTITY_ID_BYTES,
    MAX_KEY_BYTES,
    Entity,
    EventStatus,
    EventSummary,
    StoredEvent,
    key_bytes,
)

DEFAULT_PAGE = 100
MAX_PAGE = 1000
DEFAULT_RANGE_US = 24 * 3600 * 1_000_000
# A status-filtered page scans at most this many index rows before it returns (possibly short, with a token),
# reading at least FILTER_READ rows at a time: asking only for what was missing, a page of one FAILED event
# among thousands of others took one store read per row scanned.
MAX_SCAN = 5000
FILTER_READ = 500


Cursor = tuple[int, int, str]  # the store's position in the listing index (bucket, received_at ms, event_id)


class EventReader(Protocol):
    async def get(self, source: str, event_id: str) -> StoredEvent | None: ...

    async def list(
        self, source: str, start_us: int, end_us: int, limit: int, after: Cursor | None
    ) -> tuple[list[EventSummary], Cursor | None]: ...

    def cursor_of(self, event: EventSummary) -> Cursor:
        """The cursor that continues a listing right after ``event``."""
        ...


class EntityReader(Protocol):
    async def get(self, source: str, entity_id: str) -> Entity | None: ...


@dataclass(frozen=True)
class Page:
    events: list[EventSummary]
    next_token: str


def encode_token(source: str, start_us: int, end_us: int, cursor: Cursor, status: str = "") -> str:
    return pagination.encode_token({"s": source, "a": start_us, "b": end_us, "c": list(cursor), "st": status})


def decode_token(token: str) -> tuple[str, int, int, Cursor, str]:
    raw = pagination.decode_token(token)
    bucket, ms, event_id = pagination.position(raw.get("c"), "ims")
    source, start, end, status = pagination.position([raw.get(k) for k in ("s", "a", "b", "st")], "siis")
    return source, start, end, (bucket, ms, event_id), status


class EventQueries:
    def __init__(self, events: EventReader, entities: EntityReader) -> None:
        self.store = events
        self.entities = entities

    async def get_event(self, source: str, event_id: str) -> StoredEvent:
        if not source or not event_id:
            raise InvalidRequest("source and event_id are required", reason="FIELD_REQUIRED")
        if key_bytes(source, event_id) > MAX_KEY_BYTES:
            raise InvalidRequest(
                f"source and event_id are longer than any stored event's ({MAX_KEY_BYTES} bytes together)",
                reason="EVENT_ID_INVALID",
            )
        stored = await self.store.get(source, event_id)
        if stored is None:
            raise NotFound(
                f"no event {event_id!r} from source {source!r}",
                reason="EVENT_NOT_FOUND",
                metadata={"source": source, "event_id": event_id},
            )
        return stored

    async def get_entity(self, source: str, entity_id: str) -> Entity:
        if not source or not entity_id:
            raise InvalidRequest("source and entity_id are required", reason="FIELD_REQUIRED")
        if len(entity_id.encode()) > MAX_ENTITY_ID_BYTES or len(source.encode()) > MAX_KEY_BYTES:
            raise InvalidRequest(
                f"source and entity_id are longer than any stored entity's ({MAX_KEY_BYTES} and "
                f"{MAX_ENTITY_ID_BYTES} bytes)",
                reason="ENTITY_ID_INVALID",
            )
        entity = await self.entities.get(source, entity_id)
        if entity is None:
            raise NotFound(
                f"no entity {entity_id!r} from source {source!r}",
                reason="ENTITY_NOT_FOUND",
                metadata={"source": source, "entity_id": entity_id},
            )
        return entity

    async def list_events(
        self,
        source: str,
        start_us: int | None,
        end_us: int | None,
        page_size: int,
        page_token: str,
        status: EventStatus | None = None,
    ) -> Page:
        if not source:
            raise InvalidRequest("source is required", reason="FIELD_REQUIRED")
        if len(source.encode()) > MAX_KEY_BYTES:
            raise InvalidRequest(
                f"source is longer than any stored event's ({MAX_KEY_BYTES} bytes)", reason="SOURCE_INVALID"
            )
        if page_size < 0 or page_size > MAX_PAGE:
            raise InvalidRequest(f"page_size must be between 0 and {MAX_PAGE}", reason="PAGE_SIZE_INVALID")
        start, end = pagination.listing_range(start_us, end_us, DEFAULT_RANGE_US)
        wanted = status.value if status else ""
        cursor: Cursor | None = None
        if page_token:
            t_source, t_start, t_end, cursor, t_status = decode_token(page_token)
            if (t_source, t_status) != (source, wanted):
                raise pagination.mismatched_token()
            start, end = pagination.pinned_range(t_start, t_end, start_us, end_us)
        limit = page_size or DEFAULT_PAGE
        if status is None:
            events, next_cursor = await self.store.list(source, start, end, limit, cursor)
        else:
            events, next_cursor = await self._filtered(source, start, end, limit, cursor, status)
        return Page(events, encode_token(source, start, end, next_cursor, wanted) if next_cursor else "")

    async def _filtered(
        self, source: str, start: int, end: int, limit: int, cursor: Cursor | None, status: EventStatus
    ) -> tuple[list[EventSummary], Cursor | None]:
        """Up to ``limit`` events of ``status``, reading ``FILTER_READ`` rows or more at a time, at most
        ``MAX_SCAN``; a page that fills inside a read goes on after its last event, not after the read's."""
        events: list[EventSummary] = []
        scanned = 0
        while True:
            batch, after_batch = await self.store.list(
                source, start, end, max(limit - len(events), FILTER_READ), cursor
            )
            scanned += len(batch)
            for i, e in enumerate(batch):
                if e.status is status:
                    events.append(e)
                    if len(events) == limit:
                        return events, (self.store.cursor_of(e) if i < len(batch) - 1 else after_batch)
            cursor = after_batch
            if cursor is None or scanned >= MAX_SCAN:
                return events, cursor
