"""The dead-letter recorder writes one row per death of a message, however many copies of it reach the queue
(a worker killed before its ack; a FAILED message dead-lettered again; an older copy deferred behind its retry
that ends too), and a new row for a death after a redrive. A redrive claims its row before it publishes: two
redrives of one row publish it once, a client that goes away does not cut it, a failed publish gives the row
back. The store is a dict here: what is checked is the recorder's and the manager's logic (the rows and the
lightweight transaction on Cassandra: tests/e2e/test_operations.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from typing import Any

import pytest

from control_service.dead_letters import (
    MAX_GENERATIONS,
    STALE_CLAIM_US,
    DeadLetterManager,
    DeadLetterRecorder,
    Filter,
    RedriveProgress,
)
from switchboard.errors import BrokerUnavailable, StoreUnavailable
from switchboard.model.events import InboundEvent, now_us
from switchboard.model.operations import DeadLetter, DeadLetterKind, DeadLetterState
from switchboard.model.subscriptions import DeliveryTask
from switchboard.queue import Ack, QueueMessage
from switchboard.wire import encode_inbound, encode_task
from tests.unit.factories import event


class Rows:
    def __init__(self) -> None:
        self.rows: dict[str, DeadLetter] = {}
        self.writes = 0

    async def put_dead_letter(self, d: DeadLetter) -> None:
        self.writes += 1
        self.rows[d.id] = d

    async def get_dead_letter(self, dead_letter_id: str) -> DeadLetter | None:
        return self.rows.get(dead_letter_id)

    async def dead_letter_message(self, d: DeadLetter) -> DeadLetter | None:
        return self.rows.get(d.id)


S = 1_000_000  # a second, in microseconds


def copy(
    dead_at: int, *, attempt: int = 3, message_id: str = "shop/evt_1", again: bool = False, receipt: str = "r1"
) -> QueueMessage:
    """A dead-letter copy of the message (of receipt ``receipt``), dead-lettered at ``dead_at`` seconds."""
    headers: dict[str, object] = {
        "x-attempt": attempt,
        "x-last-error": "boom",
        "x-dead-reason": "failed",
        "x-dead-at": dead_at * S,
        "receipt-id": receipt,
    }
    if again:
        headers["x-dead-again"] = 1
    return QueueMessage(
        body=encode_inbound(event()), message_id=message_id, headers=headers, redelivered=False, queue="q"
    )


async def test_copies_of_one_death_are_one_row_and_the_first_is_kept() -> None:
    rows = Rows()
    recorder = DeadLetterRecorder(rows, DeadLetterKind.PROCESSING)  # type: ignore[arg-type]
    first = await recorder.handle([copy(1_700_000_000)])
    again = await recorder.handle([copy(1_700_000_005), copy(1_700_000_009, again=True)])
    assert first == [Ack("recorded")] and again == [Ack("duplicate"), Ack("duplicate")]
    assert rows.writes == 1
    (row,) = rows.rows.values()
    assert row.dead_us == 1_700_000_000 * S


async def test_a_replays_death_is_its_own_though_it_has_the_event_key_and_attempts_of_an_earlier_one() -> None:
    """Found in review: the id was the event key and the attempts, the same for every receipt of one event, so
    a replay that died at the attempt count of an earlier receipt's death (after a redrive reset it) was
    acked as a duplicate of that row, which cannot be redriven (the event is under the replay's receipt)."""
    rows = Rows()
    recorder = DeadLetterRecorder(rows, DeadLetterKind.PROCESSING)  # type: ignore[arg-type]
    assert await recorder.handle([copy(10, attempt=8, receipt="r_original")]) == [Ack("recorded")]
    assert await recorder.handle([copy(90, attempt=8, receipt="r_replay")]) == [Ack("recorded")]
    assert await recorder.handle([copy(95, attempt=8, receipt="r_replay")]) == [Ack("duplicate")]  # its copy
    assert sorted(d.dead_us for d in rows.rows.values()) == [10 * S, 90 * S]


async def test_a_death_after_a_redrive_or_a_purge_is_a_new_row_and_a_copy_from_before_is_not() -> None:
    rows = Rows()
    recorder = DeadLetterRecorder(rows, DeadLetterKind.PROCESSING)  # type: ignore[arg-type]
    await recorder.handle([copy(10)])
    (first,) = rows.rows.values()
    first.state, first.redriven_us = DeadLetterState.REDRIVING, 20 * S  # a redrive claimed it at 20
    assert await recorder.handle([copy(15)]) == [Ack("duplicate")]  # a copy of that death, during the claim
    first.state = DeadLetterState.REDRIVEN  # sent again (the mark is dated by the claim)
    assert await recorder.handle([copy(18)]) == [Ack("duplicate")]  # a copy from before the redrive
    assert await recorder.handle([copy(40)]) == [Ack("recorded")]  # it died again after the redrive
    assert await recorder.handle([copy(45)]) == [Ack("duplicate")]  # and copies of that death are one row too
    second = next(d for d in rows.rows.values() if d.dead_us == 40 * S)
    second.state, second.redriven_us = DeadLetterState.PURGED, 50 * S  # purged (it had not been redriven)
    assert await recorder.handle([copy(48)]) == [Ack("duplicate")]
    assert await recorder.handle([copy(60)]) == [Ack("recorded")]  # a later death is not swallowed by the purge
    # dead-lettered again after the purge (a FAILED message that came back): a copy, not a new death
    assert await recorder.handle([copy(55, again=True)]) == [Ack("duplicate")]
    assert sorted(d.dead_us for d in rows.rows.values()) == [10 * S, 40 * S, 60 * S]


async def test_a_death_during_a_claim_is_a_new_row_and_a_copy_dead_lettered_again_follows_the_newest() -> None:
    """A redriven message can die before its REDRIVEN mark: dated after the claim, it is a new death (it was
    swallowed as a copy). A copy dead-lettered again is dated when it was, not when it died: it belongs to the
    newest death, behind the rows that were redriven."""
    rows = Rows()
    recorder = DeadLetterRecorder(rows, DeadLetterKind.PROCESSING)  # type: ignore[arg-type]
    await recorder.handle([copy(10)])
    (first,) = rows.rows.values()
    first.state, first.redriven_us = DeadLetterState.REDRIVING, 20 * S
    assert await recorder.handle([copy(21)]) == [Ack("recorded")]  # sent, died again, not yet marked
    first.state = DeadLetterState.REDRIVEN
    assert await recorder.handle([copy(30, again=True)]) == [Ack("duplicate")]  # a copy of the death at 21
    second = next(d for d in rows.rows.values() if d.dead_us == 21 * S)
    second.state, second.redriven_us = DeadLetterState.REDRIVEN, 40 * S  # redriven too; its next death was lost
    assert await recorder.handle([copy(50, again=True)]) == [Ack("recorded")]  # so the copy records it
    assert len(rows.rows) == 3


async def test_the_same_message_handled_again_counts_as_recorded() -> None:
    """A batch retried after an outage hands the recorder messages it already wrote: they were acked as
    duplicates and missing from the dead-letter metric (found in review)."""
    rows = Rows()
    recorder = DeadLetterRecorder(rows, DeadLetterKind.PROCESSING)  # type: ignore[arg-type]
    assert await recorder.handle([copy(10)]) == [Ack("recorded")]
    message = copy(10)
    message = dataclasses.replace(message, headers={**message.headers, "x-dead-at": 10 * S + 700})
    # a worker's microseconds; the row, read back from Cassandra, has milliseconds
    assert await recorder.handle([message]) == [Ack("recorded")] and rows.writes == 1


async def test_other_attempts_other_messages_and_other_kinds_are_other_rows() -> None:
    rows = Rows()
    processing = DeadLetterRecorder(rows, DeadLetterKind.PROCESSING)  # type: ignore[arg-type]
    delivery = DeadLetterRecorder(rows, DeadLetterKind.DELIVERY)  # type: ignore[arg-type]
    await processing.handle([copy(1), copy(2, attempt=4), copy(3, message_id="shop/evt_2")])
    await delivery.handle([copy(4)])
    assert rows.writes == 4 and len(rows.rows) == 4


async def test_messages_without_an_id_and_a_chain_past_its_end_get_an_id_per_death() -> None:
    rows = Rows()
    recorder = DeadLetterRecorder(rows, DeadLetterKind.PROCESSING)  # type: ignore[arg-type]
    assert await recorder.handle([copy(1, message_id=""), copy(2, message_id="")]) == [Ack("recorded")] * 2
    assert len(rows.rows) == 2
    for n in range(MAX_GENERATIONS):
        await recorder.handle([copy(10 + 2 * n)])
        for d in rows.rows.values():
            if d.state is DeadLetterState.DEAD:
                d.state, d.redriven_us = DeadLetterState.REDRIVEN, (11 + 2 * n) * S
    assert await recorder.handle([copy(100)]) == [Ack("recorded")]
    assert await recorder.handle([copy(101)]) == [Ack("recorded")]  # past the chain: no check for copies
    assert len(rows.rows) == 2 + MAX_GENERATIONS + 2


class Claimable(Rows):
    """Rows whose state changes only from the state (and claim time) named, as the store's lightweight
    transaction does."""

    async def set_dead_letter_state(
        self,
        d: DeadLetter,
        state: DeadLetterState,
        at_us: int,
        *,
        only_from: DeadLetterState | None = None,
        only_at_us: int | None = None,
    ) -> bool:
        row = self.rows[d.id]
        if only_from is not None and row.state is not only_from:
            return False
        if only_at_us is not None and row.redriven_us != only_at_us:
            return False
        row.state, row.redriven_us = state, (at_us if state is not DeadLetterState.DEAD else 0)
        return True

    async def reset_delivery(self, delivery_id: str, now_us: int) -> bool:
        return True


class Events:
    def __init__(self, gate: asyncio.Event | None = None, fail: bool = False) -> None:
        self.published: list[InboundEvent] = []
        self.gate = gate
        self.fail = fail

    async def reset_attempts(self, e: InboundEvent) -> bool:
        return True

    async def publish_event(self, e: InboundEvent) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise BrokerUnavailable("the broker did not confirm")
        self.published.append(e)


async def recorded(rows: Claimable) -> DeadLetter:
    await DeadLetterRecorder(rows, DeadLetterKind.PROCESSING).handle([copy(1)])  # type: ignore[arg-type]
    (d,) = rows.rows.values()
    return d


async def redrive(manager: DeadLetterManager, d: DeadLetter) -> list[RedriveProgress]:
    return [p async for p in manager.redrive([d.id], Filter(), everything=False, dry_run=False)]


async def gated() -> tuple[Claimable, DeadLetter, asyncio.Event, Events, DeadLetterManager]:
    """One dead letter, and a manager whose publish waits for the gate."""
    rows = Claimable()
    d = await recorded(rows)
    gate = asyncio.Event()
    events = Events(gate)
    return rows, d, gate, events, DeadLetterManager(rows, events, events)  # type: ignore[arg-type]


async def test_of_two_redrives_of_one_row_one_publishes() -> None:
    rows, d, gate, events, manager = await gated()
    first = asyncio.create_task(redrive(manager, d))
    second = asyncio.create_task(redrive(manager, d))
    await asyncio.sleep(0.01)  # both selected the row while it was DEAD; one claimed it
    gate.set()
    outcomes = sorted((p[-1].redriven, p[-1].failed) for p in await asyncio.gather(first, second))
    assert outcomes == [(0, 1), (1, 0)]
    assert len(events.published) == 1 and rows.rows[d.id].state is DeadLetterState.REDRIVEN


async def test_a_client_that_goes_away_does_not_cut_a_rows_redrive() -> None:
    rows, d, gate, events, manager = await gated()
    task = asyncio.create_task(redrive(manager, d))
    await asyncio.sleep(0.01)  # claimed, publishing
    task.cancel()
    await asyncio.sleep(0)
    gate.set()
    for _ in range(5):
        await asyncio.sleep(0)
    assert task.cancelled() and len(events.published) == 1
    assert rows.rows[d.id].state is DeadLetterState.REDRIVEN


async def test_a_claim_left_by_a_stopped_control_service_is_taken_over_once_stale() -> None:
    """The claim comes before the reset and the publish: a control service killed in between leaves the row
    REDRIVING, maybe with its event reset and nothing queued. The next redrive takes a stale claim over."""
    rows = Claimable()
    d = await recorded(rows)
    events = Events()
    manager = DeadLetterManager(rows, events, events)  # type: ignore[arg-type]
    row = rows.rows[d.id]
    row.state, row.redriven_us = DeadLetterState.REDRIVING, now_us() - 60_000_000  # claimed a minute ago
    progress = await redrive(manager, d)
    assert (progress[-1].matched, progress[-1].redriven, progress[-1].failed) == (1, 0, 1)  # not stale yet
    assert events.published == [] and f"{d.id} (redriving)" in progress[-1].message
    row.redriven_us = now_us() - STALE_CLAIM_US - 1
    progress = await redrive(manager, d)
    assert (progress[-1].redriven, progress[-1].failed) == (1, 0) and len(events.published) == 1
    assert rows.rows[d.id].state is DeadLetterState.REDRIVEN


async def test_close_waits_for_a_redrive_whose_caller_went_away() -> None:
    rows, d, gate, events, manager = await gated()
    task = asyncio.create_task(redrive(manager, d))
    await asyncio.sleep(0.01)
    task.cancel()  # the server cancels the call as it stops
    closing = asyncio.create_task(manager.close())
    await asyncio.sleep(0.01)
    assert not closing.done()  # the redrive is still sending
    gate.set()
    await closing
    assert len(events.published) == 1 and rows.rows[d.id].state is DeadLetterState.REDRIVEN


async def test_a_redrive_whose_publish_fails_gives_the_row_back() -> None:
    rows = Claimable()
    d = await recorded(rows)
    events = Events(fail=True)
    manager = DeadLetterManager(rows, events, events)  # type: ignore[arg-type]
    with pytest.raises(BrokerUnavailable):
        await redrive(manager, d)
    assert rows.rows[d.id].state is DeadLetterState.DEAD  # a later redrive can take it


async def test_a_dead_letter_settled_since_is_counted_failed_once_and_no_redrive_takes_it_again() -> None:
    """Its event was processed since (a replay): nothing to send. Given back DEAD, it stayed in every listing
    and every later redrive of a filter counted it failed again, until it expired."""
    rows = Claimable()
    d = await recorded(rows)

    class Processed(Events):
        async def reset_attempts(self, e: InboundEvent) -> bool:
            return False

    events = Processed()
    manager = DeadLetterManager(rows, events, events)  # type: ignore[arg-type]
    (*_, last) = await redrive(manager, d)
    assert (last.redriven, last.failed) == (0, 1) and events.published == []
    assert rows.rows[d.id].state is DeadLetterState.REDRIVEN
    (*_, again) = await redrive(manager, d)
    assert (again.matched, again.redriven, again.failed) == (1, 0, 1) and events.published == []  # not taken again
    assert again.message == f"1 named dead letter(s) not DEAD (redriven, purged or being redriven): {d.id} (redriven)"


def test_a_retried_message_the_broker_dead_lettered_is_a_delivery_limit_not_a_failure() -> None:
    """A retried copy carries x-last-error too; only the worker's dead-letter copy has x-dead-at. The recorder
    took the first for the second: FAILED with the stale retry error, missed by a DELIVERY_LIMIT filter."""
    at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    headers = {
        "x-attempt": 1,
        "x-retry-delay-ms": 1000,
        "x-last-error": "operation ledger failed: timeout",
        "x-death": [
            {"reason": "delivery_limit", "queue": "switchboard.events.0", "time": at, "count": 1},
            {"reason": "expired", "queue": "switchboard.events.retry.1000", "time": at, "count": 1},
        ],
    }
    m = QueueMessage(
        body=encode_inbound(event()), message_id="shop/evt_1", headers=headers, redelivered=False, queue="d"
    )
    d = DeadLetterRecorder(Rows(), DeadLetterKind.PROCESSING).record(m)  # type: ignore[arg-type]
    assert d.reason == "DELIVERY_LIMIT"
    assert d.last_error.endswith("the last error before: operation ledger failed: timeout")
    assert d.dead_us == int(at.timestamp() * 1_000_000)


async def test_a_purge_leaves_a_row_a_redrive_is_sending() -> None:
    rows, d, gate, events, manager = await gated()
    task = asyncio.create_task(redrive(manager, d))
    await asyncio.sleep(0.01)  # claimed, publishing
    assert await manager.purge([d.id], Filter(), confirm=True) == 0
    gate.set()
    await task
    assert rows.rows[d.id].state is DeadLetterState.REDRIVEN and len(events.published) == 1


async def test_a_mark_the_store_refuses_after_the_publish_is_tried_again_and_never_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Raised, it failed the call; run again, the row (still REDRIVING) was taken over and sent a second
    time (found in review)."""
    monkeypatch.setattr("control_service.dead_letters.MARK_PAUSES", (0.0, 0.0))
    rows = Claimable()
    d = await recorded(rows)
    events = Events()
    manager = DeadLetterManager(rows, events, events)  # type: ignore[arg-type]
    claim = rows.set_dead_letter_state
    refusals = [2]

    async def flaky(x: DeadLetter, state: DeadLetterState, at_us: int, **kw: Any) -> bool:
        if state is DeadLetterState.REDRIVEN and refusals[0]:
            refusals[0] -= 1
            raise StoreUnavailable("the write timed out")
        return await claim(x, state, at_us, **kw)

    monkeypatch.setattr(rows, "set_dead_letter_state", flaky)
    progress = await redrive(manager, d)
    assert (progress[-1].redriven, progress[-1].failed) == (1, 0) and len(events.published) == 1
    assert rows.rows[d.id].state is DeadLetterState.REDRIVEN  # on the third try
    refusals[0] = 10
    rows.rows[d.id].state = DeadLetterState.DEAD
    progress = await redrive(manager, d)
    assert (progress[-1].redriven, progress[-1].failed) == (1, 0)  # sent: counted, not raised
    assert rows.rows[d.id].state is DeadLetterState.REDRIVING and len(events.published) == 2


async def test_a_copy_dead_lettered_again_before_a_redrive_is_no_new_death() -> None:
    """Death at 10, dead-lettered again at 12 (it came back FAILED), the copy still queued when the row is
    redriven at 20: it belongs to death 10 (it became a second DEAD row; found in the third review)."""
    rows = Rows()
    recorder = DeadLetterRecorder(rows, DeadLetterKind.PROCESSING)  # type: ignore[arg-type]
    await recorder.handle([copy(10)])
    (row,) = rows.rows.values()
    row.state, row.redriven_us = DeadLetterState.REDRIVEN, 20 * S
    assert await recorder.handle([copy(12, again=True)]) == [Ack("duplicate")] and len(rows.rows) == 1


async def test_a_purge_takes_neither_a_redriven_row_nor_a_claim_taken_over_since() -> None:
    """A purge rewrote a REDRIVEN row's date, and the recorder then took later deaths for copies; a purge of
    a stale claim overwrote a redrive that had just taken it over (found in the third review)."""
    rows, d, gate, events, manager = await gated()
    row = rows.rows[d.id]
    row.state, row.redriven_us = DeadLetterState.REDRIVEN, 20 * S
    assert await manager.purge([d.id], Filter(), confirm=True) == 0 and row.state is DeadLetterState.REDRIVEN
    row.state, row.redriven_us = DeadLetterState.REDRIVING, now_us() - STALE_CLAIM_US - 1
    selected = dataclasses.replace(row)  # what the purge's selection read
    task = asyncio.create_task(redrive(manager, d))
    await asyncio.sleep(0.01)  # the redrive takes the stale claim over
    assert row.state is DeadLetterState.REDRIVING and row.redriven_us != selected.redriven_us

    async def stale_selection(ids: Any, f: Any, everything: bool) -> list[DeadLetter]:
        return [selected]

    manager.selection = stale_selection  # type: ignore[method-assign]
    assert await manager.purge([d.id], Filter(), confirm=True) == 0
    gate.set()
    progress = await task
    assert progress[-1].redriven == 1 and len(events.published) == 1
    assert rows.rows[d.id].state is DeadLetterState.REDRIVEN  # not PURGED


async def test_a_delivery_dead_lettered_without_its_end_recorded_is_marked_failed() -> None:
    """Found in review: a task that kept making its handler raise (or hit the broker's delivery limit) was
    dead-lettered while its delivery said PENDING or RETRYING for good, no attempt coming. The recorder marks it
    FAILED, saying why; a task the pipeline failed itself (recorded FAILED already) is left alone."""

    class Deliveries(Rows):
        def __init__(self) -> None:
            super().__init__()
            self.failed: list[tuple[str, str]] = []

        async def fail_delivery(self, delivery_id: str, error: str, dead_us: int) -> bool:
            self.failed.append((delivery_id, error))
            assert dead_us == 1_700_000_000 * S  # the death's time: what the mark's cell timestamp is
            return True

    def task_copy(reason: str, delivery_id: str) -> QueueMessage:
        task = DeliveryTask(delivery_id=delivery_id, subscription_id="sub_1", event=event(), created_us=1)
        headers: dict[str, object] = {
            "x-attempt": 2,
            "x-last-error": "the handler failed: SwitchboardError: no signing secret",
            "x-dead-reason": reason,
            "x-dead-at": 1_700_000_000 * S,
        }
        return QueueMessage(encode_task(task), delivery_id, headers, redelivered=False, queue="q")

    store = Deliveries()
    recorder = DeadLetterRecorder(store, DeadLetterKind.DELIVERY)  # type: ignore[arg-type]
    verdicts = await recorder.handle([task_copy("crashed", "dlv_crashed"), task_copy("failed", "dlv_failed")])
    assert verdicts == [Ack("recorded"), Ack("recorded")]
    assert [(i, e.split(":")[0]) for i, e in store.failed] == [("dlv_crashed", "dead-lettered (CRASHED)")]
    (crashed_row,) = [d for d in store.rows.values() if d.delivery_id == "dlv_crashed"]
    error = store.failed[0][1]
    assert crashed_row.id in error and "no signing secret" not in error  # the client sees no internals
