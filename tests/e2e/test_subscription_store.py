"""The subscriptions table's conditional writes on the stack's real Cassandra: a change is written only if the
row is still as it was read; a delete and a status change never bring a deleted subscription back."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets

import pytest

from switchboard.config import PlatformConfig
from switchboard.model.events import now_us
from switchboard.model.subscriptions import Subscription, SubscriptionStatus
from switchboard.store import StoreSession
from switchboard.store.subscriptions import SubscriptionStore
from switchboard_devstack.stack import Stack

pytestmark = pytest.mark.integration


def test_a_change_is_written_only_over_the_row_it_read(stack: Stack, stack_config: PlatformConfig) -> None:
    async def run() -> None:
        session = StoreSession.connect(stack_config.cassandra)
        try:
            store = SubscriptionStore(session, stack_config.delivery.secret_box())
            now = now_us() // 1000 * 1000  # the store keeps milliseconds
            s = Subscription(
                id="sub_" + secrets.token_hex(8),
                client_id="alice",
                callback_url="https://hooks.example.com/in",
                secret="whsec_" + "A" * 32,
                created_us=now,
                updated_us=now,
            )
            await store.put(s)
            read = await store.get(s.id)
            assert read is not None and read.updated_us == now

            first = dataclasses.replace(read, description="first", updated_us=now + 1000)
            assert await store.replace(first, read.updated_us)
            late = dataclasses.replace(read, description="late", updated_us=now + 2000)
            assert not await store.replace(late, read.updated_us)  # read before "first" was written
            stored = await store.get(s.id)
            assert stored is not None and stored.description == "first" and stored.secret == s.secret

            # A 410 of a URL the subscription no longer sends to (a late answer after its client moved it)
            # changes nothing; of its URL, it disables it.
            moved = "https://hooks.example.com/old"
            assert not await store.set_status(s.id, SubscriptionStatus.AUTO_DISABLED, "410", now + 2500, only_url=moved)
            kept = await store.get(s.id)
            assert kept is not None and kept.status is SubscriptionStatus.ENABLED and kept.updated_us == now + 1000
            assert await store.set_status(
                s.id, SubscriptionStatus.AUTO_DISABLED, "410 Gone", now + 3000, only_url=s.callback_url
            )
            stale = dataclasses.replace(stored, description="undoes the disable", updated_us=now + 4000)
            assert not await store.replace(stale, stored.updated_us)
            disabled = await store.get(s.id)
            assert disabled is not None and disabled.status is SubscriptionStatus.AUTO_DISABLED

            await store.delete(disabled)
            assert not await store.replace(dataclasses.replace(disabled, updated_us=now + 5000), disabled.updated_us)
            assert not await store.set_status(s.id, SubscriptionStatus.AUTO_DISABLED, "410 Gone", now + 6000)
            assert await store.get(s.id) is None  # neither made a row of its cells
            with pytest.raises(ValueError, match="millisecond"):
                await store.replace(dataclasses.replace(read, updated_us=now + 999), now)
        finally:
            session.close()

    asyncio.run(run())
