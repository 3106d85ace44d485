"""A replay job's runner: a cancel during its pacing pause ends it at once, on this replica or another one
(it waited for the whole pause, and a cancel on a replica that did not run the job did nothing); a pace it
cannot keep is refused (NaN turned pacing off, 1e-9 never ended); its end is written again if the first write
fails (the job used to read as interrupted); and checking what is done reads a bounded chunk (a job of
100,000 events asked for all of them twice a second). Found in review. Fakes stand in for the store and the
broker: what is checked is the runner's logic."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import pytest

import control_service.replay as replay_module
from control_service.replay import FORCED_CAP_FACTOR, WAIT_CHUNK, Limits, ReplayManager, Selection
from switchboard.errors import BrokerUnavailable, InvalidRequest, StoreUnavailable
from switchboard.model.events import EventStatus, EventSummary, InboundEvent, Prior, StoredEvent
from switchboard.model.operations import ReplayJob, ReplayState
from tests.unit.factories import event

DEFAULTS = Limits()
SEL = Selection(source="shop", start_us=1_000_000, end_us=2_000_000)


class Events:
    def __init__(self, n: int, *, done: bool = True) -> None:
        self.summaries = [
            EventSummary("shop", f"evt_{i}", "invoice.paid", 1_500_000, EventStatus.PROCESSED, "r0") for i in range(n)
        ]
        self.done = done
        self.asked: list[int] = []
        self.published: dict[str, str] = {}  # key -> receipt id of the replay

    async def list(self, source: str, start_us: int, end_us: int, limit: int, after: Any) -> Any:
        start = after or 0
        page = self.summaries[start : start + limit]
        return page, (start + limit if start + limit < len(self.summaries) else None)

    async def get(self, source: str, event_id: str) -> StoredEvent:
        return StoredEvent(event(event_id=event_id, body=b"x" * 1000), EventStatus.PROCESSED)

    async def priors(self, events: Sequence[InboundEvent]) -> dict[str, Prior]:
        self.asked.append(len(events))
        if not self.done:
            return {}
        return {e.key: Prior(self.published[e.key], EventStatus.PROCESSED, 1) for e in events}

    async def publish_event(self, e: InboundEvent) -> None:
        self.published[e.key] = e.receipt_id


class Jobs:
    """One store shared by the replicas of a test."""

    def __init__(self, fail_puts: int = 0) -> None:
        self.rows: dict[str, ReplayJob] = {}
        self.cancels: set[str] = set()
        self.fail_puts = fail_puts

    async def put_replay(self, job: ReplayJob) -> None:
        if job.state is not ReplayState.RUNNING and self.fail_puts:
            self.fail_puts -= 1
            raise StoreUnavailable("the store timed out")
        self.rows[job.id] = dataclasses.replace(job)

    async def get_replay(self, replay_id: str) -> ReplayJob | None:
        row = self.rows.get(replay_id)
        return dataclasses.replace(row) if row else None

    async def mark_replay_interrupted(self, job: ReplayJob, read_updated_us: int) -> bool:
        row = self.rows.get(job.id)
        if row is None or row.updated_us != read_updated_us:
            return False  # written since it was read (the lightweight transaction's condition)
        self.rows[job.id] = dataclasses.replace(job)
        return True

    async def request_replay_cancel(self, replay_id: str, at_us: int) -> None:
        self.cancels.add(replay_id)

    async def replay_cancel_requested(self, replay_id: str) -> bool:
        return replay_id in self.cancels


def manager(events: Events, jobs: Jobs, limits: Limits = DEFAULTS) -> ReplayManager:
    return ReplayManager(events, None, None, jobs, events, limits)  # type: ignore[arg-type]


async def until(check: Any, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not reached in time")


async def test_a_cancel_during_the_pacing_pause_ends_the_job_at_once() -> None:
    events, jobs = Events(5), Jobs()
    replicas = manager(events, jobs)
    job = await replicas.start(Selection(**{**SEL.__dict__, "rate_per_second": 0.1}))  # one per 10 s
    await until(lambda: job.queued == 1)
    started = asyncio.get_running_loop().time()
    cancelled = await replicas.cancel(job.id)
    assert asyncio.get_running_loop().time() - started < 5  # not after the 10 s pause
    assert cancelled.state is ReplayState.CANCELLED and len(events.published) == 1


async def test_a_cancel_asked_of_another_replica_reaches_the_runner() -> None:
    events, jobs = Events(5), Jobs()
    runner, other = manager(events, jobs), manager(events, jobs)
    job = await runner.start(Selection(**{**SEL.__dict__, "rate_per_second": 0.1}))
    await until(lambda: job.queued == 1)
    cancelled = await other.cancel(job.id)  # the store says RUNNING: the other replica asks through it
    assert cancelled.state is ReplayState.CANCELLED
    assert jobs.rows[job.id].state is ReplayState.CANCELLED and len(events.published) == 1


@pytest.mark.parametrize("rate", [math.nan, math.inf, -1.0, 1e-9, 0.05, 101.0])
async def test_a_pace_that_cannot_be_kept_is_refused(rate: float) -> None:
    jobs = Jobs()
    with pytest.raises(InvalidRequest) as caught:
        await manager(Events(1), jobs, Limits(rate_per_second=100.0)).start(
            Selection(**{**SEL.__dict__, "rate_per_second": rate})
        )
    assert caught.value.reason == "FIELD_INVALID" and jobs.rows == {}


async def test_the_end_of_a_job_is_written_again_when_the_first_write_fails() -> None:
    events, jobs = Events(3), Jobs(fail_puts=2)
    job = await manager(events, jobs).start(SEL)
    await until(lambda: job.id in jobs.rows and jobs.rows[job.id].state is ReplayState.DONE)
    assert (jobs.rows[job.id].done, jobs.rows[job.id].queued) == (3, 3)


async def test_checking_what_is_done_reads_a_chunk_at_a_time() -> None:
    n = WAIT_CHUNK * 2 + 10
    events, jobs = Events(n), Jobs()
    job = await manager(events, jobs, Limits(rate_per_second=100_000.0)).start(SEL)
    await until(lambda: job.state is ReplayState.DONE, seconds=20)
    assert job.done == n and max(events.asked) <= WAIT_CHUNK


async def test_events_that_take_long_do_not_hide_the_ones_behind_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """Checking only the oldest chunk, events still retrying filled it and every event behind them went
    uncounted until the job gave up as idle (found in review). The check goes round instead."""
    n = WAIT_CHUNK * 4
    events, jobs = Events(n), Jobs()
    slow = {f"shop/evt_{i}" for i in range(WAIT_CHUNK)}  # the oldest chunk: still retrying

    async def priors(batch: Sequence[InboundEvent]) -> dict[str, Prior]:
        events.asked.append(len(batch))
        status = {k: EventStatus.RETRYING if k in slow else EventStatus.PROCESSED for k in events.published}
        return {e.key: Prior(events.published[e.key], status[e.key], 1) for e in batch}

    monkeypatch.setattr(events, "priors", priors)
    job = await manager(events, jobs, Limits(rate_per_second=100_000.0)).start(SEL)
    await until(lambda: job.done == n - WAIT_CHUNK, seconds=20)
    slow.clear()  # the slow ones end too
    await until(lambda: job.state is ReplayState.DONE, seconds=20)
    assert job.done == n and max(events.asked) <= WAIT_CHUNK


async def test_beats_go_on_every_heartbeat_while_reading_cancels_fails() -> None:
    """The beat and the cancel watch are two loops: a beat shorter than the watch's second is kept, and a
    failing cancel read holds no beat back (found in review; other replicas would take the job for dead)."""

    class NoCancels(Jobs):
        async def replay_cancel_requested(self, replay_id: str) -> bool:
            raise StoreUnavailable("the read timed out")

    events, jobs = Events(50), NoCancels()
    writes: list[int] = []
    put = jobs.put_replay

    async def counting(job: ReplayJob) -> None:
        writes.append(job.queued)
        await put(job)

    jobs.put_replay = counting  # type: ignore[method-assign]
    limits = Limits(stale_after_us=1_200_000)  # a beat every 0.2 s
    runner = manager(events, jobs, limits)
    job = await runner.start(Selection(**{**SEL.__dict__, "rate_per_second": 1.0}))
    await asyncio.sleep(1.1)
    assert len(writes) >= 5  # the start, then a beat every 0.2 s
    assert (await runner.cancel(job.id)).state is ReplayState.CANCELLED


class Flaky(Events):
    """The 4th read and the 2nd publish fail once, as a Cassandra timeout and a broker reconnect would."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.reads = self.publishes = 0
        self.receipts: list[str] = []

    async def get(self, source: str, event_id: str) -> StoredEvent:
        self.reads += 1
        if self.reads == 4:
            raise StoreUnavailable("the store timed out")
        return await super().get(source, event_id)

    async def publish_event(self, e: InboundEvent) -> None:
        self.publishes += 1
        self.receipts.append(e.receipt_id)
        if self.publishes == 2:
            raise BrokerUnavailable("message broker is not connected")
        await super().publish_event(e)


