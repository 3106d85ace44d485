"""The dead-letter recorder writes one row per death of a message, however many copies of it reach the queue
(a worker killed before its ack; a FAILED message dead-lettered again; an older copy deferred behind its retry
that ends too), and a new row for a death after a redrive. The store is a dict here: what is checked is the
recorder's choice of id and whether it writes (the rows on Cassandra: tests/e2e/test_operations.py)."""

from __future__ import annotations

from control_service.dead_letters import MAX_GENERATIONS, DeadLetterRecorder
from switchboard.model.operations import DeadLetter, DeadLetterKind, DeadLetterState
from switchboard.queue import Ack, QueueMessage
from switchboard.wire import encode_inbound
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


def copy(dead_at: int, *, attempt: int = 3, message_id: str = "shop/evt_1") -> QueueMessage:
    headers = {"x-attempt": attempt, "x-last-error": "boom", "x-dead-reason": "failed", "x-dead-at": dead_at}
    return QueueMessage(
        body=encode_inbound(event()), message_id=message_id, headers=headers, redelivered=False, queue="q"
    )


async def test_copies_of_one_death_are_one_row_and_the_first_is_kept() -> None:
    rows = Rows()
    recorder = DeadLetterRecorder(rows, DeadLetterKind.PROCESSING)  # type: ignore[arg-type]
    first = await recorder.handle([copy(1_700_000_000_000_000)])
    again = await recorder.handle([copy(1_700_000_005_000_000), copy(1_700_000_009_000_000)])
    assert first == [Ack("recorded")] and again == [Ack("duplicate"), Ack("duplicate")]
    assert rows.writes == 1
    (row,) = rows.rows.values()
    assert row.dead_us == 1_700_000_000_000_000


async def test_a_purged_death_is_not_recorded_again_but_one_after_a_redrive_is() -> None:
    rows = Rows()
    recorder = DeadLetterRecorder(rows, DeadLetterKind.PROCESSING)  # type: ignore[arg-type]
    await recorder.handle([copy(1)])
    (first,) = rows.rows.values()
    first.state = DeadLetterState.PURGED
    assert await recorder.handle([copy(2)]) == [Ack("duplicate")]
    first.state = DeadLetterState.REDRIVEN  # it was redriven, and failed again with the same attempts
    assert await recorder.handle([copy(3)]) == [Ack("recorded")]
    assert await recorder.handle([copy(4)]) == [Ack("duplicate")]  # and copies of that death are one row too
    assert sorted(d.dead_us for d in rows.rows.values()) == [1, 3]


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
        await recorder.handle([copy(10 + n)])
        for d in rows.rows.values():
            d.state = DeadLetterState.REDRIVEN
    assert await recorder.handle([copy(100)]) == [Ack("recorded")]
    assert await recorder.handle([copy(101)]) == [Ack("recorded")]  # past the chain: no check for copies
    assert len(rows.rows) == 2 + MAX_GENERATIONS + 2
