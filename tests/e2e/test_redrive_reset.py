"""What a redrive does on the stack's real Cassandra. The reset of an event (``EventStore.reset_attempts``):
the dead-lettered receipt's own FAILED row is reset; a row processed since, or stored under another receipt,
is left alone; an event never committed gets a row without a receipt, which the processor takes for nothing.
The claim of a dead letter (``OperationsStore.set_dead_letter_state`` with ``only_from``), and a replay's
cancel asked through the store."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from typing import Any

import pytest

from switchboard.config import PlatformConfig
from switchboard.model.events import Commit, EventStatus, InboundEvent, OperationResult, Outcome, StoredEvent, now_us
from switchboard.model.operations import DeadLetter, DeadLetterKind, DeadLetterState, ReplayJob, ReplayState
from switchboard.model.subscriptions import Delivery, DeliveryStatus
from switchboard.store import DeliveryStore, EntityStore, EventStore, OperationsStore, StoreSession
from switchboard.store.deliveries import day_of
from switchboard.store.values import ts
from switchboard_devstack.stack import Stack
from tests.unit.factories import event

pytestmark = pytest.mark.integration

DEAD, REDRIVING = DeadLetterState.DEAD, DeadLetterState.REDRIVING


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

            # Replays under another receipt: one that never ran is reset for (the processor applies it as a new
            # replay); one that ran and another replay took over since is not (the processor would take it for
            # a duplicate, and the row would say RETRYING for good).
            r3 = dataclasses.replace(receipt("evt_replays", "r3"), replay=True)
            r2, r4 = dataclasses.replace(r3, receipt_id="r2"), dataclasses.replace(r3, receipt_id="r4")
            for replay, attempt in ((r2, 1), (r3, 2)):  # a run of each (its own run id: its own record)
                ran = [OperationResult("op", Outcome.FAILED, attempt, 0, now_us(), "boom")]
                await events.commit([Commit(StoredEvent(replay, EventStatus.FAILED, ran, attempts=attempt))])
            assert not await events.reset_attempts(r2)
            assert await events.reset_attempts(r4)

            never = receipt("evt_never", "r1")
            assert await events.reset_attempts(never)
            (prior,) = (await events.priors([never])).values()
            assert (prior.receipt_id, prior.status) == ("", EventStatus.RETRYING)
            # Nor is it an event to GetEvent (it answered one of type "", received in 1970, with no body).
            assert await events.get(never.source, never.event_id) is None
            # The reset of an event with no row writes only while there is still none: a first commit between
            # its read and its write was turned back into RETRYING for good (found in review). Its write on the
            # real Cassandra, after such a commit: not applied, the row stays PROCESSED.
            late = receipt("evt_late", "r1")
            q = session.statements.events
            ttl = stack_config.cassandra.ttl_seconds
            await events.commit([Commit(StoredEvent(late, EventStatus.PROCESSED, attempts=1))])
            (applied, *_) = await session.execute(
                q.reset_attempts_new, (late.source, late.event_id, EventStatus.RETRYING.value, ttl)
            )
            assert not applied[0]
            kept = await events.get(late.source, late.event_id)
            assert kept is not None and kept.status is EventStatus.PROCESSED

            # A replay processed the event between the reset's read and its write (found in review): the
            # reset was unconditional, and the row said RETRYING for good. It is a compare-and-set now.
            racing = receipt("evt_race", "r1")
            await events.commit([Commit(StoredEvent(racing, EventStatus.FAILED, attempts=8))])
            replayed = dataclasses.replace(racing, receipt_id="r_replay", replay=True)
            execute = session.execute

            async def replay_right_after_the_read(statement: Any, params: Any = (), *args: Any, **kw: Any) -> Any:
                rows = await execute(statement, params, *args, **kw)
                if statement is events.q.get_event and params[1] == racing.event_id:
                    session.execute = execute  # type: ignore[method-assign]
                    await events.commit([Commit(StoredEvent(replayed, EventStatus.PROCESSED, attempts=9))])
                return rows

            session.execute = replay_right_after_the_read  # type: ignore[method-assign]
            assert not await events.reset_attempts(racing)
            after = await events.get(racing.source, racing.event_id)
            assert after is not None and (after.status, after.event.receipt_id) == (EventStatus.PROCESSED, "r_replay")
        finally:
            session.close()

    asyncio.run(run())


def test_a_dead_letter_is_claimed_once_and_its_marks_expire_with_it(stack: Stack, stack_config: PlatformConfig) -> None:
    """The redrive's claim (DEAD → REDRIVING only from DEAD, a lightweight transaction on Cassandra 2.1), its
    take-over and its give-back; a mark carries the TTL the row has left, not a fresh one."""

    async def run() -> None:
        session = StoreSession.connect(stack_config.cassandra)
        try:
            ops = OperationsStore(session)
            dead_us = now_us() - 3_600_000_000  # dead-lettered an hour ago
            d = DeadLetter("dl_claim_" + secrets.token_hex(6), DeadLetterKind.PROCESSING, dead_us, message_id="m")
            await ops.put_dead_letter(d)
            claims = await asyncio.gather(
                *(ops.set_dead_letter_state(d, REDRIVING, now_us(), only_from=DEAD) for _ in range(3))
            )
            assert sorted(claims) == [False, False, True]
            got = await ops.get_dead_letter(d.id)
            assert got is not None and got.state is REDRIVING and got.redriven_us > 0
            claimed_at = got.redriven_us
            # A take-over compares the claim's time too: only the claim it read is replaced.
            assert not await ops.set_dead_letter_state(
                d, REDRIVING, now_us(), only_from=REDRIVING, only_at_us=claimed_at - 1000
            )
            later = now_us()
            assert await ops.set_dead_letter_state(d, REDRIVING, later, only_from=REDRIVING, only_at_us=claimed_at)
            got = await ops.get_dead_letter(d.id)
            assert got is not None and got.redriven_us // 1000 == later // 1000  # kept to the millisecond
            back = got.redriven_us
            assert await ops.set_dead_letter_state(d, DEAD, now_us(), only_from=REDRIVING, only_at_us=back)
            got = await ops.get_dead_letter(d.id)
            assert got is not None and (got.state, got.redriven_us) == (DEAD, 0)  # given back
            assert not await ops.set_dead_letter_state(d, DEAD, now_us(), only_from=REDRIVING)
            missing = DeadLetter("dl_none_" + secrets.token_hex(6), DeadLetterKind.PROCESSING, dead_us)
            assert not await ops.set_dead_letter_state(missing, REDRIVING, now_us(), only_from=DEAD)
            ks = stack_config.cassandra.keyspace  # a keyspace name the config checked
            rows = await session.execute(
                f"SELECT TTL(state), TTL(message_id) FROM {ks}.dead_letters WHERE kind = %s AND day = %s "  # noqa: S608
                "AND dead_at = %s AND id = %s",
                (d.kind.value, day_of(dead_us), ts(dead_us), d.id),
            )
            state_ttl, row_ttl = rows[0]
            assert abs(state_ttl - row_ttl) <= 5  # an hour less than a fresh TTL, like the row's other cells
            assert state_ttl <= stack_config.cassandra.ttl_seconds - 3_500
        finally:
            session.close()

    asyncio.run(run())


def test_a_replay_cancel_asked_through_the_store_is_seen(stack: Stack, stack_config: PlatformConfig) -> None:
    """How a control replica that does not run a job cancels it: a row its runner polls for."""

    async def run() -> None:
        session = StoreSession.connect(stack_config.cassandra)
        try:
            ops = OperationsStore(session)
            replay_id = "rp_" + secrets.token_hex(8)
            assert not await ops.replay_cancel_requested(replay_id)
            await ops.request_replay_cancel(replay_id, now_us())
            assert await ops.replay_cancel_requested(replay_id)
        finally:
            session.close()

    asyncio.run(run())


def test_a_replay_is_marked_interrupted_only_if_nothing_wrote_it_since_it_was_read(
    stack: Stack, stack_config: PlatformConfig
) -> None:
    """The reader that finds a job silent past the limit marks it FAILED on the condition that its row is still
    as read: a runner that wrote DONE in between keeps it (on Cassandra's lightweight transaction)."""

    async def run() -> None:
        session = StoreSession.connect(stack_config.cassandra)
        try:
            ops = OperationsStore(session)
            job = ReplayJob("rp_" + secrets.token_hex(8), "{}", started_us=now_us() - 600_000_000)
            job.updated_us = now_us() - 300_000_000
            job.resume_from_us = 1_700_000_000_123_000  # where a replay of the rest would start
            await ops.put_replay(job)
            read_at = job.updated_us
            done = dataclasses.replace(job, state=ReplayState.DONE, updated_us=now_us())
            await ops.put_replay(done)  # the runner, after the reader's read
            failed = dataclasses.replace(job, state=ReplayState.FAILED, message="interrupted", updated_us=now_us())
            assert not await ops.mark_replay_interrupted(failed, read_at)
            stored = await ops.get_replay(job.id)
            assert stored is not None and stored.state is ReplayState.DONE
            assert stored.resume_from_us == 1_700_000_000_123_000
            assert await ops.mark_replay_interrupted(failed, done.updated_us)  # nothing wrote it since: marked
            stored = await ops.get_replay(job.id)
            assert stored is not None and (stored.state, stored.message) == (ReplayState.FAILED, "interrupted")
        finally:
            session.close()

    asyncio.run(run())


def test_a_delivery_dead_lettered_without_its_end_is_marked_failed_unless_over(
    stack: Stack, stack_config: PlatformConfig
) -> None:
    """The recorder's mark for a task dead-lettered with its delivery still RETRYING (its handler kept raising):
    FAILED with the reason, no next attempt, the TTL the row had left; a delivered one, or one without a row, is
    left as it is; and what was written after the death wins over a mark that lands later (a copy of an old
    death recorded again after a redrive reset the delivery)."""

    async def run() -> None:
        session = StoreSession.connect(stack_config.cassandra)
        try:
            ops, deliveries = OperationsStore(session), DeliveryStore(session)
            tag, now = secrets.token_hex(4), now_us()

            def delivery(name: str, status: DeliveryStatus) -> Delivery:
                return Delivery(f"dlv_{name}_{tag}", "sub_1", "shop", "evt_1", "invoice.paid", status, 2, 503, "",
                                now, now, now + 60_000_000)  # fmt: skip

            stuck, done = delivery("stuck", DeliveryStatus.RETRYING), delivery("done", DeliveryStatus.DELIVERED)
            redriven = delivery("redriven", DeliveryStatus.RETRYING)
            for d in (stuck, done, redriven):
                await deliveries.record(d)
            ks = stack_config.cassandra.keyspace
            session.session.execute(  # a row recorded long ago: 1,000 s of its retention left
                f"UPDATE {ks}.deliveries USING TTL 1000 SET status = 'retrying', source = 'shop' WHERE id = %s",  # noqa: S608
                (stuck.id,),
            )
            assert await ops.fail_delivery(stuck.id, "dead-lettered (CRASHED): boom", now_us())
            marked = (await deliveries.get_many([stuck.id]))[stuck.id]
            assert (marked.status, marked.last_error, marked.next_attempt_us) == (
                DeliveryStatus.FAILED,
                "dead-lettered (CRASHED): boom",
                0,
            )
            (ttl,) = session.session.execute(
                f"SELECT TTL(status), TTL(source) FROM {ks}.deliveries WHERE id = %s",  # noqa: S608
                (stuck.id,),
            )
            assert ttl[0] <= 1000 and abs(ttl[0] - ttl[1]) <= 5  # the marked cells expire with the row
            assert not await ops.fail_delivery(stuck.id, "again", now_us())  # over already
            assert not await ops.fail_delivery(done.id, "late", now_us())
            assert (await deliveries.get_many([done.id]))[done.id].status is DeliveryStatus.DELIVERED
            assert not await ops.fail_delivery(f"dlv_none_{tag}", "no row", now_us())

            died = now_us()
            await asyncio.sleep(0.01)
            assert await ops.reset_delivery(redriven.id, now_us())  # redriven after it died
            await ops.fail_delivery(redriven.id, "a copy of the old death", died)
            assert (await deliveries.get_many([redriven.id]))[redriven.id].status is DeliveryStatus.PENDING
        finally:
            session.close()

    asyncio.run(run())
