"""``SubscriptionStore``'s two writes of a create and of a delete go one after the other, in the order that
leaves at worst an index row without its subscription (which listings pass over), never a live subscription
its client cannot list. A stand-in session records the statements and fails the one the test names."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.fernet import Fernet

from switchboard.errors import StoreUnavailable
from switchboard.model.subscriptions import Subscription
from switchboard.secrets import Secret, SecretBox
from switchboard.store.subscriptions import SubscriptionStore

STATEMENTS = SimpleNamespace(put="put", index_put="index_put", delete="delete", index_delete="index_delete")


class Session:
    def __init__(self, failing: str) -> None:
        self.failing = failing
        self.executed: list[str] = []
        self.statements = SimpleNamespace(subscriptions=STATEMENTS)

    async def execute(self, statement: str, params: tuple[Any, ...]) -> list[Any]:
        self.executed.append(statement)
        if statement == self.failing:
            raise StoreUnavailable("a write timed out")
        return []


def store(session: Session) -> SubscriptionStore:
    box = SecretBox(Secret(Fernet.generate_key().decode(), "test"))
    return SubscriptionStore(session, box)  # type: ignore[arg-type]


SUB = Subscription(id="sub_1", client_id="alice", callback_url="https://example.test/hook", secret="whsec_x")


async def test_a_create_whose_index_write_fails_writes_no_subscription() -> None:
    """The two writes went together: the subscription's row could be written while the index's failed, and the
    subscription went live (found by the delivery cache's reload) with a secret its caller never got."""
    session = Session(failing="index_put")
    with pytest.raises(StoreUnavailable):
        await store(session).put(SUB)
    assert session.executed == ["index_put"]
    session = Session(failing="")
    await store(session).put(SUB)
    assert session.executed == ["index_put", "put"]


async def test_a_delete_whose_subscription_write_fails_keeps_its_index_row() -> None:
    session = Session(failing="delete")
    with pytest.raises(StoreUnavailable):
        await store(session).delete(SUB)
    assert session.executed == ["delete"]  # still listed: the client can delete it again
    session = Session(failing="")
    await store(session).delete(SUB)
    assert session.executed == ["delete", "index_delete"]
