"""The Processor's decisions (duplicate, redelivery, stale, retry, failed, replay) against in-memory stores."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from dataclasses import replace
from typing import Any

import pytest

import processor_service.processor as processor_module
from processor_service.operations import Operation, OperationContext, Registry
from processor_service.pipeline import verdict
from processor_service.processor import Disposition, Handled, Processor
from switchboard.errors import StoreUnavailable
from switchboard.model.events import EventStatus, InboundEvent, Outcome, StoredEvent
from switchboard.queue import Ack, DeadLetter, Retry
from tests.unit.factories import event
from tests.unit.processor_service.fakes import MemoryEvents


class Flaky:
    """An operation that fails until attempt ``ok_from``; counts its calls."""

    def __init__(self, ok_from: int) -> None:
        self.ok_from = ok_from
        self.calls = 0

    async def __call__(self, e: InboundEvent, ctx: OperationContext) -> None:
        self.calls += 1
        if ctx.attempt < self.ok_from:
            raise ConnectionError(f"attempt {ctx.attempt} refused")


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, e: InboundEvent, ctx: OperationContext) -> None:
        self.calls += 1
        ctx.save_entity_state(e)


@pytest.fixture
def store() -> MemoryEvents:
    return MemoryEvents()


def processor(store: MemoryEvents, *ops: Operation, max_attempts: int = 3) -> Processor:
    return Processor(store, store, Registry(ops), max_attempts=max_attempts)


async def one(p: Processor, e: InboundEvent) -> Handled:
    """A batch of one receipt."""
    (handled,) = await p.handle([e])
    return handled


async def test_first_receipt_is_applied_and_committed(store: MemoryEvents) -> None:
    entity = Counter()
    handled = await one(processor(store, Operation("entity", entity, takes_context=True)), event())
    assert (handled.disposition, handled.attempt, handled.applied) == (Disposition.PROCESSED, 1, 1)
    assert store.stored["shop/evt_1"].status is EventStatus.PROCESSED
    assert store.ok_runs("shop/evt_1") == {"entity": 1}
    assert [fx.entity_id for fx in store.effects] == ["in_1"]
    assert store.marks[("shop", "in_1")] == 7


async def test_another_receipt_of_an_applied_event_is_a_duplicate_and_runs_nothing(store: MemoryEvents) -> None:
    entity = Counter()
    p = processor(store, Operation("entity", entity, takes_context=True))
    await one(p, event(receipt_id="r1"))
    handled = await one(p, event(receipt_id="r2"))
    assert handled.disposition is Disposition.DUPLICATE
    assert entity.calls == 1 and store.duplicates == {"shop/evt_1": ["r2"]}


async def test_a_redelivered_final_receipt_is_done_and_repairs_its_index_row(store: MemoryEvents) -> None:
    entity = Counter()
    p = processor(store, Operation("entity", entity, takes_context=True))
    await one(p, event())
    del store.index["shop/evt_1"]  # a crash lost the index write
    handled = await one(p, event())
    assert (handled.disposition, entity.calls) == (Disposition.DONE, 1)
    assert store.index["shop/evt_1"] is EventStatus.PROCESSED


async def test_a_failed_operation_is_retried_and_done_ones_are_not_rerun(store: MemoryEvents) -> None:
    entity, flaky = Counter(), Flaky(ok_from=3)
    p = processor(store, Operation("entity", entity, takes_context=True), Operation("flaky", flaky, takes_context=True))
    first = await one(p, event())
    assert (first.disposition, first.attempt) == (Disposition.RETRY, 1)
    assert first.last_error == "flaky: ConnectionError: attempt 1 refused"
    assert store.stored["shop/evt_1"].status is EventStatus.RETRYING
    second, third = await one(p, event()), await one(p, event())
    assert [second.disposition, third.disposition] == [Disposition.RETRY, Disposition.PROCESSED]
    assert (entity.calls, flaky.calls) == (1, 3)
    assert store.ok_runs("shop/evt_1") == {"entity": 1, "flaky": 1}


async def test_the_last_failed_attempt_is_failed(store: MemoryEvents) -> None:
    p = processor(store, Operation("flaky", Flaky(ok_from=99), takes_context=True), max_attempts=2)
    assert (await one(p, event())).disposition is Disposition.RETRY
    failed = await one(p, event())
    assert (failed.disposition, failed.attempt) == (Disposition.FAILED, 2)
    assert store.stored["shop/evt_1"].status is EventStatus.FAILED
    # The receipt again (its dead letter not confirmed): dead-lettered again, nothing run (the test below).
    assert (await one(p, event())).disposition is Disposition.FAILED


async def test_an_event_older_than_its_entity_is_stale_and_skipped(store: MemoryEvents) -> None:
    entity = Counter()
    p = processor(store, Operation("entity", entity, takes_context=True))
    await one(p, event(event_id="evt_new", entity_version=20))
    stale = await one(p, event(event_id="evt_old", entity_version=10))
    assert stale.disposition is Disposition.STALE
    assert stale.last_error == "stale: entity in_1 is at version 20, this event carries 10"
    assert [(r.operation, r.outcome) for r in store.stored["shop/evt_old"].results] == [("entity", Outcome.SKIPPED)]
    assert entity.calls == 1 and store.marks[("shop", "in_1")] == 20
    equal = await one(p, event(event_id="evt_same", entity_version=20))
    assert equal.disposition is Disposition.PROCESSED  # equal versions are applied


async def test_a_replay_runs_every_operation_again_without_a_claim(store: MemoryEvents) -> None:
    entity = Counter()
    p = processor(store, Operation("entity", entity, takes_context=True))
    original = event()
    await one(p, original)
    replayed = await one(p, replace(original, receipt_id="r-replay", replay=True))
    assert (replayed.disposition, replayed.attempt) == (Disposition.PROCESSED, 2)
    assert entity.calls == 2 and store.ok_runs("shop/evt_1") == {"entity": 2}
    assert store.duplicates == {}


def entity_then_failing(store: MemoryEvents, *, max_attempts: int) -> tuple[Processor, Counter, Flaky]:
    """A processor whose events run an operation that succeeds, then one that always fails."""
    entity, flaky = Counter(), Flaky(ok_from=99)
    ops = (Operation("entity", entity, takes_context=True), Operation("flaky", flaky, takes_context=True))
    return processor(store, *ops, max_attempts=max_attempts), entity, flaky


async def test_a_replays_own_retries_skip_what_the_replay_did_and_it_gets_a_full_budget(store: MemoryEvents) -> None:
    """Found in review: a replay's retry copy (or its redelivery: the replay's receipt again) was taken for a
    new replay, so what the replay had run OK ran again; and a replay counted on from the event's attempts
    against the same limit, so replaying an event that had used them up left it no retry at all."""
    p, entity, flaky = entity_then_failing(store, max_attempts=2)
    original = event()
    await one(p, original)
    assert (await one(p, original)).disposition is Disposition.FAILED  # attempts 1 and 2 used
    replay = replace(original, receipt_id="r-replay", replay=True)
    first = await one(p, replay)  # every operation again, as attempt 3 of the event, the replay's first
    assert (first.disposition, first.attempt, entity.calls) == (Disposition.RETRY, 3, 2)
    # Its retry waits the first backoff level, not the third (the event's attempt).
    assert verdict(replay, first) == Retry(3, first.last_error, backoff_attempt=1)
    second = await one(p, replay)  # its retry: what the replay ran OK is not run again
    assert (second.disposition, second.attempt) == (Disposition.FAILED, 4)
    assert (entity.calls, flaky.calls) == (2, 4)
    assert store.ok_runs("shop/evt_1") == {"entity": 2}


async def test_a_copy_of_a_replay_another_replay_took_over_is_a_duplicate(store: MemoryEvents) -> None:
    """Found in the review of the replay fix: two replays of a failing event overlapping, each copy of one found
    the row under the other and was taken for a new replay with a fresh budget: every operation ran by turns,
    without end. A replay whose receipt already ran is superseded: a duplicate, nothing runs."""
    p, entity, flaky = entity_then_failing(store, max_attempts=3)
    original = event()
    r2, r3 = replace(original, receipt_id="r2", replay=True), replace(original, receipt_id="r3", replay=True)
    assert (await one(p, r2)).disposition is Disposition.RETRY
    assert (await one(p, r3)).disposition is Disposition.RETRY  # r3 takes the row over
    assert (await one(p, r2)).disposition is Disposition.DUPLICATE  # r2's retry copy: superseded
    assert (entity.calls, flaky.calls) == (2, 2)
    assert (await one(p, r3)).disposition is Disposition.RETRY  # r3 goes on with its own budget


async def test_a_copy_behind_the_stored_attempts_runs_nothing_and_goes_back_to_wait(store: MemoryEvents) -> None:
    """Found in review: when a retry copy cannot be published (during a broker alarm, at once), the message
    comes back with the attempts it was sent with, behind the stored ones; run at once, the attempts of an
    event went in seconds instead of the backoff's minutes. Such a copy runs nothing and is sent to wait in
    the delay queue of the stored attempt."""
    flaky = Flaky(ok_from=99)
    p = processor(store, Operation("flaky", flaky, takes_context=True), max_attempts=8)
    e = event()
    (first,) = await p.handle([e], sent_attempts=[0])
    assert (first.disposition, first.attempt) == (Disposition.RETRY, 1)
    (behind,) = await p.handle([e], sent_attempts=[0])  # the original again: its retry copy never went out
    assert (behind.disposition, behind.attempt, flaky.calls) == (Disposition.BEHIND, 1, 1)
    assert store.stored["shop/evt_1"].attempts == 1
    assert behind.last_error == first.last_error  # the operation's error stays the copy's x-last-error
    assert verdict(e, behind) == Retry(1, behind.last_error, outcome="behind")
    (retried,) = await p.handle([e], sent_attempts=[1])  # the retry copy, after its delay
    assert (retried.disposition, retried.attempt, flaky.calls) == (Disposition.RETRY, 2, 2)


async def test_a_batch_is_decided_with_one_read_and_guards_one_entity_in_arrival_order(store: MemoryEvents) -> None:
    entity = Counter()
    p = processor(store, Operation("entity", entity, takes_context=True))
    await one(p, event(event_id="evt_seen", receipt_id="r1"))
    store.reads = 0
    batch = [
        event(event_id="evt_new", entity_version=30),  # applied, moves the version for the next one
        event(event_id="evt_old", entity_version=20),  # older than evt_new of the same batch: stale
        event(event_id="evt_seen", receipt_id="r2"),  # another receipt of an applied event: duplicate
        event(event_id="evt_other", entity_id="in_2", entity_version=1),
    ]
    handled = await p.handle(batch)
    assert [h.disposition for h in handled] == [
        Disposition.PROCESSED,
        Disposition.STALE,
        Disposition.DUPLICATE,
        Disposition.PROCESSED,
    ]
    assert store.reads == 1
    assert store.most_reading == 2  # the guard's versions went out with the priors: one round trip
    assert store.marks == {("shop", "in_1"): 30, ("shop", "in_2"): 1}
    assert entity.calls == 3 and store.duplicates == {"shop/evt_seen": ["r2"]}


async def test_a_receipt_no_longer_held_at_commit_time_is_left_out_of_the_commit(store: MemoryEvents) -> None:
    entity = Counter()
    p = processor(store, Operation("entity", entity, takes_context=True))
    await one(p, event(event_id="evt_seen", receipt_id="r1"))
    asked: list[int] = []

    def held(i: int) -> bool:  # the queue channel of batch[1] and batch[2] closed while the batch ran
        asked.append(i)
        return i == 0

    batch = [
        event(event_id="evt_a"),
        event(event_id="evt_b", entity_id="in_2"),
        event(event_id="evt_seen", receipt_id="r2"),  # a duplicate
    ]
    handled = await p.handle(batch, held=held)
    assert [h.disposition for h in handled] == [Disposition.PROCESSED, Disposition.ABANDONED, Disposition.ABANDONED]
    assert sorted(set(asked)) == [0, 1, 2]
    assert "shop/evt_a" in store.stored and "shop/evt_b" not in store.stored
    assert ("shop", "in_2") not in store.marks  # nor its effects: the next consumer applies it
    assert store.duplicates == {}  # evt_seen's second receipt (a duplicate) was not recorded either
    again = await one(p, event(event_id="evt_b", entity_id="in_2"))  # that consumer finds nothing committed
    assert (again.disposition, again.attempt) == (Disposition.PROCESSED, 1)


async def test_an_abandoned_receipt_leaves_no_version_behind(store: MemoryEvents) -> None:
    """A receipt abandoned at commit time (its channel closed) commits nothing, its entity's mark included: its
    version, kept in the guard's memory, made an older event of the entity on a partition this processor still
    holds STALE against a version nobody applied."""
    entity = Counter()
    p = processor(store, Operation("entity", entity, takes_context=True))
    batch = [event(event_id="evt_v30", entity_version=30), event(event_id="evt_other", entity_id="in_2")]
    handled = await p.handle(batch, held=lambda i: i == 1)
    assert [h.disposition for h in handled] == [Disposition.ABANDONED, Disposition.PROCESSED]
    assert ("shop", "in_1") not in store.marks
    older = await one(p, event(event_id="evt_v20", entity_version=20))
    assert older.disposition is Disposition.PROCESSED
    assert store.marks[("shop", "in_1")] == 20 and store.marks[("shop", "in_2")] == 7


async def test_passes_of_one_entity_in_a_batch_run_one_after_the_other_in_version_order(store: MemoryEvents) -> None:
    """Versions 100 and 200 of one entity in one batch both pass the guard. Run at once, an outside write of 100
    that took longer landed after 200's; other entities still run alongside."""
    log: list[str] = []

    async def crm_update(e: InboundEvent) -> None:
        log.append(f"start {e.event_id}")
        await asyncio.sleep(0.02 if e.entity_version == 100 else 0.0)
        log.append(f"end {e.event_id}")

    p = processor(store, Operation("crm", crm_update))
    handled = await p.handle(
        [
            event(event_id="evt_100", entity_version=100),
            event(event_id="evt_other", entity_id="in_2", entity_version=1),
            event(event_id="evt_200", entity_version=200),
        ]
    )
    assert [h.disposition for h in handled] == [Disposition.PROCESSED] * 3
    assert log.index("end evt_100") < log.index("start evt_200")
    assert log.index("start evt_other") < log.index("end evt_100")  # another entity did not wait