async def test_a_job_waits_out_a_store_timeout_and_a_broker_reconnect(monkeypatch: pytest.MonkeyPatch) -> None:
    """Found in review: the first StoreUnavailable or BrokerUnavailable ended the job FAILED (a 17-minute job
    on any 2 s Cassandra timeout), and re-running it replayed again what it had sent. A publish tried again
    carries the same receipt (one that reached the broker after all is a redelivery, not a second replay)."""
    monkeypatch.setattr(replay_module, "OUTAGE_PAUSES", (0.01, 0.01))
    events, jobs = Flaky(6), Jobs()
    job = await manager(events, jobs).start(SEL)
    await until(lambda: job.state is not ReplayState.RUNNING)
    assert (job.state, job.matched, job.queued, job.done, job.failed) == (ReplayState.DONE, 6, 6, 6, 0)
    assert len(events.published) == 6 and events.receipts[1] == events.receipts[2]  # the same copy, again


async def test_a_single_replay_whose_end_is_not_written_at_first_is_not_reported_failed() -> None:
    """Found in review: the replay was published first and its job row written after; a failed write answered
    UNAVAILABLE for a replay that had gone out, and the client's retry sent it twice."""
    events, jobs = Events(1), Jobs(fail_puts=1)
    replay_id = await manager(events, jobs).replay_event("shop", "evt_0", "", "test")
    assert len(events.published) == 1 and jobs.rows[replay_id].state is ReplayState.DONE
    assert (jobs.rows[replay_id].matched, jobs.rows[replay_id].queued) == (1, 1)


