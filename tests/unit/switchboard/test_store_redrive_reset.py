"""``OperationsStore.reset_delivery`` (a delivery redriven from the dead letters) against a store that answers as
Cassandra does a conditional update: the reset applies only to the status it read. The rows and the lightweight
transaction themselves: tests/e2e/test_redrive_reset.py."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from switchboard.errors import StoreUnavailable
from switchboard.store.operations import OperationsStore


class Deliveries:
    """One delivery row; ``delivered_after_read`` records its delivery between the reset's read and write."""

    def __init__(self, status: str, ttl_left: int, delivered_after_read: int = 0) -> None:
        self.status, self.ttl_left = status, ttl_left
        self.delivered_after_read = delivered_after_read
        self.resets: list[tuple[Any, ...]] = []
        self.cfg = SimpleNamespace(ttl_seconds=30 * 86_400)
        self.statements = SimpleNamespace(operations=SimpleNamespace(delivery_status="status", delivery_reset="reset"))

    async def execute(self, statement: str, params: tuple[Any, ...]) -> list[Any]:
        if statement == "status":
            row = SimpleNamespace(status=self.status, ttl_left=self.ttl_left)
            if self.delivered_after_read:  # changed after the read: delivered, or another attempt first
                self.delivered_after_read -= 1
                other = "retrying" if self.status != "retrying" else "failed"
                self.status = "delivered" if self.delivered_after_read == 0 else other
            return [row]
        ttl, status, _at, _id, expected = params
        if self.status != expected:
            return [(False, self.status)]
        self.status = status
        self.resets.append((ttl, status))
        return [(True,)]


def reset(rows: Deliveries) -> bool:
    return asyncio.run(OperationsStore(rows).reset_delivery("dlv_1", 1))  # type: ignore[arg-type]


def test_a_failed_delivery_is_reset_with_the_ttl_its_row_has_left() -> None:
    rows = Deliveries("failed", ttl_left=1000)
    assert reset(rows) and rows.status == "pending" and rows.resets == [(1000, "pending")]


def test_a_delivery_recorded_delivered_between_the_read_and_the_reset_is_not_sent_again() -> None:
    """An unconditional write overwrote the DELIVERED and the redrive sent the delivery a second time."""
    rows = Deliveries("failed", ttl_left=1000, delivered_after_read=1)
    assert not reset(rows) and rows.status == "delivered" and rows.resets == []


def test_a_delivery_that_keeps_changing_is_an_outage_not_a_reset() -> None:
    rows = Deliveries("failed", ttl_left=1000, delivered_after_read=99)
    with pytest.raises(StoreUnavailable, match="kept changing"):
        reset(rows)


class EventRows:
    """One event row read as ``reads`` says, one read after the other; the conditional reset applies only to
    the row as last read (``applies``)."""

    def __init__(self, reads: list[tuple[str, str]], applies: list[bool]) -> None:
        self.reads, self.applies = reads, applies
        self.cfg = SimpleNamespace(ttl_seconds=30 * 86_400, bucket_seconds=3600)
        q = SimpleNamespace(
            get_event="get",
            reset_attempts_if="if",
            reset_attempts_if_status="if_status",
            reset_attempts_new="new",
            insert_event=SimpleNamespace(consistency_level=1),
        )
        self.statements = SimpleNamespace(events=q)

    async def execute(self, statement: str, params: tuple[Any, ...]) -> list[Any]:
        if statement == "get":
            status, receipt = self.reads.pop(0)
            return [SimpleNamespace(status=status, receipt_id=receipt)] if status else []
        return [(self.applies.pop(0),)]


def redrive_event(rows: EventRows) -> bool:
    from switchboard.store.events import EventStore
    from tests.unit.factories import event

    store = EventStore(rows, SimpleNamespace())  # type: ignore[arg-type]
    return asyncio.run(store.reset_attempts(event(receipt_id="r1")))


def test_an_event_processed_between_the_read_and_the_reset_is_settled_not_given_back() -> None:
    """The conditional reset did not apply (a replay's PROCESSED landed in between): read again, the event is
    settled, so the redrive may mark its dead letter REDRIVEN. A reset that did not apply answered False as if
    settled, and the dead letter could be marked REDRIVEN though its event was still FAILED."""
    assert not redrive_event(EventRows([("failed", "r1"), ("processed", "r1")], applies=[False]))


def test_an_event_that_changed_but_still_needs_the_redrive_is_reset_on_the_next_read() -> None:
    assert redrive_event(EventRows([("failed", "r1"), ("retrying", "r1")], applies=[False, True]))
    with pytest.raises(StoreUnavailable, match="kept changing"):
        redrive_event(EventRows([("failed", "r1")] * 5, applies=[False] * 5))


def test_an_event_first_committed_between_the_read_of_no_row_and_the_reset_is_settled_not_given_back() -> None:
    """The reset of an event with no row was unconditional: a first commit landing between the read and the
    write (its PROCESSED) was turned back into RETRYING, which nothing would ever process (found in review). It
    writes only if there is still no row, and reads again when there is one."""
    assert not redrive_event(EventRows([("", ""), ("processed", "r1")], applies=[False]))
    assert redrive_event(EventRows([("", "")], applies=[True]))


def test_an_event_stored_again_keeps_none_of_the_headers_ingest_does_not_store() -> None:
    """A copy from before a credential's name was covered (a retry in a delay queue, a redriven dead letter)
    stored the credential again with a fresh retention (found in review): the store leaves such headers out."""
    from switchboard.model.events import EventStatus, StoredEvent
    from switchboard.store.events import EventStore
    from switchboard.store.payloads import Encoder
    from tests.unit.factories import event

    rows = EventRows([], applies=[])
    store = EventStore(rows, SimpleNamespace())  # type: ignore[arg-type]
    old = event(headers={"x-api-key": "k-1", "stripe-signature": "t=1,v1=ab", "user-agent": "Stripe/1.0"})
    params = store._event_params(StoredEvent(old, EventStatus.PROCESSED), Encoder(compress=False))
    assert {"user-agent": "Stripe/1.0"} in params and not any(isinstance(p, dict) and "x-api-key" in p for p in params)