class ReadBeforeCommit(MemoryEvents):
    """Entity versions as they were when the read was sent, answered a little later: a batch running at the
    same time commits in between."""

    async def versions(self, keys: Collection[tuple[str, str]]) -> dict[tuple[str, str], int]:
        sent = {k: self.marks[k] for k in keys if k in self.marks}
        await asyncio.sleep(0.01)
        return sent


async def test_batches_running_at_once_are_guarded_against_each_other() -> None:
    store = ReadBeforeCommit()
    entity = Counter()
    p = processor(store, Operation("entity", entity, takes_context=True))

    async def later(e: InboundEvent) -> Handled:
        await asyncio.sleep(0.001)  # its read goes out after the first batch's, before that batch commits
        return await one(p, e)

    newer, older = await asyncio.gather(
        one(p, event(event_id="evt_new", entity_version=30)), later(event(event_id="evt_old", entity_version=20))
    )
    assert (newer.disposition, older.disposition) == (Disposition.PROCESSED, Disposition.STALE)
    assert older.last_error == "stale: entity in_1 is at version 30, this event carries 20"
    assert entity.calls == 1 and store.marks[("shop", "in_1")] == 30


async def test_the_memory_of_decided_versions_is_bounded(store: MemoryEvents, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(processor_module, "DECIDED_VERSIONS", 2)
    p = processor(store, Operation("entity", Counter(), takes_context=True))
    for n in (1, 2, 3, 1):
        await one(p, event(event_id=f"evt_{n}_{len(store.stored)}", entity_id=f"in_{n}", entity_version=5))
    assert list(p._decided) == [("shop", "in_3"), ("shop", "in_1")]  # in_2, least recently decided, dropped


async def test_a_batch_whose_commit_fails_takes_back_the_versions_it_decided(store: MemoryEvents) -> None:
    """v30 and v40 of one entity in a batch whose commit fails (the store is down): the worker retries the same
    batch, or runs its receipts one by one. The processor used to remember v40 as decided, so v30 was then
    STALE against its own batch's uncommitted decision and its operations never ran."""
    entity = Counter()
    p = processor(store, Operation("entity", entity, takes_context=True))
    batch = [event(event_id="evt_30", entity_version=30), event(event_id="evt_40", entity_version=40)]
    commit = store.commit

    async def down(*args: object, **kwargs: object) -> None:
        raise StoreUnavailable("Cassandra: WriteTimeout")

    store.commit = down  # type: ignore[method-assign]
    with pytest.raises(StoreUnavailable):
        await p.handle(batch)
    store.commit = commit  # type: ignore[method-assign]
    first, second = [await one(p, e) for e in batch]  # one by one, in arrival order
    assert (first.disposition, second.disposition) == (Disposition.PROCESSED, Disposition.PROCESSED)
    assert store.marks == {("shop", "in_1"): 40}
    assert await one(p, event(event_id="evt_35", entity_version=35)) == Handled(
        Disposition.STALE, 1, "stale: entity in_1 is at version 40, this event carries 35", first=True
    )


async def test_a_row_without_a_receipt_is_nothing_stored_not_another_receipts(store: MemoryEvents) -> None:
    """A redrive resets the attempts of the event it puts back; for an event dead-lettered before its first
    commit that leaves a row with a status and no receipt. Its redriven receipt used to be a DUPLICATE there:
    acked, never processed."""
    entity = Counter()
    p = processor(store, Operation("entity", entity, takes_context=True))
    store.stored["shop/evt_1"] = StoredEvent(replace(event(), receipt_id=""), EventStatus.RETRYING)
    handled = await one(p, event(receipt_id="r_redriven"))
    assert (handled.disposition, handled.attempt, entity.calls) == (Disposition.PROCESSED, 1, 1)
    assert store.stored["shop/evt_1"].event.receipt_id == "r_redriven"
    assert not handled.first  # a redrive: its latency is the event's age, not timed (found in review)


async def test_a_redelivered_receipt_whose_pass_failed_is_dead_lettered_again(store: MemoryEvents) -> None:
    """Committed FAILED, then its dead-letter copy was refused (or the processor died before it): the
    redelivered receipt was acked as done, and the event had no dead letter to find or redrive."""
    p = processor(store, Operation("flaky", Flaky(ok_from=99), takes_context=True), max_attempts=1)
    assert (await one(p, event())).disposition is Disposition.FAILED
    again = await one(p, event())
    assert (again.disposition, again.attempt, again.again) == (Disposition.FAILED, 1, True)
    assert "redelivered" in again.last_error and store.ok_runs("shop/evt_1") == {}
    assert again.last_error.endswith("flaky: ConnectionError: attempt 1 refused")  # the cause, not only how
    assert verdict(event(), again) == DeadLetter(1, again.last_error, outcome="failed", again=True)


class GatedCommits(MemoryEvents):
    """Each commit waits for its gate; a gate set to an exception fails that commit."""

    def __init__(self) -> None:
        super().__init__()
        self.gates: list[asyncio.Future[None]] = []

    async def commit(self, *args: Any, **kwargs: Any) -> None:
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.gates.append(gate)
        await gate
        await super().commit(*args, **kwargs)


async def test_a_failed_batch_takes_back_only_its_own_decisions() -> None:
    """Batches A and B each decide v40 of one entity (concurrency 2); A's commit fails while B's is still out.
    B's v40 still guards: v35 is STALE. Then both fail at once (an outage): A's retry applies its v30 and v40
    in order, none STALE against a decision that was never committed."""
    store = GatedCommits()
    p = processor(store, Operation("entity", Counter(), takes_context=True))
    a = asyncio.create_task(p.handle([event(event_id="evt_a40", entity_version=40)]))
    await soon_gates(store, 1)
    b = asyncio.create_task(p.handle([event(event_id="evt_b40", entity_version=40, receipt_id="rb")]))
    await soon_gates(store, 2)
    store.gates[0].set_exception(StoreUnavailable("Cassandra: WriteTimeout"))
    with pytest.raises(StoreUnavailable):
        await a
    c = asyncio.create_task(p.handle([event(event_id="evt_c35", entity_version=35)]))
    await soon_gates(store, 3)
    store.gates[2].set_result(None)
    assert (await c)[0].disposition is Disposition.STALE  # B's pending v40 guards it
    store.gates[1].set_exception(StoreUnavailable("Cassandra: WriteTimeout"))
    with pytest.raises(StoreUnavailable):
        await b
    retry = asyncio.create_task(
        p.handle([event(event_id="evt_a30", entity_version=30), event(event_id="evt_a40", entity_version=40)])
    )
    await soon_gates(store, 4)
    store.gates[3].set_result(None)
    assert [h.disposition for h in await retry] == [Disposition.PROCESSED, Disposition.PROCESSED]


async def soon_gates(store: GatedCommits, n: int) -> None:
    for _ in range(200):
        if len(store.gates) >= n:
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"{len(store.gates)} commits out, expected {n}")


