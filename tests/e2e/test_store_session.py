"""``StoreSession`` on the stack's real Cassandra: a read that comes back in more than one page returns every
page (the driver hands its callback the first one only; a read without a ``LIMIT`` ended silently at it), and a
process configured with another index bucket size than the keyspace's refuses to start."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets

import pytest

from switchboard.config import PlatformConfig
from switchboard.errors import ConfigError
from switchboard.model.events import Commit, EventStatus, OperationResult, Outcome, StoredEvent, now_us
from switchboard.store import EntityStore, EventStore, StoreSession
from switchboard_devstack.stack import Stack
from tests.unit.factories import event

pytestmark = pytest.mark.integration


def test_an_event_read_spans_every_page_of_its_records(stack: Stack, stack_config: PlatformConfig) -> None:
    """GetEvent's read of an event's runs has no limit: with pages of 10 rows (5,000 by default), an event
    with 25 duplicate receipts and 3 runs came back with 10 duplicates and no run (duplicates sort first). Its
    duplicates are counted by Cassandra, and the count covers every page."""

    async def run() -> None:
        session = StoreSession.connect(stack_config.cassandra)
        try:
            session.session.default_fetch_size = 10
            events = EventStore(session, EntityStore(session))
            e = event(event_id=f"evt_pages_{secrets.token_hex(4)}", received_us=now_us(), entity_id="")
            runs = [OperationResult(f"op{i}", Outcome.OK, 1, 5, now_us() + i) for i in range(3)]
            copies = [dataclasses.replace(e, receipt_id=f"r_dup_{i:02}") for i in range(25)]
            await events.commit([Commit(StoredEvent(e, EventStatus.PROCESSED, runs, attempts=1))], duplicates=copies)
            stored = await events.get(e.source, e.event_id)
            assert stored is not None
            assert stored.duplicates == 25
            assert sorted(r.operation for r in stored.results) == ["op0", "op1", "op2"]
        finally:
            session.close()

    asyncio.run(run())


def test_a_process_with_another_bucket_size_than_the_keyspaces_refuses_to_start(
    stack: Stack, stack_config: PlatformConfig
) -> None:
    """The listing index's buckets are computed from the configuration: after a change every event stored
    before it dropped out of every listing and replay selection, silently."""
    session = StoreSession.connect(stack_config.cassandra)  # the keyspace's own size: taken
    session.close()
    other = dataclasses.replace(stack_config.cassandra, bucket_seconds=stack_config.cassandra.bucket_seconds * 60)
    with pytest.raises(ConfigError, match=r"^cassandra\.bucket_seconds: 3600, but keyspace .* buckets of 60 s"):
        StoreSession.connect(other, wait_seconds=30)
