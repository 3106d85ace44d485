"""What a redrive's reset of an event does on the stack's real Cassandra (``EventStore.reset_attempts``): the
dead-lettered receipt's own FAILED row is reset; a row processed since, or stored under another receipt, is
left alone; an event never committed gets a row without a receipt, which the processor takes for nothing."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from switchboard.config import PlatformConfig
from switchboard.model.events import Commit, EventStatus, InboundEvent, StoredEvent, now_us
from switchboard.store import EntityStore, EventStore, StoreSession
from switchboard_devstack.stack import Stack
from tests.unit.factories import event

pytestmark = pytest.mark.integration


def test_a_redrive_resets_only_its_own_failed_receipt(stack: Stack, stack_config: PlatformConfig) -> None:
    async def run() -> None:
        session = StoreSession.connect(stack_config.cassandra)
        try:
            events = EventStore(session, EntityStore(session))
            tag = secrets.token_hex(4)

            def receipt(event_id: str, receipt_id: str) -> InboundEvent:
                return event(event_id=f"{event_id}_{tag}", receipt_id=receipt_id, received_us=now_us())

            failed = receipt("evt_failed", "r1")
            await events.commit([Commit(StoredEvent(failed, EventStatus.FAILED, attempts=8))])
            assert await events.reset_attempts(failed)
            reset = await events.get(failed.source, failed.event_id)
            assert reset is not None and (reset.status, reset.attempts) == (EventStatus.RETRYING, 0)

            other = receipt("evt_other", "r2")
            await events.commit([Commit(StoredEvent(other, EventStatus.FAILED, attempts=8))])
            assert not await events.reset_attempts(receipt("evt_other", "r1"))
            kept = await events.get(other.source, other.event_id)
            assert kept is not None and kept.status is EventStatus.FAILED

            done = receipt("evt_done", "r1")
            await events.commit([Commit(StoredEvent(done, EventStatus.PROCESSED, attempts=1))])
            assert not await events.reset_attempts(done)

            never = receipt("evt_never", "r1")
            assert await events.reset_attempts(never)
            (prior,) = (await events.priors([never])).values()
            assert (prior.receipt_id, prior.status) == ("", EventStatus.RETRYING)
        finally:
            session.close()

    asyncio.run(run())
