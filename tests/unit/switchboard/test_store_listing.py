"""``EventStore.list``'s paging over time buckets, against a stand-in for its two listing reads that answers
as the CQL does (rows of one bucket in (received_at ms, event_id) order, the range or the cursor's bound,
LIMIT); the e2e test ``tests/e2e/test_listing.py`` runs it on the stack's Cassandra."""

from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace
from typing import Any

import pytest

from switchboard.errors import InvalidRequest
from switchboard.model.events import EventStatus
from switchboard.store.events import LIST_LOOKAHEAD, EventStore
from switchboard.store.values import ts, us_of

BUCKET_US = 60_000_000
Row = tuple[int, str]  # (received_at in ms, event_id)


class Listing:
    """The ``events_by_source`` rows of one source and the two reads of them."""

    def __init__(self, rows: list[Row]) -> None:
        self.rows = sorted(rows)
        self.reads = 0
        self.rows_read = 0
        self.out = 0
        self.most_out = 0

    async def execute(self, statement: str, params: tuple[Any, ...]) -> list[Any]:
        self.reads += 1
        self.out += 1
        self.most_out = max(self.most_out, self.out)
        try:
            await asyncio.sleep(0)
            bucket = params[1]
            rows = [r for r in self.rows if r[0] * 1000 // BUCKET_US == bucket]
            if statement == "list_range":
                low, high = us_of(params[2]) // 1000, us_of(params[3]) // 1000
                rows = [r for r in rows if low <= r[0] < high]
            else:
                rows = [r for r in rows if r > (us_of(params[2]) // 1000, params[3])]
            rows = rows[: params[-1]]
            self.rows_read += len(rows)
            status = EventStatus.PROCESSED.value
            return [
                SimpleNamespace(received_at=ts(t * 1000), event_id=i, event_type="t", status=status, receipt_id="")
                for t, i in rows
            ]
        finally:
            self.out -= 1


def store(listing: Listing) -> EventStore:
    statements = SimpleNamespace(
        list_range="list_range", list_after="list_after", insert_event=SimpleNamespace(consistency_level=1)
    )
    session = SimpleNamespace(
        statements=SimpleNamespace(events=statements),
        cfg=SimpleNamespace(ttl_seconds=3600, bucket_seconds=BUCKET_US // 1_000_000),
        execute=listing.execute,
    )
    return EventStore(session, SimpleNamespace())  # type: ignore[arg-type]


async def page_through(events: EventStore, start_us: int, end_us: int, limit: int) -> list[list[Row]]:
    pages: list[list[Row]] = []
    cursor = None
    while True:
        listed, cursor = await events.list("s", start_us, end_us, limit, cursor)
        assert len(listed) <= limit
        pages.append([(e.received_us // 1000, e.event_id) for e in listed])
        if cursor is None:
            return pages
        assert len(pages) < 1000, "the cursor does not move"


@pytest.mark.parametrize("seed", range(4))
async def test_every_event_in_the_range_comes_once_in_order_whatever_the_page_size(seed: int) -> None:
    rnd = random.Random(seed)
    for _ in range(150):
        buckets = rnd.randint(1, 300)
        rows: set[Row] = set()
        for _ in range(rnd.randint(0, 40)):  # sparse or crowded, some in the first buckets
            b = rnd.choice([rnd.randrange(buckets), rnd.randrange(3)])
            rows.add((b * 60_000 + rnd.choice([0, 1, rnd.randrange(60_000), 59_999]), f"e{rnd.randrange(5)}"))
        start_ms = rnd.choice([0, rnd.randrange(buckets * 60_000)])
        end_ms = rnd.choice([buckets * 60_000, rnd.randrange(start_ms + 1, buckets * 60_000 + 1)])
        start_us, end_us = start_ms * 1000 + rnd.choice([0, 1, 999]), end_ms * 1000 + rnd.choice([0, 1, 999])
        limit = rnd.choice([1, 2, 3, 5, 7, 100])
        pages = await page_through(store(Listing(list(rows))), start_us, end_us, limit)
        # The store compares at the driver's millisecond precision.
        expected = [r for r in sorted(rows) if us_of(ts(start_us)) // 1000 <= r[0] < us_of(ts(end_us)) // 1000]
        assert [r for p in pages for r in p] == expected
        assert all(len(p) == limit for p in pages[:-1])


async def test_empty_buckets_are_probed_many_at_a_time_one_row_each() -> None:
    """Two events 30 days apart in one-minute buckets: the 43,200 buckets between them are read at most
    ``LIST_LOOKAHEAD`` at a time, none of the probes brings more than one row, and no more are out at once."""
    day_ms = 24 * 3600 * 1000
    listing = Listing([(5, "evt_first"), (30 * day_ms - 5, "evt_last")])
    pages = await page_through(store(listing), 0, 30 * day_ms * 1000, 500)
    assert pages == [[(5, "evt_first"), (30 * day_ms - 5, "evt_last")]]
    assert 43_200 <= listing.reads <= 43_200 + 2 * 11  # every bucket once, the last ones again when found
    assert listing.most_out == LIST_LOOKAHEAD
    assert listing.rows_read <= 4  # each event by its probe and by its bucket's read


async def test_a_busy_stretch_after_a_quiet_one_is_not_read_whole_to_fill_one_page() -> None:
    """Two hundred empty buckets, then 64 with ten events each: a page of 5 reads its 5 rows and one probe row
    per bucket it looked ahead into, not 64 buckets' worth of pages."""
    rows = [((200 + b) * 60_000 + i, f"e{i}") for b in range(64) for i in range(10)]
    listing = Listing(rows)
    listed, cursor = await store(listing).list("s", 0, 264 * BUCKET_US, 5, None)
    assert [(e.received_us // 1000, e.event_id) for e in listed] == sorted(rows)[:5] and cursor is not None
    assert listing.rows_read <= 5 + LIST_LOOKAHEAD


async def test_listings_running_together_share_the_stores_reads_out_at_once() -> None:
    """Two listings of quiet sources at the same time, each probing up to 64 buckets at once: the store has at
    most 64 listing reads out, all listings together."""
    listing = Listing([(5, "evt_a")])
    events = store(listing)
    day_us = 24 * 3600 * 1_000_000
    both = await asyncio.gather(*(page_through(events, 0, 3 * day_us, 100) for _ in range(2)))
    assert both == [[[(5, "evt_a")]]] * 2
    assert listing.most_out == LIST_LOOKAHEAD


async def test_a_cursor_from_outside_the_range_reads_from_its_start_or_nothing() -> None:
    """A page token can be forged: a cursor at bucket 0 for a range of one hour three years on used to read
    every bucket in between (1.6 million), one past the range's end reads nothing."""
    start_ms = 3 * 365 * 24 * 3600 * 1000
    listing = Listing([(start_ms + 1000, "evt_in"), (5, "evt_long_before")])
    events = store(listing)
    listed, cursor = await events.list("s", start_ms * 1000, (start_ms + 3600_000) * 1000, 10, (0, 5, "evt_x"))
    assert [e.event_id for e in listed] == ["evt_in"] and cursor is None
    assert listing.reads <= 61 + 2 * 7  # the range's 61 buckets, the probes of the first ones again at most
    reads = listing.reads
    past = (start_ms + 7200_000) * 1000 // BUCKET_US
    listed, cursor = await events.list("s", start_ms * 1000, (start_ms + 3600_000) * 1000, 10, (past, 0, ""))
    assert listed == [] and cursor is None and listing.reads == reads


async def test_a_range_longer_than_the_store_keeps_anything_is_refused_before_any_read() -> None:
    listing = Listing([(5, "evt_a")])
    with pytest.raises(InvalidRequest) as caught:
        await store(listing).list("s", 0, 253_402_300_799 * 1_000_000, 10, None)
    assert caught.value.reason == "TIME_RANGE_TOO_LARGE" and listing.reads == 0


def test_a_dead_letter_is_in_exactly_one_of_two_windows_split_below_a_millisecond() -> None:
    """The store keeps milliseconds and the driver cuts bounds to them; the start filter compared
    microseconds, so a row at a millisecond fell in neither [a, .5 ms) nor [.5 ms, b) (found in review)."""
    from cassandra.cqltypes import DateType

    from switchboard.model.operations import DeadLetterKind
    from switchboard.store.operations import OperationsStore

    row_ms = 1_700_000_000_000

    def sent_ms(value: Any) -> int:  # what Cassandra receives for a bound
        return int.from_bytes(DateType.serialize(value, 4), "big", signed=True)

    row = SimpleNamespace(
        id="dl_1", kind="processing", dead_at=ts(row_ms * 1000), source="s", event_id="e", event_type="t",
        subscription_id="", delivery_id="", message_id="m", attempts=1, last_error="", reason="FAILED",
        headers={}, body=b"", message_type="", state="dead", redriven_at=None,
    )  # fmt: skip

    class Session:
        cfg = SimpleNamespace(ttl_seconds=30 * 86_400)
        statements = SimpleNamespace(operations=SimpleNamespace(dead_range="range", dead_after="after"))

        async def execute(self, statement: str, p: tuple[Any, ...]) -> list[Any]:
            day = row_ms * 1000 // 86_400_000_000
            in_range = statement == "range" and p[1] == day and sent_ms(p[2]) <= row_ms < sent_ms(p[3])
            return [row] if in_range else []

    async def windows() -> tuple[list[str], list[str]]:
        ops = OperationsStore(Session())  # type: ignore[arg-type]
        split = row_ms * 1000 + 500
        before, _ = await ops.dead_letters(DeadLetterKind.PROCESSING, split - 60_000_000, split, 10, None)
        after, _ = await ops.dead_letters(DeadLetterKind.PROCESSING, split, split + 60_000_000, 10, None)
        return [d.id for d in before], [d.id for d in after]

    assert asyncio.run(windows()) == ([], ["dl_1"])