class SlowOutage(Events):
    """The progress check fails ``times`` times, each after ``seconds`` (a store timing out), then answers."""

    def __init__(self, n: int, times: int, seconds: float) -> None:
        super().__init__(n)
        self.times, self.seconds = times, seconds
        self.answered = 0

    async def priors(self, events: Sequence[InboundEvent]) -> dict[str, Prior]:
        if self.times:
            self.times -= 1
            await asyncio.sleep(self.seconds)
            raise StoreUnavailable("the store timed out")
        self.answered += 1
        if self.answered == 1:
            return {}  # the store is back; the replayed events are processed a moment later
        return await super().priors(events)


async def test_time_spent_waiting_out_an_outage_is_not_time_without_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    """Found in the review of the outage retries: the minute waited out counted toward "a minute without
    progress", so the job stopped waiting and ended DONE with its events unfinished."""
    monkeypatch.setattr(replay_module, "OUTAGE_PAUSES", (0.01,) * 3)
    loop_time = asyncio.get_running_loop().time
    skew = [0.0]
    monkeypatch.setattr(asyncio.get_running_loop(), "time", lambda: loop_time() + skew[0])
    events = SlowOutage(2, times=3, seconds=0.1)
    real_priors = events.priors

    async def slow_priors(batch: Sequence[InboundEvent]) -> dict[str, Prior]:
        if events.times:
            skew[0] += 25  # each failed check "takes" 25 s of the loop's clock
        return await real_priors(batch)

    events.priors = slow_priors  # type: ignore[method-assign,assignment]
    job = await manager(events, Jobs()).start(SEL)
    await until(lambda: job.state is not ReplayState.RUNNING)
    assert (job.state, job.queued, job.done, job.failed, job.message) == (ReplayState.DONE, 2, 2, 0, "")