def entity_and_deliver(store: MemoryEvents, entity: Counter, deliver: Flaky, max_attempts: int = 3) -> Processor:
    """A processor with the ``entity`` operation and a delivery that runs for stale events too."""
    return processor(
        store,
        Operation("entity", entity, takes_context=True),
        Operation("deliver", deliver, takes_context=True, runs_when_stale=True),
        max_attempts=max_attempts,
    )


async def test_a_stale_event_runs_the_operations_that_run_when_stale_and_moves_no_mark(store: MemoryEvents) -> None:
    """A delivery changes no entity: a stale event is still delivered (and a replay of an old event delivers
    it again), while the guarded operations are skipped with the reason and the entity's mark stays."""
    entity, deliver = Counter(), Flaky(ok_from=1)
    p = entity_and_deliver(store, entity, deliver)
    await one(p, event(event_id="evt_new", entity_version=20))
    old = event(event_id="evt_old", entity_version=10)
    stale = await one(p, old)
    reason = "stale: entity in_1 is at version 20, this event carries 10"
    assert (stale.disposition, stale.last_error, stale.applied) == (Disposition.STALE, reason, 1)
    stored = store.stored["shop/evt_old"]
    assert stored.status is EventStatus.STALE and stored.last_error == reason
    assert [(r.operation, r.outcome, r.error) for r in stored.results] == [
        ("entity", Outcome.SKIPPED, reason),
        ("deliver", Outcome.OK, ""),
    ]
    assert (entity.calls, deliver.calls, store.marks[("shop", "in_1")]) == (1, 2, 20)

    replayed = await one(p, replace(old, receipt_id="r-replay", replay=True))
    assert (replayed.disposition, replayed.attempt) == (Disposition.STALE, 2)
    assert (entity.calls, deliver.calls, store.marks[("shop", "in_1")]) == (1, 3, 20)
    assert store.ok_runs("shop/evt_old") == {"deliver": 2}
    assert store.marked == ["shop/evt_new"]  # the stale passes wrote no version mark


