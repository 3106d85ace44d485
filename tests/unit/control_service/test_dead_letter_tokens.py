"""DeadLetterManager's page tokens: the kind index and the cursor a token carries back are checked (a forged
index used to fail as INTERNAL: ValueError, TypeError or IndexError); paging without an end time; the
recorder's reason for a message that made its handler raise."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from control_service.dead_letters import (
    FIRST_READS,
    MAX_PAGE,
    MESSAGE_READS,
    DeadLetterManager,
    DeadLetterRecorder,
    Filter,
    _query,
)
from switchboard import pagination
from switchboard.errors import InvalidRequest
from switchboard.model.events import InboundEvent
from switchboard.model.operations import DeadLetter, DeadLetterKind
from switchboard.model.subscriptions import DeliveryTask
from switchboard.pagination import PAGE_BYTES
from switchboard.queue import QueueMessage
from switchboard.wire import encode_inbound, encode_task
from tests.unit.factories import event


class NoDeadLetters:
    def __init__(self) -> None:
        self.reads: list[tuple[DeadLetterKind, Any]] = []
        self.states: list[str] = []

    async def set_dead_letter_state(
        self, d: DeadLetter, state: Any, at_us: int, *, only_from: Any = None, only_at_us: Any = None
    ) -> bool:
        self.states.append(state.value)
        return True

    async def dead_letters(
        self, kind: DeadLetterKind, start_us: int, end_us: int, limit: int, after: Any
    ) -> tuple[list[DeadLetter], Any]:
        self.reads.append((kind, after))
        return [], None

    async def dead_letter_message(self, d: DeadLetter) -> DeadLetter | None:
        return d


F = Filter(start_us=1_000_000, end_us=2_000_000)


class EventPublisher:
    """Keeps the events a redrive publishes."""

    def __init__(self) -> None:
        self.events: list[InboundEvent] = []

    async def publish_event(self, e: InboundEvent) -> None:
        self.events.append(e)


def token(k: object, c: object = None) -> str:
    return pagination.encode_token({"q": _query(F, F.start_us or 0, F.end_us or 0), "k": k, "c": c})


@pytest.mark.parametrize(
    "tok",
    [
        token("x"),
        token(None),
        token(-9),
        token(2),
        token(True),
        token(1.0),
        token(0, [1, 2]),
        token(0, ["k", "d", 1, "i"]),
    ],
)
async def test_a_forged_kind_index_or_cursor_is_page_token_invalid(tok: str) -> None:
    store = NoDeadLetters()
    manager = DeadLetterManager(store, None, None)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest) as caught:
        await manager.list_dead_letters(F, 10, tok)
    assert caught.value.reason == "PAGE_TOKEN_INVALID" and store.reads == []


async def test_a_token_of_ours_goes_on_from_the_kind_it_names() -> None:
    store = NoDeadLetters()
    manager = DeadLetterManager(store, None, None)  # type: ignore[arg-type]
    cursor = ["delivery", 20_000, 1_500, "dl_1"]
    assert await manager.list_dead_letters(F, 10, token(1, cursor)) == ([], "")
    assert store.reads == [(DeadLetterKind.DELIVERY, ("delivery", 20_000, 1_500, "dl_1"))]


class TwoPages(NoDeadLetters):
    """A full page of dead letters and a cursor, then the rest."""

    async def dead_letters(
        self, kind: DeadLetterKind, start_us: int, end_us: int, limit: int, after: Any
    ) -> tuple[list[DeadLetter], Any]:
        self.reads.append((kind, (start_us, end_us, after)))
        if after:
            return [DeadLetter(f"dl_last_{len(self.reads)}", kind, end_us - 2, source="shop")], None
        page = [DeadLetter(f"dl_{i}", kind, end_us - 1, source="shop") for i in range(limit)]
        return page, (kind.value, 1, 2, page[-1].id)


async def test_a_listing_without_an_end_time_pages_on_and_a_redrive_selection_spans_its_pages() -> None:
    """No end time (a redrive's usual selection): every next page reads the range its first page pinned; the
    default end ("now") moved with the clock, and the next pages were refused as another query's."""
    store = TwoPages()
    manager = DeadLetterManager(store, None, None)  # type: ignore[arg-type]
    f = Filter(kind=DeadLetterKind.PROCESSING, source="shop")
    selected = await manager.selection([], f, everything=False)
    assert len(selected) == 1001 and len(store.reads) == 2
    (_, (start, end, first)), (_, (start2, end2, second)) = store.reads
    assert (start, end, first) == (start2, end2, None) and second == ("processing", 1, 2, "dl_999")


def test_a_message_dead_lettered_for_making_its_handler_raise_is_recorded_crashed() -> None:
    headers: dict[str, object] = {
        "x-attempt": 2,
        "x-crash-attempt": 5,
        "x-last-error": "the handler failed: ValueError: boom",
        "x-dead-reason": "crashed",
        "x-dead-at": 1_700_000_000_000_000,
    }
    m = QueueMessage(
        body=encode_inbound(event()), message_id="shop/evt_1", headers=headers, redelivered=False, queue="q"
    )
    d = DeadLetterRecorder(NoDeadLetters(), DeadLetterKind.PROCESSING).record(m)  # type: ignore[arg-type]
    assert (d.reason, d.last_error, d.event_id) == ("CRASHED", "the handler failed: ValueError: boom", "evt_1")


async def test_an_id_named_twice_is_selected_once() -> None:
    class One(NoDeadLetters):
        async def get_dead_letter(self, dead_letter_id: str) -> DeadLetter | None:
            self.reads.append((DeadLetterKind.PROCESSING, dead_letter_id))
            return DeadLetter(dead_letter_id, DeadLetterKind.PROCESSING, 1)

    store = One()
    manager = DeadLetterManager(store, None, None)  # type: ignore[arg-type]
    chosen = await manager.selection(["dl_1", "dl_2", "dl_1"], Filter(), everything=False)
    assert [d.id for d in chosen] == ["dl_1", "dl_2"]


async def test_a_redrive_does_not_send_again_a_delivery_that_was_delivered() -> None:
    """A delivery task can be dead-lettered after its delivery was recorded DELIVERED (its worker killed
    before the ack, again and again, until the broker's delivery limit): its redrive used to set it back to
    PENDING and send it a second time."""

    class Delivered(NoDeadLetters):
        async def get_dead_letter(self, dead_letter_id: str) -> DeadLetter | None:
            task = DeliveryTask("dlv_1", "sub_1", event(), 1)
            return DeadLetter(dead_letter_id, DeadLetterKind.DELIVERY, 1, body=encode_task(task))

        async def reset_delivery(self, delivery_id: str, now_us: int) -> bool:
            return False  # delivered

    class Publisher:
        def __init__(self) -> None:
            self.tasks: list[DeliveryTask] = []

        async def publish_task(self, task: DeliveryTask) -> None:
            self.tasks.append(task)

    store, publisher = Delivered(), Publisher()
    manager = DeadLetterManager(store, None, publisher)  # type: ignore[arg-type]
    progress = [p async for p in manager.redrive(["dl_1"], Filter(), everything=False, dry_run=False)]
    assert (progress[-1].redriven, progress[-1].failed) == (0, 1)
    assert publisher.tasks == [] and store.states == ["redriving", "redriven"]  # claimed, then settled


async def test_a_redrive_of_an_event_processed_since_publishes_nothing() -> None:
    """A replay processed the event after its receipt was dead-lettered: the redrive used to reset the row to
    RETRYING (for good: the redriven receipt was then a duplicate there) and publish for nothing."""

    class OneEvent(NoDeadLetters):
        async def get_dead_letter(self, dead_letter_id: str) -> DeadLetter | None:
            return DeadLetter(dead_letter_id, DeadLetterKind.PROCESSING, 1, body=encode_inbound(event()))

    class ProcessedSince:
        async def reset_attempts(self, e: object) -> bool:
            return False

    publisher = EventPublisher()
    manager = DeadLetterManager(OneEvent(), ProcessedSince(), publisher)  # type: ignore[arg-type]
    progress = [p async for p in manager.redrive(["dl_1"], Filter(), everything=False, dry_run=False)]
    assert (progress[-1].redriven, progress[-1].failed) == (0, 1) and publisher.events == []


async def test_a_selection_holds_no_bodies_and_a_redrive_reads_each_body_back_when_it_sends_it() -> None:
    """A redrive of a filter held every selected dead letter's body and headers until it ended (100,000 rows
    of an outage: half a gigabyte), and read them with every page. The selection neither reads nor keeps them;
    each body is read back when it is sent, and a row gone meanwhile (expired) is counted failed and left
    REDRIVEN (nothing to do for it)."""
    bodies = {f"dl_{i}": encode_inbound(event(event_id=f"evt_{i}")) for i in range(3)}
    gone = {"dl_2"}  # listed, then expired before the redrive reached it
    asked: list[str] = []

    class Listed(NoDeadLetters):
        async def dead_letters(
            self, kind: DeadLetterKind, start_us: int, end_us: int, limit: int, after: Any
        ) -> tuple[list[DeadLetter], Any]:
            if kind is not DeadLetterKind.PROCESSING:
                return [], None
            return [DeadLetter(i, kind, end_us - 1) for i in bodies], None

        async def dead_letter_message(self, d: DeadLetter) -> DeadLetter | None:
            asked.append(d.id)
            if d.id in gone:
                return None
            return replace(d, body=bodies[d.id], headers={"x": "y"})

    class Resettable:
        async def reset_attempts(self, e: object) -> bool:
            return True

    store, publisher = Listed(), EventPublisher()
    manager = DeadLetterManager(store, Resettable(), publisher)  # type: ignore[arg-type]
    f = Filter(kind=DeadLetterKind.PROCESSING)
    selected = await manager.selection([], f, everything=False)
    assert [(d.id, d.body, d.headers) for d in selected] == [(f"dl_{i}", b"", {}) for i in range(3)]
    assert asked == []  # no message read
    progress = [p async for p in manager.redrive([], f, everything=False, dry_run=False)]
    assert (progress[-1].matched, progress[-1].redriven, progress[-1].failed) == (3, 2, 1)
    assert [e.event_id for e in publisher.events] == ["evt_0", "evt_1"]
    assert asked == ["dl_0", "dl_1", "dl_2"]  # each message read back once, when it was sent
    assert store.states[-2:] == ["redriving", "redriven"]  # the gone one claimed, then settled


async def test_a_listing_without_a_start_time_covers_the_retention() -> None:
    """The default range was a fixed 30 days: with a longer cassandra.ttl_seconds, dlq redrive --all skipped
    every dead letter older than that."""
    for retention_days, expected_days in ((90, 90), (7, 30)):
        store = TwoPages()
        manager = DeadLetterManager(store, None, None, retention_us=retention_days * 86_400_000_000)  # type: ignore[arg-type]
        await manager.list_dead_letters(Filter(kind=DeadLetterKind.PROCESSING), 10, "")
        ((_, (start, end, _)),) = store.reads[:1]
        assert end - start == expected_days * 86_400_000_000


class Many(NoDeadLetters):
    """``n`` processing dead letters, newest first, a millisecond apart, every ``every``-th from source "shop";
    pages and cursors as the store gives them."""

    def __init__(self, n: int, every: int) -> None:
        super().__init__()
        now = 1_700_000_000_000_000
        self.rows = [
            DeadLetter(
                f"dl_{i:04}", DeadLetterKind.PROCESSING, now - i * 1000, source="shop" if i % every == 0 else "x"
            )
            for i in range(n)
        ]
        self.asked: list[int] = []

    async def dead_letters(
        self, kind: DeadLetterKind, start_us: int, end_us: int, limit: int, after: Any
    ) -> tuple[list[DeadLetter], Any]:
        self.asked.append(limit)
        if kind is not DeadLetterKind.PROCESSING:
            return [], None
        rows = [d for d in self.rows if after is None or (d.dead_us // 1000, d.id) < (after[2], after[3])]
        page = rows[:limit]
        last = page[-1] if len(page) == limit else None
        return page, (last and (kind.value, last.dead_us // 86_400_000_000, last.dead_us // 1000, last.id))


async def test_a_sparse_filter_reads_whole_pages_and_its_pages_neither_skip_nor_repeat() -> None:
    """Asking the store for the matches still missing, a filter that took 1 row in 20 read one row a round trip
    once a page was nearly full. Rows read past the page's last match are read again by the next page."""
    store = Many(400, every=20)
    manager = DeadLetterManager(store, None, None)  # type: ignore[arg-type]
    f = Filter(kind=DeadLetterKind.PROCESSING, source="shop", start_us=0, end_us=2_000_000_000_000_000)
    seen: list[str] = []
    token = ""
    while True:
        page, token = await manager.list_dead_letters(f, 3, token)
        seen += [d.id for d in page]
        if not token:
            break
    assert seen == [f"dl_{i:04}" for i in range(0, 400, 20)]
    assert min(store.asked) >= 100


class Heavy(Many):
    """``Many``'s rows, each with a message of ``size`` bytes (the first one ``first`` bytes) read back whole."""

    def __init__(self, n: int, size: int, first: int) -> None:
        super().__init__(n, every=1)
        self.sizes = {d.id: size for d in self.rows} | {self.rows[0].id: first}
        self.read: list[str] = []

    async def dead_letter_message(self, d: DeadLetter) -> DeadLetter | None:
        self.read.append(d.id)
        return replace(d, body=b"x" * self.sizes[d.id], headers={"x-attempt": "3"})


async def test_a_page_of_large_messages_ends_at_the_byte_budget_and_the_next_goes_on_after_it() -> None:
    """A page of 1,000 dead letters carried every message: ~5 MB of 5 KB bodies, refused by a client that takes
    gRPC's default 4 MiB, and bodies up to the edge's limit were read into the service by the thousand. A page
    now ends once its messages reach PAGE_BYTES (one oversized message still has a page of its own), and the
    pages together carry every dead letter once, in order, with its message."""
    mib = 1024 * 1024
    store = Heavy(12, size=mib, first=5 * mib)
    manager = DeadLetterManager(store, None, None)  # type: ignore[arg-type]
    f = Filter(kind=DeadLetterKind.PROCESSING, start_us=0, end_us=2_000_000_000_000_000)
    pages: list[list[DeadLetter]] = []
    token = ""
    while True:
        page, token = await manager.list_dead_letters(f, MAX_PAGE, token)
        pages.append(page)
        if not token:
            break
    assert [len(p) for p in pages] == [1, 2, 2, 2, 2, 2, 1]
    assert [d.id for p in pages for d in p] == [d.id for d in store.rows]
    assert all(len(d.body) == store.sizes[d.id] and d.headers == {"x-attempt": "3"} for p in pages for d in p)
    assert all(sum(len(d.body) for d in p) <= PAGE_BYTES for p in pages[1:])
    # Messages are read a few at a time: a page reads at most MESSAGE_READS past the budget.
    assert len(store.read) <= len(store.rows) + len(pages) * MESSAGE_READS


async def test_small_messages_fill_the_page_and_a_row_that_expired_since_the_listing_is_left_out() -> None:
    store = Heavy(30, size=5000, first=5000)
    gone = store.rows[4].id
    read = store.dead_letter_message

    async def expiring(d: DeadLetter) -> DeadLetter | None:
        return None if d.id == gone else await read(d)

    store.dead_letter_message = expiring  # type: ignore[method-assign]
    manager = DeadLetterManager(store, None, None)  # type: ignore[arg-type]
    f = Filter(kind=DeadLetterKind.PROCESSING, start_us=0, end_us=2_000_000_000_000_000)
    page, token = await manager.list_dead_letters(f, 10, "")
    assert [d.id for d in page] == [d.id for d in store.rows[:10] if d.id != gone]
    rest, _ = await manager.list_dead_letters(f, 10, token)
    assert rest[0].id == store.rows[10].id  # after the page's last row read, not its last one kept


async def test_a_page_is_measured_in_bytes_not_characters() -> None:
    """Errors and headers were counted in characters: 1,000 dead letters of 1 KB bodies with a 1,000-character
    Japanese error (3 bytes a character) made a page of ~4.3 MB, past a default client's 4 MiB (found in
    review)."""
    store = Heavy(1000, size=1024, first=1024)
    read = store.dead_letter_message

    async def japanese(d: DeadLetter) -> DeadLetter | None:
        got = await read(d)
        return replace(got, last_error="失" * 1000, headers={"x-last-error": "敗" * 300}) if got else None

    store.dead_letter_message = japanese  # type: ignore[method-assign]
    manager = DeadLetterManager(store, None, None)  # type: ignore[arg-type]
    f = Filter(kind=DeadLetterKind.PROCESSING, start_us=0, end_us=2_000_000_000_000_000)
    page, token = await manager.list_dead_letters(f, MAX_PAGE, "")
    weight = sum(len(d.body) + len(d.last_error.encode()) + len(d.headers["x-last-error"].encode()) for d in page)
    assert token and 500 < len(page) < 1000 and weight <= PAGE_BYTES


async def test_messages_are_read_a_few_at_a_time_as_the_room_left_allows() -> None:
    """32 messages were read together before the page's budget was looked at: 100 dead letters of 15 MiB
    bodies held ~480 MiB for a page of one, and each next page read its 31 followers again (found in review)."""
    mib = 1024 * 1024
    store = Heavy(100, size=15 * mib, first=15 * mib)
    manager = DeadLetterManager(store, None, None)  # type: ignore[arg-type]
    f = Filter(kind=DeadLetterKind.PROCESSING, start_us=0, end_us=2_000_000_000_000_000)
    page, token = await manager.list_dead_letters(f, MAX_PAGE, "")
    assert len(page) == 1 and token and len(store.read) <= FIRST_READS
    small = Heavy(300, size=5000, first=5000)
    manager = DeadLetterManager(small, None, None)  # type: ignore[arg-type]
    page, _ = await manager.list_dead_letters(f, 300, "")
    assert len(page) == 300 and len(small.read) == 300  # small ones: every row read once