async def test_a_cancel_while_waiting_out_an_outage_ends_the_job_cancelled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replay_module, "OUTAGE_PAUSES", (5.0,))
    events, jobs = SlowOutage(1, times=5, seconds=0.0), Jobs()
    replicas = manager(events, jobs)
    job = await replicas.start(SEL)
    await until(lambda: job.queued == 1)
    await asyncio.sleep(0.05)  # its check failed and it pauses for 5 s
    cancelled = await replicas.cancel(job.id)
    assert cancelled.state is ReplayState.CANCELLED and cancelled.message == ""


async def test_a_real_failure_racing_a_cancel_is_still_a_failure() -> None:
    """Only an outage waited out when the cancel came ends CANCELLED; any other error is the job's failure
    (found in review: every error during a cancel was recorded CANCELLED, without a log). The job's message,
    shown to callers, is the error's public text, without the driver's detail."""
    events, jobs = Events(3), Jobs()
    replays = manager(events, jobs)

    async def refused(source: str, event_id: str) -> StoredEvent:
        for _, _, cancel in replays._running.values():
            cancel.set()  # the cancel arrives just as the store refuses the read
        raise InvalidRequest("refused by 10.20.30.40", reason="STORE_REFUSED", public="a value the store refuses")

    events.get = refused  # type: ignore[method-assign]
    job = await replays.start(SEL)
    await until(lambda: job.state is not ReplayState.RUNNING)
    assert (job.state, job.message) == (
        ReplayState.FAILED,
        "a value the store refuses; 0 of 1 matched events had been enqueued; start a new replay for the rest",
    )


async def test_force_lifts_the_event_cap_tenfold_not_away() -> None:
    """Every enqueued event stays listed until it is done: with force, any max_events was taken (the cap lifted
    to a billion), and a forced range of tens of millions of events held them all."""
    events, jobs = Events(40), Jobs()
    limits = Limits(rate_per_second=100_000.0, max_events=3)
    forced = await manager(events, jobs, limits).start(dataclasses.replace(SEL, force=True, max_events=30))
    await until(lambda: forced.state is ReplayState.DONE)
    assert forced.queued == 3 * FORCED_CAP_FACTOR
    for force, asked in ((True, 31), (False, 4)):
        with pytest.raises(InvalidRequest, match="max_events is above") as refused:
            await manager(events, jobs, limits).start(dataclasses.replace(SEL, force=force, max_events=asked))
        assert refused.value.reason == "TOO_MANY_EVENTS"
    default = await manager(events, jobs, limits).start(dataclasses.replace(SEL, force=True))
    await until(lambda: default.state is ReplayState.DONE)
    assert default.queued == 3  # force without max_events: the configured cap


def slow_publish(events: Events) -> asyncio.Event:
    """Makes ``events``' publishes wait for the event returned (the broker's confirm)."""
    confirmed = asyncio.Event()
    publish = events.publish_event

    async def waiting(e: InboundEvent) -> None:
        await confirmed.wait()
        await publish(e)

    events.publish_event = waiting  # type: ignore[method-assign]
    return confirmed


async def test_a_caller_that_goes_away_does_not_cut_a_single_replay_from_the_record_of_its_end() -> None:
    """The caller's deadline passed (or it disconnected) while the publish waited for the broker's confirm:
    gRPC cancels the handler. The publish went out, and the job used to stay RUNNING and read later as FAILED,
    "0 of 1 matched events had been enqueued", so an operator sent it again."""
    events, jobs = Events(1), Jobs()
    confirmed = slow_publish(events)
    caller = asyncio.create_task(manager(events, jobs).replay_event("shop", "evt_0", "", "test"))
    await until(lambda: len(jobs.rows) == 1)
    caller.cancel()
    await asyncio.sleep(0.05)
    confirmed.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    (row,) = jobs.rows.values()
    await until(lambda: jobs.rows[row.id].state is ReplayState.DONE)
    assert jobs.rows[row.id].queued == 1 and events.published == {"shop/evt_0": events.published["shop/evt_0"]}