async def test_a_stale_pass_whose_delivery_fails_retries_it_and_ends_stale(store: MemoryEvents) -> None:
    """Its retry runs only what is not done (the delivery; the skipped entity operation stays skipped), and
    the last attempt's failure is FAILED like any pass's."""
    entity, deliver = Counter(), Flaky(ok_from=3)
    p = entity_and_deliver(store, entity, deliver, max_attempts=3)
    await one(p, event(event_id="evt_new", entity_version=20))  # deliver fails: RETRYING, the mark is 20
    old = event(event_id="evt_old", entity_version=10)
    first = await one(p, old)
    assert (first.disposition, first.attempt) == (Disposition.RETRY, 1)
    assert first.last_error == "deliver: ConnectionError: attempt 1 refused"
    assert [store.stored["shop/evt_old"].status] == [EventStatus.RETRYING]
    second = await one(p, old)
    assert (second.disposition, second.attempt) == (Disposition.RETRY, 2)
    third = await one(p, old)
    assert (third.disposition, third.attempt) == (Disposition.STALE, 3)
    assert third.last_error == "stale: entity in_1 is at version 20, this event carries 10"
    assert store.stored["shop/evt_old"].status is EventStatus.STALE
    assert entity.calls == 1 and store.ok_runs("shop/evt_old") == {"deliver": 1}
    assert store.marked == ["shop/evt_new"]

    never = Flaky(ok_from=99)
    q = entity_and_deliver(MemoryEvents(), Counter(), never, max_attempts=2)
    await one(q, event(event_id="evt_new", entity_version=20))
    assert (await one(q, old)).disposition is Disposition.RETRY
    assert (await one(q, old)).disposition is Disposition.FAILED


