"""The per-source listing (``EventStore.list``, behind ListEvents and replays) on the stack's real Cassandra,
over a long range of one-minute buckets (the test stack's ``bucket_seconds``) that are nearly all empty."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from switchboard.config import PlatformConfig
from switchboard.errors import InvalidRequest
from switchboard.model.events import EventStatus, now_us
from switchboard.store import EntityStore, EventStore, StoreSession
from switchboard.store.values import ts
from switchboard_devstack.stack import Stack

pytestmark = pytest.mark.integration

MINUTE_US = 60_000_000


@pytest.mark.parametrize("page", [1, 2, 3, 5, 100])
def test_a_sparse_range_of_two_days_pages_out_every_event_once_oldest_first(
    stack: Stack, stack_config: PlatformConfig, page: int
) -> None:
    """Eight events of a quiet source in five of the 2,880 buckets of two days (two in adjacent buckets, three in
    one, gaps of minutes to a day between them): every page size gives back all eight once, in order, each page
    at most that size, its cursor continuing where the page ended (within a bucket, or in a bucket that the
    previous page read ahead)."""
    assert stack_config.cassandra.bucket_seconds == 60
    source = "quiet_" + secrets.token_hex(4)
    end = now_us()
    start = end - 2 * 24 * 60 * MINUTE_US
    at = [
        start + 5 * MINUTE_US + 1,  # near the start
        start + 6 * MINUTE_US + 2,  # the next bucket
        start + 200 * MINUTE_US,
        start + 1500 * MINUTE_US + 10,  # three in one bucket
        start + 1500 * MINUTE_US + 20,
        start + 1500 * MINUTE_US + 30_000_000,
        end - 3 * MINUTE_US,
        end - 1000,  # in the range's last bucket
    ]
    ids = [f"evt_{i}_{secrets.token_hex(3)}" for i in range(len(at))]

    async def run() -> list[list[str]]:
        session = StoreSession.connect(stack_config.cassandra)
        try:
            events = EventStore(session, EntityStore(session))
            q = session.statements.events
            for event_id, received in zip(ids, at, strict=True):
                row = (
                    source,
                    events.bucket_of(received),
                    ts(received),
                    event_id,
                    "invoice.paid",
                    EventStatus.PROCESSED.value,
                    "r",
                    3600,
                )
                await session.execute(q.insert_index, row)
            outside = (
                source,
                events.bucket_of(end + MINUTE_US),
                ts(end + MINUTE_US),
                "evt_later",
                "x",
                EventStatus.PROCESSED.value,
                "r",
                3600,
            )
            await session.execute(q.insert_index, outside)  # after the range: never listed
            pages: list[list[str]] = []
            cursor = None
            while True:
                listed, cursor = await events.list(source, start, end, page, cursor)
                assert len(listed) <= page
                assert all(e.status is EventStatus.PROCESSED for e in listed)
                pages.append([e.event_id for e in listed])
                if cursor is None:
                    return pages
                assert len(pages) <= len(ids) + 1, "the cursor does not move"
        finally:
            session.close()

    pages = asyncio.run(run())
    assert [i for p in pages for i in p] == ids
    assert all(len(p) == page for p in pages[:-1] if p)


def test_a_value_cassandra_refuses_is_an_invalid_request_not_an_outage(
    stack: Stack, stack_config: PlatformConfig
) -> None:
    """Keys over Cassandra's 64 KB limit, refused by the node (two parts of 40 KB each: the driver's
    InvalidRequest used to become StoreUnavailable, which callers retry, a processor's batch for ever, and the
    APIs answer with 503) or by the driver before it sends (one part of 70 KB: a struct.error, a 500)."""

    async def run() -> list[InvalidRequest]:
        session = StoreSession.connect(stack_config.cassandra)
        refused = []
        try:
            for key in [("s" * 40_000, "x" * 40_000), ("shop", "x" * 70_000)]:
                with pytest.raises(InvalidRequest) as caught:
                    await session.execute(session.statements.events.get_event, key)
                refused.append(caught.value)
            return refused
        finally:
            session.close()

    for refused in asyncio.run(run()):
        assert refused.reason == "STORE_REFUSED" and "the store refused the request" in refused.message