async def test_the_pace_is_the_replicas_shared_by_its_jobs() -> None:
    """Paced each on its own, ten jobs put ten times the configured pace into the processors."""
    events, jobs = Events(20), Jobs()
    replicas = manager(events, jobs, Limits(rate_per_second=50.0))
    started = asyncio.get_running_loop().time()
    both = [await replicas.start(SEL), await replicas.start(SEL)]
    await until(lambda: all(j.queued == 20 for j in both), seconds=10)
    assert asyncio.get_running_loop().time() - started >= 39 / 50  # 40 events at 50/s, not 20 at 50/s each


async def test_a_slow_job_does_not_hold_back_the_others() -> None:
    events, jobs = Events(20), Jobs()
    replicas = manager(events, jobs, Limits(rate_per_second=100.0))
    slow = await replicas.start(Selection(**{**SEL.__dict__, "rate_per_second": 0.1}))  # one per 10 s
    fast = await replicas.start(SEL)
    await until(lambda: fast.queued == 20, seconds=3)  # 0.2 s at 100/s, not 10 s behind each slow slot
    assert slow.queued <= 1
    await replicas.cancel(slow.id)


async def test_a_job_that_ends_while_it_is_marked_interrupted_keeps_its_end() -> None:
    """Its runner was silent past the limit (store trouble), then wrote DONE right after a reader found the row
    stale: the reader's unconditional FAILED overwrote it for good."""
    jobs = Jobs()
    stale = ReplayJob("rp_1", "{}", state=ReplayState.RUNNING, started_us=1, updated_us=2, queued=3, matched=3)
    jobs.rows["rp_1"] = stale
    read = jobs.get_replay

    async def read_then_done(replay_id: str) -> ReplayJob | None:
        found = await read(replay_id)
        jobs.rows["rp_1"] = dataclasses.replace(stale, state=ReplayState.DONE, updated_us=3)  # the runner, just after
        return found

    jobs.get_replay = read_then_done  # type: ignore[method-assign]
    job = await manager(Events(0), jobs).get("rp_1")
    assert job.state is ReplayState.DONE and jobs.rows["rp_1"].state is ReplayState.DONE


async def test_a_silent_job_is_marked_interrupted() -> None:
    jobs = Jobs()
    jobs.rows["rp_1"] = ReplayJob("rp_1", "{}", state=ReplayState.RUNNING, started_us=1, updated_us=2)
    job = await manager(Events(0), jobs).get("rp_1")
    assert job.state is ReplayState.FAILED and jobs.rows["rp_1"].state is ReplayState.FAILED
    assert "interrupted" in jobs.rows["rp_1"].message


async def test_a_job_that_stops_before_the_end_says_where_a_replay_of_the_rest_starts() -> None:
    """It said "start a new replay for the rest" and nothing recorded where it had stopped, so the rest was the
    whole range again: every event sent twice. The received time of the last event enqueued is kept with the
    job (a selection is listed oldest first) and named in its message."""
    events, jobs = Events(5), Jobs()
    events.summaries = [
        dataclasses.replace(x, received_us=1_700_000_000_123_000 + i) for i, x in enumerate(events.summaries)
    ]
    got = events.get
    calls = [0]

    async def refuses_the_fourth(source: str, event_id: str) -> StoredEvent:
        calls[0] += 1
        if calls[0] == 4:
            raise InvalidRequest("a value the store refuses", reason="STORE_REFUSED")
        return await got(source, event_id)

    events.get = refuses_the_fourth  # type: ignore[method-assign]
    job = await manager(events, jobs, Limits(rate_per_second=100_000.0)).start(SEL)
    await until(lambda: job.state is not ReplayState.RUNNING)
    assert job.state is ReplayState.FAILED and job.resume_from_us == 1_700_000_000_123_002  # the third's
    assert job.message == (
        "a value the store refuses; 3 of 4 matched events had been enqueued; for the rest, start a new replay with"
        " start_time 2023-11-14T22:13:20.123Z (the events received in that millisecond are sent again)"
    )
    assert jobs.rows[job.id].resume_from_us == 1_700_000_000_123_002  # kept with the job for any replica