async def test_only_an_events_first_pass_reports_its_e2e_latency(store: MemoryEvents) -> None:
    """Found in review: a replay or a redrive keeps the event's arrival time, so it reported the event's age
    (days) as its end-to-end latency and filled the alert's p99; a retry's latency is its backoff, on purpose.
    Counted by outcome, not timed."""
    p, _, _ = entity_then_failing(store, max_attempts=3)
    e = event()
    first = await one(p, e)
    assert first.first and verdict(e, first).outcome == "retried"
    retried = await one(p, e)  # the retry: not the first pass
    assert not retried.first
    q = processor(MemoryEvents(), Operation("entity", Counter(), takes_context=True))
    done = await one(q, e)
    ack = verdict(e, done)
    assert isinstance(ack, Ack) and ack.latency_ms is not None and ack.latency_ms >= 0
    replayed = await one(q, replace(e, receipt_id="r-replay", replay=True))
    ack = verdict(e, replayed)
    assert isinstance(ack, Ack) and (ack.outcome, ack.latency_ms) == ("processed", None)


async def test_a_stale_pass_that_retries_guards_its_operations_again(store: MemoryEvents) -> None:
    """Found in review: a stale pass that failed recorded its guarded operations SKIPPED, which counts as done,
    so a retry that was no longer stale (the version that made it stale was taken back) ran none of them and
    still moved the mark. A retrying stale pass records only what it ran; its final pass records the skips."""
    entity, deliver = Counter(), Flaky(ok_from=2)
    p = entity_and_deliver(store, entity, deliver, max_attempts=3)
    old = event(event_id="evt_old", entity_version=10)
    p._decided[("shop", "in_1")] = 20  # a version that will not hold (a batch that never committed it)
    first = await one(p, old)
    assert (first.disposition, first.attempt) == (Disposition.RETRY, 1)
    assert [r.operation for r in store.stored["shop/evt_old"].results] == ["deliver"]
    del p._decided[("shop", "in_1")]
    second = await one(p, old)  # no longer stale: the entity operation runs, and the mark moves
    assert (second.disposition, second.attempt, entity.calls) == (Disposition.PROCESSED, 2, 1)
    assert store.marked == ["shop/evt_old"] and store.marks[("shop", "in_1")] == 10
