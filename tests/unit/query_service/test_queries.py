"""EventQueries against an in-memory reader: validation, NOT_FOUND reasons, paging and the status filter."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace

import pytest

from query_service.queries import FILTER_READ, MAX_PAGE, Cursor, EventQueries, decode_token, encode_token
from switchboard import errors, pagination
from switchboard.model.events import Entity, EventStatus, EventSummary, StoredEvent, now_us
from tests.unit.factories import event


@dataclass
class MemoryReader:
    """The listing index of one source as a sorted list; a cursor is the last (bucket, ms, id) returned."""

    summaries: list[EventSummary] = field(default_factory=list)
    stored: dict[str, StoredEvent] = field(default_factory=dict)
    entities: dict[str, Entity] = field(default_factory=dict)
    calls: int = 0

    async def get(self, source: str, event_id: str) -> StoredEvent | None:
        return self.stored.get(f"{source}/{event_id}")

    async def list(
        self, source: str, start_us: int, end_us: int, limit: int, after: Cursor | None
    ) -> tuple[list[EventSummary], Cursor | None]:
        self.calls += 1
        rows = [s for s in self.summaries if s.source == source and start_us <= s.received_us < end_us]
        if after is not None:
            rows = [s for s in rows if (s.received_us // 1000, s.event_id) > (after[1], after[2])]
        page = rows[:limit]
        more = len(rows) > limit
        return page, (self.cursor_of(page[-1]) if more and page else None)

    def cursor_of(self, event: EventSummary) -> Cursor:
        return 0, event.received_us // 1000, event.event_id


class MemoryEntities:
    def __init__(self, reader: MemoryReader) -> None:
        self.reader = reader

    async def get(self, source: str, entity_id: str) -> Entity | None:
        return self.reader.entities.get(f"{source}/{entity_id}")


def queries(reader: MemoryReader) -> EventQueries:
    return EventQueries(reader, MemoryEntities(reader))


def summaries(n: int, status_of: dict[int, EventStatus] | None = None) -> list[EventSummary]:
    status_of = status_of or {}
    return [
        EventSummary(
            "shop", f"evt_{i:04d}", "invoice.paid", 1_000_000 + i * 1000, status_of.get(i, EventStatus.PROCESSED), "r"
        )
        for i in range(n)
    ]


async def test_get_event_names_what_is_missing() -> None:
    reader = MemoryReader(stored={"shop/evt_1": StoredEvent(event(), EventStatus.PROCESSED)})
    assert (await queries(reader).get_event("shop", "evt_1")).event.event_id == "evt_1"
    with pytest.raises(errors.NotFound) as missing:
        await queries(reader).get_event("shop", "evt_2")
    assert (missing.value.reason, missing.value.metadata) == (
        "EVENT_NOT_FOUND",
        {"source": "shop", "event_id": "evt_2"},
    )
    with pytest.raises(errors.InvalidRequest) as empty:
        await queries(reader).get_event("", "evt_1")
    assert empty.value.reason == "FIELD_REQUIRED"
    with pytest.raises(errors.NotFound) as no_entity:
        await queries(reader).get_entity("shop", "in_9")
    assert no_entity.value.reason == "ENTITY_NOT_FOUND"


async def test_pages_follow_each_other_without_gaps_or_repeats() -> None:
    reader = MemoryReader(summaries(25))
    q = queries(reader)
    seen: list[str] = []
    token = ""
    while True:
        page = await q.list_events("shop", 1, 10**9, 10, token)
        seen += [e.event_id for e in page.events]
        token = page.next_token
        if not token:
            break
    assert seen == [f"evt_{i:04d}" for i in range(25)]


async def test_a_status_filter_keeps_scanning_until_the_page_is_full() -> None:
    failed = {3: EventStatus.FAILED, 17: EventStatus.FAILED, 18: EventStatus.FAILED}
    reader = MemoryReader(summaries(30, failed))
    page = await queries(reader).list_events("shop", 1, 10**9, 2, "", EventStatus.FAILED)
    assert [e.event_id for e in page.events] == ["evt_0003", "evt_0017"]
    rest = await queries(reader).list_events("shop", 1, 10**9, 2, page.next_token, EventStatus.FAILED)
    assert [e.event_id for e in rest.events] == ["evt_0018"]


async def test_a_status_filter_reads_the_index_in_large_reads_not_one_per_row() -> None:
    """One FAILED event after 2,500 others, a page of one: it took 2,501 store reads (each asked for the one
    row missing); now a read takes FILTER_READ rows at least."""
    reader = MemoryReader(summaries(3000, {2500: EventStatus.FAILED}))
    page = await queries(reader).list_events("shop", 1, 10**9, 1, "", EventStatus.FAILED)
    assert [e.event_id for e in page.events] == ["evt_2500"]
    assert reader.calls == 2500 // FILTER_READ + 1
    rest = await queries(reader).list_events("shop", 1, 10**9, 1, page.next_token, EventStatus.FAILED)
    assert rest.events == [] and rest.next_token == ""  # 499 rows after it, none FAILED: the end


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"source": ""}, "FIELD_REQUIRED"),
        ({"source": "s" * 256}, "SOURCE_INVALID"),
        ({"start_us": None, "end_us": 0}, "TIME_RANGE_INVALID"),  # the epoch is a time, not "no end time"
        ({"page_token": encode_token("shop", 2**62, 2**62 + 10, (0, 1, "e"))}, "PAGE_TOKEN_INVALID"),
        ({"page_token": encode_token("shop", 5, 5, (0, 1, "e"))}, "PAGE_TOKEN_INVALID"),
        ({"start_us": 0, "page_token": encode_token("shop", 1, 10**9, (0, 1, "e"))}, "PAGE_TOKEN_MISMATCH"),
        ({"page_size": MAX_PAGE + 1}, "PAGE_SIZE_INVALID"),
        ({"page_size": -1}, "PAGE_SIZE_INVALID"),
        ({"start_us": 10, "end_us": 5}, "TIME_RANGE_INVALID"),
        ({"page_token": "garbage"}, "PAGE_TOKEN_INVALID"),
        ({"page_token": encode_token("other", 1, 2, (0, 1, "e"))}, "PAGE_TOKEN_MISMATCH"),
    ],
)
async def test_bad_list_requests_are_invalid_arguments(kwargs: dict[str, object], reason: str) -> None:
    args: dict[str, object] = {"source": "shop", "start_us": 1, "end_us": 10**9, "page_size": 10, "page_token": ""}
    args.update(kwargs)
    with pytest.raises(errors.InvalidRequest) as raised:
        await queries(MemoryReader()).list_events(**args)  # type: ignore[arg-type]
    assert raised.value.reason == reason


def test_page_tokens_round_trip_and_reject_garbage() -> None:
    token = encode_token("shop", 1, 2, (5, 123, "evt_9"))
    assert decode_token(token) == ("shop", 1, 2, (5, 123, "evt_9"), "")
    assert decode_token(encode_token("shop", 1, 2, (5, 1, "e"), "failed"))[4] == "failed"
    for bad in ("garbage", "", "e30"):
        with pytest.raises(errors.InvalidRequest):
            decode_token(bad)


async def test_ids_longer_than_any_stored_one_are_invalid_before_a_read() -> None:
    """A 70 KB id would reach Cassandra (which refuses keys over 64 KB); no stored event or entity can have one
    longer than ingest accepts."""
    reader = MemoryReader()
    with pytest.raises(errors.InvalidRequest) as long_event:
        await queries(reader).get_event("shop", "e" * 251)  # "shop/" and 251 bytes: 256
    assert long_event.value.reason == "EVENT_ID_INVALID"
    with pytest.raises(errors.InvalidRequest) as multibyte:
        await queries(reader).get_event("shop", "é" * 126)  # 126 characters, 252 bytes
    assert multibyte.value.reason == "EVENT_ID_INVALID"
    with pytest.raises(errors.NotFound):
        await queries(reader).get_event("shop", "e" * 250)  # the longest there can be: looked up
    with pytest.raises(errors.InvalidRequest) as long_entity:
        await queries(reader).get_entity("shop", "x" * 4097)
    assert long_entity.value.reason == "ENTITY_ID_INVALID"


def test_a_token_whose_cursor_or_query_parts_are_not_of_their_kind_is_invalid() -> None:
    good = {"s": "shop", "a": 1, "b": 2, "c": [5, 123, "evt_9"], "st": ""}
    for part, value in [("c", [5, 1e400, "e"]), ("c", [2**70, 1, "e"]), ("a", "1"), ("s", None), ("st", 5)]:
        with pytest.raises(errors.InvalidRequest) as raised:
            decode_token(pagination.encode_token({**good, part: value}))
        assert raised.value.reason == "PAGE_TOKEN_INVALID"


async def test_a_listing_without_a_time_range_pages_on_in_the_range_its_first_page_pinned() -> None:
    """No start or end time: the first page reads the last day up to now, and every next page the same range,
    though "now" moved (the next pages were refused as another query's); a bound sent later that the token
    does not hold is a mismatch."""
    now = now_us()
    reader = MemoryReader([replace(s, received_us=now - 3_600_000_000 + s.received_us) for s in summaries(25)])
    q = queries(reader)
    seen: list[str] = []
    token = ""
    while True:
        page = await q.list_events("shop", None, None, 10, token)
        seen += [e.event_id for e in page.events]
        token = page.next_token
        if not token:
            break
        await asyncio.sleep(0.002)  # the clock moves between pages
    assert seen == [f"evt_{i:04d}" for i in range(25)]
    first = await q.list_events("shop", None, None, 10, "")
    with pytest.raises(errors.InvalidRequest) as raised:
        await q.list_events("shop", None, now_us() + 10**9, 10, first.next_token)
    assert raised.value.reason == "PAGE_TOKEN_MISMATCH"