async def test_an_interrupted_job_read_from_the_store_says_where_the_rest_starts() -> None:
    jobs = Jobs()
    jobs.rows["rp_1"] = ReplayJob(
        "rp_1", "{}", state=ReplayState.RUNNING, started_us=1, updated_us=2, queued=2, matched=9,
        resume_from_us=1_700_000_000_123_000,
    )  # fmt: skip
    job = await manager(Events(0), jobs).get("rp_1")
    assert job.state is ReplayState.FAILED
    assert job.message.endswith(
        "2 of 9 matched events had been enqueued; for the rest, start a new replay with start_time"
        " 2023-11-14T22:13:20.123Z (the events received in that millisecond are sent again)"
    )


async def test_the_replicas_pace_is_spent_on_events_sent_not_on_those_a_condition_leaves_out() -> None:
    """Taken before the read, a subscription's condition that took 1 event in 10 made the replay 10 times
    slower than its pace."""
    events, jobs = Events(40), Jobs()
    replicas = manager(events, jobs, Limits(rate_per_second=20.0))
    sent: list[str] = []

    async def enqueue(
        original: InboundEvent, replay_id: str, subscription_id: str, cancel: asyncio.Event | None = None
    ) -> InboundEvent:
        sent.append(original.event_id)
        return original

    class OneInTen:
        def matches_meta(self, source: str, event_type: str) -> bool:
            return True

    condition = OneInTen()
    taken = iter([True, *[False] * 9] * 4)
    condition.matches_body = lambda source, event_type, body: next(taken)  # type: ignore[attr-defined]
    replicas._enqueue = enqueue  # type: ignore[method-assign]
    started = asyncio.get_running_loop().time()
    await replicas._select_and_enqueue(ReplayJob("rp_x", "{}"), SEL, asyncio.Event(), condition)  # type: ignore[arg-type]
    assert len(sent) == 4
    assert asyncio.get_running_loop().time() - started < 1.0  # 4 events at 20/s, not 40 reads at 20/s (2 s)


async def test_a_stopping_service_waits_for_a_single_replay_in_flight() -> None:
    """Its caller gone, the shielded publish went on, but close() returned at once and the publisher and the
    store were closed under it: the job read later as FAILED with nothing enqueued."""
    events, jobs = Events(1), Jobs()
    confirmed = slow_publish(events)
    replicas = manager(events, jobs)
    caller = asyncio.create_task(replicas.replay_event("shop", "evt_0", "", "test"))
    await until(lambda: len(jobs.rows) == 1)
    caller.cancel()
    asyncio.get_running_loop().call_later(0.2, confirmed.set)
    await replicas.close()
    (row,) = jobs.rows.values()
    assert row.state is ReplayState.DONE and len(events.published) == 1


async def test_a_replay_may_start_at_the_epoch() -> None:
    """A start_time of 1970-01-01T00:00:00Z read as missing (the epoch is a time, not "unset")."""
    events, jobs = Events(2), Jobs()
    job = await manager(events, jobs, Limits(rate_per_second=100_000.0)).start(dataclasses.replace(SEL, start_us=0))
    await until(lambda: job.state is ReplayState.DONE)
    assert job.queued == 2
    with pytest.raises(InvalidRequest, match="needs start_time and end_time"):
        await manager(events, jobs).start(dataclasses.replace(SEL, start_us=None))


async def test_a_replay_carries_none_of_the_headers_ingest_no_longer_stores() -> None:
    """An event stored before a credential's name was covered by ingest's rule kept the credential (and a
    signature header); its replay published it again and the processor stored it with a fresh retention,
    though the README says such headers expire with the old rows (found in review)."""
    stored = {
        "stripe-signature": "t=1,v1=ab",
        "x-api-key": "k-123",
        "x-webhook-token": "t-456",
        "user-agent": "Stripe/1.0",
        "x-request-id": "r1",
    }
    published: list[InboundEvent] = []

    class Old(Events):
        async def get(self, source: str, event_id: str) -> StoredEvent:
            return StoredEvent(event(event_id=event_id, headers=stored), EventStatus.PROCESSED)

        async def publish_event(self, e: InboundEvent) -> None:
            published.append(e)
            await super().publish_event(e)

    events, jobs = Old(1), Jobs()
    await manager(events, jobs).replay_event("shop", "evt_0", "", "test")
    (replayed,) = published
    assert replayed.headers == {"user-agent": "Stripe/1.0", "x-request-id": "r1"}
