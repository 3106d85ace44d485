"""Replays: stored events processed again on purpose, or delivered again to one subscription.

A replayed event travels as a new receipt (its own receipt id) with ``replay = true`` and the replay's id:
the processor applies it again (every operation runs, as the event's next attempt; never a duplicate), its
fan-out delivers it anew (delivery ids of its own), and the stored event records the replay id. Replaying to
one subscription publishes one delivery task straight to the deliveries stream.

A selection is a job: events of one source in a closed time range (at most ``max_range`` unless ``force``),
optionally by type globs and status, at most ``max_events``, enqueued at ``rate`` events per second at most
so that a replay never starves live traffic. The job runs in the control service whoever watches it; its
progress (matched, queued, done, failed) is kept in the store and streamed to callers; it can be cancelled,
on any replica: one that does not run it asks through the store (``replay_cancels``), which the runner reads
every ``PROGRESS_EVERY``.

**Interrupted jobs.** While a job runs, its control service writes it every ``heartbeat`` (its progress and
``updated_us``). A job still RUNNING in the store with no write for ``stale_after`` lost its runner (the
service was killed, or stopped before it could record the end): the next read of it (GetReplay, a watcher,
any replica) records it FAILED with what it had enqueued, so that nobody waits on it forever. A service
stopped gracefully records its running jobs FAILED itself. An interrupted job is never resumed: its events
may have been enqueued in part, and a replay applies them again, so a second run is the caller's decision.
A runner alive but unable to write to the store for longer than ``stale_after`` is reported FAILED meanwhile,
and its next write (a heartbeat or the end) replaces that with what it really did.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Protocol, TypeVar

from switchboard.delivery.filters import EventTypes, Filter
from switchboard.delivery.ids import delivery_id
from switchboard.errors import FailedPrecondition, InvalidRequest, NotFound, SwitchboardError, Unavailable
from switchboard.headers import never_stored
from switchboard.model.events import (
    MAX_KEY_BYTES,
    EventStatus,
    EventSummary,
    InboundEvent,
    Prior,
    StoredEvent,
    key_bytes,
    new_receipt_id,
    now_us,
)
from switchboard.model.operations import ReplayJob, ReplayState
from switchboard.model.subscriptions import FINAL_DELIVERY, Delivery, DeliveryTask, Subscription
from switchboard.pagination import check_range
from switchboard.runtime.loop import after_pauses

log = logging.getLogger(__name__)

T = TypeVar("T")

TERMINAL = frozenset({EventStatus.PROCESSED, EventStatus.STALE, EventStatus.FAILED})
PAGE = 500
PROGRESS_EVERY = 1.0
# The slowest pace a job may ask for (events per second): one event every ten seconds.
MIN_RATE = 0.1
# With ``force``, a job may enqueue this many times ``control.replay_max_events`` (never without a bound).
FORCED_CAP_FACTOR = 10
# The longest reason a replay may give (characters): it is kept in the job's row, written again every second.
MAX_REASON = 1024
# How many of a job's enqueued events one read checks for being done, and the pause between two reads.
WAIT_CHUNK = 256
CHUNK_PAUSE = 0.05
# How long CancelReplay waits for the job to end (on this replica or another one).
CANCEL_WAIT_SECONDS = 10.0
# The final write of a job that ended: tried again after these pauses before giving up (the job then reads
# as interrupted once stale: FAILED with what it had enqueued).
FINAL_WRITE_PAUSES = (0.2, 0.5, 1.0, 2.0, 4.0)
# How long ReplayEvent tries to record the end of a replay that went out before it answers anyway (the CLI
# waits 30 s; the full retries could take a minute, and a caller timing out would send the replay again).
SINGLE_END_SECONDS = 8.0
# How long a stopping service waits for single-event replays in flight: a publish's confirm, then their end.
SINGLE_CLOSE_SECONDS = 15.0
# A job's reads and publishes are tried again after these pauses while the store or the broker is unavailable
# (about a minute in all; the heartbeat goes on meanwhile).
OUTAGE_PAUSES = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)


class Events(Protocol):
    async def get(self, source: str, event_id: str) -> StoredEvent | None: ...
    async def list(
        self, source: str, start_us: int, end_us: int, limit: int, after: tuple[int, int, str] | None
    ) -> tuple[list[EventSummary], tuple[int, int, str] | None]: ...
    async def priors(self, events: Sequence[InboundEvent]) -> dict[str, Prior]: ...


class Deliveries(Protocol):
    async def get_many(self, ids: Sequence[str]) -> dict[str, Delivery]: ...


class Subscriptions(Protocol):
    async def get(self, subscription_id: str) -> Subscription | None: ...


class Jobs(Protocol):
    async def put_replay(self, job: ReplayJob) -> None: ...
    async def get_replay(self, replay_id: str) -> ReplayJob | None: ...
    async def mark_replay_interrupted(self, job: ReplayJob, read_updated_us: int) -> bool: ...
    async def request_replay_cancel(self, replay_id: str, at_us: int) -> None: ...
    async def replay_cancel_requested(self, replay_id: str) -> bool: ...


class Publisher(Protocol):
    async def publish_event(self, event: InboundEvent) -> None: ...
    async def publish_task(self, task: DeliveryTask) -> None: ...


@dataclass(frozen=True)
class Limits:
    max_range_us: int = 7 * 86_400 * 1_000_000
    max_events: int = 100_000
    rate_per_second: float = 100.0
    # A RUNNING job not written for this long has lost its runner; runners write every sixth of it.
    stale_after_us: int = 60 * 1_000_000
    # The store's retention (cassandra.ttl_seconds): the longest range it lists, forced or not (check_range).
    store_ttl_seconds: int = 30 * 86_400

    @property
    def heartbeat_seconds(self) -> float:
        return self.stale_after_us / 6e6


def silent_us(job: ReplayJob, now: int) -> int:
    """How long nothing wrote ``job``; jobs written before heartbeats existed count from their start."""
    return now - (job.updated_us or job.started_us)


def interrupted(job: ReplayJob, now: int, stale_after_us: int) -> bool:
    """True if ``job`` (as read from the store) says RUNNING but nothing wrote it for ``stale_after_us``: the
    service that ran it is gone."""
    return job.state is ReplayState.RUNNING and silent_us(job, now) > stale_after_us


def _mark_interrupted(job: ReplayJob, detail: str = "") -> None:
    """``job`` FAILED, its message saying how much it had enqueued (``detail`` follows "stopped")."""
    job.state = ReplayState.FAILED
    job.message = f"interrupted: its control service stopped{detail}; {the_rest(job)}"


def the_rest(job: ReplayJob) -> str:
    """What a job that stopped before the end of its selection had enqueued, and where a new replay of the rest
    starts: the received time of the last event it enqueued (a selection is listed oldest first). Only "start a
    new replay for the rest" before, and the whole range was replayed again, every event sent twice."""
    done = f"{job.queued} of {job.matched} matched events had been enqueued"
    if not job.resume_from_us:
        return f"{done}; start a new replay for the rest"
    at = dt.datetime.fromtimestamp(job.resume_from_us / 1e6, dt.UTC).isoformat(timespec="milliseconds")
    return (
        f"{done}; for the rest, start a new replay with start_time {at.replace('+00:00', 'Z')} (the events received"
        " in that millisecond are sent again)"
    )


@dataclass(frozen=True)
class Selection:
    source: str
    start_us: int | None
    end_us: int | None
    event_types: tuple[str, ...] = ()
    status: EventStatus | None = None
    subscription_id: str = ""
    reason: str = ""
    dry_run: bool = False
    max_events: int = 0
    rate_per_second: float = 0.0
    force: bool = False


class ReplayManager:
    def __init__(
        self,
        events: Events,
        deliveries: Deliveries,
        subscriptions: Subscriptions,
        jobs: Jobs,
        publisher: Publisher,
        limits: Limits,
    ) -> None:
        self.events = events
        self.deliveries = deliveries
        self.subscriptions = subscriptions
        self.jobs = jobs
        self.publisher = publisher
        self.limits = limits
        self._running: dict[str, tuple[ReplayJob, asyncio.Task[None], asyncio.Event]] = {}
        self._singles: set[asyncio.Future[None]] = set()  # single-event replays, shielded from their callers
        self._next_slot = 0.0  # (loop time) when this replica's jobs may send their next event

    async def replay_event(self, source: str, event_id: str, subscription_id: str, reason: str) -> str:
        for field, value in (("source", source), ("event_id", event_id)):
            if not value:  # it was answered NOT_FOUND, as if an event could have no source or id
                raise InvalidRequest(f"{field} is required", reason="FIELD_REQUIRED", metadata={"field": field})
        if key_bytes(source, event_id) > MAX_KEY_BYTES:
            raise InvalidRequest(
                f"source and event_id are longer than any stored event's ({MAX_KEY_BYTES} bytes together)",
                reason="EVENT_ID_INVALID",
                metadata={"field": "event_id"},
            )
        _check_reason(reason)
        stored = await self.events.get(source, event_id)
        if stored is None:
            raise NotFound(
                f"no event {event_id!r} from source {source!r}",
                reason="EVENT_NOT_FOUND",
                metadata={"source": source[:64], "event_id": event_id[:255]},
            )
        if subscription_id:
            target = await self._target(subscription_id)
            e = stored.event
            if not target.matches_body(e.source, e.event_type, e.body):
                raise FailedPrecondition(
                    f"subscription {subscription_id!r} does not take event {event_id!r} (its sources, event types "
                    "or condition): a replay to it sends only what it would have been sent",
                    reason="SUBSCRIPTION_NOT_MATCHING",
                    metadata={"subscription_id": subscription_id[:64], "event_id": event_id[:255]},
                )
        replay_id = _new_id()
        now = now_us()
        job = ReplayJob(
            replay_id,
            json.dumps({"source": source, "event_id": event_id, "subscription_id": subscription_id, "reason": reason}),
            started_us=now,
        )
        job.matched = 1
        # Recorded before the publish, and the end after it is never raised: the publish went first and a failed
        # write answered UNAVAILABLE for a replay that had gone out, which a client retry sent twice.
        await self._put(job)
        # Shielded: a caller that goes away (its deadline, a disconnect) no longer cuts the publish and the
        # record of its end apart; cut after the publish, the job read later as FAILED with nothing enqueued.
        sending = asyncio.ensure_future(self._send_single(job, stored.event, subscription_id))
        self._singles.add(sending)
        sending.add_done_callback(self._singles.discard)
        await asyncio.shield(sending)
        log.info("event replayed", extra={"replay": replay_id, "event": stored.event.key, "reason": reason[:200]})
        return replay_id

    async def _send_single(self, job: ReplayJob, event: InboundEvent, subscription_id: str) -> None:
        """``replay_event``'s publish and the record of its end (each end within ``SINGLE_END_SECONDS``)."""
        try:
            await self._enqueue(event, job.id, subscription_id)
        except SwitchboardError as exc:
            job.state, job.message, job.failed, job.finished_us = ReplayState.FAILED, exc.public, 1, now_us()
            await self._put_single_end(job)
            raise
        job.queued = 1
        job.state, job.finished_us = ReplayState.DONE, now_us()
        await self._put_single_end(job)  # the replay went out: answered whatever the store does now

    async def _put_single_end(self, job: ReplayJob) -> None:
        try:
            async with asyncio.timeout(SINGLE_END_SECONDS):
                await self._put_final(job)
        except TimeoutError:
            log.error("replay end not recorded: it will read as interrupted", extra={"replay": job.id})

    async def start(self, sel: Selection) -> ReplayJob:
        """Validates the selection and starts the job; returns it RUNNING (a dry run too: it ends DONE once counted)."""
        if not sel.source:
            raise InvalidRequest("source is required", reason="FIELD_REQUIRED", metadata={"field": "source"})
        if len(sel.source.encode()) > MAX_KEY_BYTES:
            raise InvalidRequest(
                f"source is longer than any stored event's ({MAX_KEY_BYTES} bytes)",
                reason="SOURCE_INVALID",
                metadata={"field": "source"},
            )
        # The subscriptions' rules (at most 64 globs of visible ASCII, '*' and '?' the only wildcards): they were
        # not checked, and 40,000 globs (or '[' classes) held the control service's one event loop for seconds
        # per event listed.
        EventTypes(sel.event_types)
        _check_reason(sel.reason)
        if sel.start_us is None or sel.end_us is None:  # the epoch is a time, not "unset"
            raise InvalidRequest(
                "a replay needs start_time and end_time (a closed range)",
                reason="TIME_RANGE_INVALID",
                metadata={"field": "end_time"},
            )
        if sel.start_us >= sel.end_us:
            raise InvalidRequest("start_time must be before end_time", reason="TIME_RANGE_INVALID")
        if sel.end_us - sel.start_us > self.limits.max_range_us and not sel.force:
            hours = self.limits.max_range_us / 3.6e9
            raise InvalidRequest(
                f"the range is longer than {hours:g} h: narrow it or ask with force",
                reason="TIME_RANGE_TOO_LARGE",
                metadata={"field": "end_time"},
            )
        check_range(sel.start_us, sel.end_us, self.limits.store_ttl_seconds)  # force or not: the store refuses more
        cap = self.limits.max_events * (FORCED_CAP_FACTOR if sel.force else 1)
        if sel.max_events > cap:
            more = f" (with force: {FORCED_CAP_FACTOR} times control.replay_max_events)" if sel.force else ""
            raise InvalidRequest(f"max_events is above {cap}{more}", reason="TOO_MANY_EVENTS")
        if not (sel.rate_per_second == 0 or MIN_RATE <= sel.rate_per_second <= self.limits.rate_per_second):
            raise InvalidRequest(
                f"rate_per_second must be 0 (the configured pace) or between {MIN_RATE:g} and the configured "
                f"{self.limits.rate_per_second:g} events per second",
                reason="FIELD_INVALID",
                metadata={"field": "rate_per_second"},
            )
        target = await self._target(sel.subscription_id) if sel.subscription_id else None
        if target is not None and target.sources and sel.source not in target.sources:
            # As the single-event path refuses it; it used to run, match nothing, and end DONE with 0.
            raise FailedPrecondition(
                f"subscription {sel.subscription_id!r} takes no event of source {sel.source!r}: a replay to it "
                "sends only what it would have been sent",
                reason="SUBSCRIPTION_NOT_MATCHING",
                metadata={"subscription_id": sel.subscription_id[:64], "source": sel.source[:64]},
            )
        request = json.dumps({k: v.value if isinstance(v, EventStatus) else v for k, v in sel.__dict__.items()})
        job = ReplayJob(_new_id(), request, started_us=now_us(), dry_run=sel.dry_run)
        await self._put(job)
        cancel = asyncio.Event()
        task = asyncio.create_task(self._run(job, sel, cancel, target))
        self._running[job.id] = (job, task, cancel)
        task.add_done_callback(lambda _t: self._running.pop(job.id, None))
        return job

    async def follow(self, job: ReplayJob) -> AsyncIterator[ReplayJob]:
        """The job's progress, once a second, until it ends; the last one yielded is the final state.

        It decides on the copy it yielded, not on the live job: the job may finish while the caller sends that
        copy, and deciding on the live job then ended the stream on a RUNNING copy, the final state unsent
        (seen in the e2e replay test)."""
        while True:
            running = self._running.get(job.id)
            current = replace(running[0] if running else await self.get(job.id))
            yield current
            if current.state is not ReplayState.RUNNING:
                return
            # Not ours: another replica runs it (its heartbeats move the counts), or nobody does any more
            # (get() then records it FAILED once it is stale), so polling the store ends either way.
            await asyncio.sleep(PROGRESS_EVERY)

    async def get(self, replay_id: str) -> ReplayJob:
        running = self._running.get(replay_id)
        if running is not None:
            return running[0]
        job = await self.jobs.get_replay(replay_id) if replay_id else None
        if job is None:
            raise NotFound(f"no replay {replay_id!r}", reason="REPLAY_NOT_FOUND")
        now = now_us()
        if interrupted(job, now, self.limits.stale_after_us):
            read_at = job.updated_us
            _mark_interrupted(job, f" (nothing recorded for {silent_us(job, now) / 1e6:.0f} s)")
            job.finished_us = job.updated_us = now
            # Only if nothing wrote the row since it was read: a runner silent for a while (store trouble) that
            # wrote DONE or CANCELLED in between was overwritten FAILED for good.
            if read_at and not await self.jobs.mark_replay_interrupted(job, read_at):
                again = await self.jobs.get_replay(replay_id)
                return job if again is None else again
            if not read_at:  # a row without the time (never heartbeated): nothing to condition on
                await self.jobs.put_replay(job)
            log.warning("replay interrupted", extra={"replay": job.id, "queued": job.queued, "matched": job.matched})
        return job

    async def close(self) -> None:
        """Stops the jobs this service runs; each records itself FAILED (interrupted) before the store closes.
        Single-event replays in flight (their callers gone) are waited for first, up to ``SINGLE_CLOSE_SECONDS``:
        abandoned, one whose publish went out read later as FAILED with nothing enqueued."""
        if self._singles:
            await asyncio.wait(set(self._singles), timeout=SINGLE_CLOSE_SECONDS)
        tasks = [task for _, task, _ in self._running.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def cancel(self, replay_id: str) -> ReplayJob:
        """Cancels the job, here or on the replica that runs it (through the store: its runner looks every
        ``PROGRESS_EVERY``), and returns it as it is after up to ``CANCEL_WAIT_SECONDS``."""
        running = self._running.get(replay_id)
        if running is not None:
            job, task, cancel = running
            cancel.set()
            await asyncio.wait({task}, timeout=CANCEL_WAIT_SECONDS)
            return job
        job = await self.get(replay_id)
        if job.state is not ReplayState.RUNNING:
            return job  # over already: cancelling changes nothing
        await self.jobs.request_replay_cancel(replay_id, now_us())
        deadline = asyncio.get_running_loop().time() + CANCEL_WAIT_SECONDS
        while job.state is ReplayState.RUNNING and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(PROGRESS_EVERY / 2)
            job = await self.get(replay_id)
        return job

    # -- the job ------------------------------------------------------------------------------------------
    async def _run(self, job: ReplayJob, sel: Selection, cancel: asyncio.Event, target: Filter | None) -> None:
        heartbeat = asyncio.create_task(self._heartbeat(job, cancel))
        listed = False  # the whole selection enqueued: a failure after that leaves nothing to start again
        try:
            queued = await self._select_and_enqueue(job, sel, cancel, target)
            listed = True
            if not cancel.is_set() and not sel.dry_run:
                await self._wait_done(job, sel, queued, cancel)
            job.state = ReplayState.CANCELLED if cancel.is_set() else ReplayState.DONE
        except SwitchboardError as exc:
            if cancel.is_set() and isinstance(exc, Unavailable):  # cancelled while it waited out an outage
                job.state = ReplayState.CANCELLED
            else:
                job.state, job.message = ReplayState.FAILED, exc.public  # shown to callers: without the driver's detail
                if not listed and not sel.dry_run:
                    job.message += f"; {the_rest(job)}"
                log.warning("replay failed", extra={"replay": job.id, "error": exc.message})
        except asyncio.CancelledError:  # the service is stopping
            _mark_interrupted(job)
            raise
        except Exception:  # a bug: the job says it failed rather than run on as RUNNING until it looks abandoned
            job.state, job.message = ReplayState.FAILED, "the replay stopped on an internal error (see the logs)"
            log.exception("replay failed on an internal error", extra={"replay": job.id})
        finally:
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
            job.finished_us = now_us()
            await self._put_final(job)

    async def _put_final(self, job: ReplayJob) -> None:
        """The job's end, written again after a failure (it used to escape the task after one: the row said
        RUNNING, and read as interrupted, FAILED, a minute later, though the job had ended)."""

        def not_yet(exc: SwitchboardError) -> None:
            log.warning("replay end not recorded yet", extra={"replay": job.id, "error": exc.message})

        error = await after_pauses(lambda: self._put(job), FINAL_WRITE_PAUSES, SwitchboardError, not_yet)
        if error is not None:
            log.error(
                "replay end not recorded: it will read as interrupted",
                extra={"replay": job.id, "state": job.state.value, "error": error.message},
            )

    async def _heartbeat(self, job: ReplayJob, cancel: asyncio.Event) -> None:
        """Writes the running job (its progress) every ``heartbeat_seconds``, so that readers can tell a job
        that runs from one whose runner is gone (a failed write is retried at the next beat); alongside, looks
        every ``PROGRESS_EVERY`` for a cancel asked on another replica. Two loops: neither waits on the other."""
        await asyncio.gather(self._beat(job), self._watch_cancel(job, cancel))

    async def _beat(self, job: ReplayJob) -> None:
        while True:
            await asyncio.sleep(self.limits.heartbeat_seconds)
            try:
                await self._put(job)
            except SwitchboardError as exc:
                log.warning("replay progress not recorded", extra={"replay": job.id, "error": exc.message})
            except Exception:  # a bug: logged, and the beats go on (one loop ending would leave the other)
                log.exception("replay progress not recorded", extra={"replay": job.id})

    async def _watch_cancel(self, job: ReplayJob, cancel: asyncio.Event) -> None:
        while not cancel.is_set():
            await asyncio.sleep(PROGRESS_EVERY)
            try:
                if await self.jobs.replay_cancel_requested(job.id):
                    cancel.set()
            except SwitchboardError as exc:
                log.warning("replay cancel not read", extra={"replay": job.id, "error": exc.message})
            except Exception:
                log.exception("replay cancel not read", extra={"replay": job.id})

    async def _put(self, job: ReplayJob) -> None:
        job.updated_us = now_us()
        await self.jobs.put_replay(job)

    async def _select_and_enqueue(
        self, job: ReplayJob, sel: Selection, cancel: asyncio.Event, target: Filter | None = None
    ) -> list[InboundEvent]:
        """Lists the selection, enqueues it at the pace, and returns what it enqueued. With a ``target``
        subscription, only the events it takes (its sources and types when listed, its condition on the body
        when sent: a dry run counts by sources and types); it used to get every event of the selection.

        The pace allows no burst: time spent listing events the selection skips is not saved up (it was: after
        scanning 20 s of other types at 100/s, ~2,000 events went out at once)."""
        assert sel.start_us is not None and sel.end_us is not None
        # The configured cap unless the job asked for another (``start`` refused more than the cap, or with
        # ``force`` ten times it, not without a bound: every event enqueued stays listed until it is done, a few
        # hundred bytes each, and a forced 61-day range of 1 M events a day would have held ~30 GB).
        limit = sel.max_events or self.limits.max_events
        rate = min(sel.rate_per_second or self.limits.rate_per_second, self.limits.rate_per_second)
        types = EventTypes(sel.event_types) if sel.event_types else None  # checked by ``start``
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        queued: list[InboundEvent] = []
        cursor: tuple[int, int, str] | None = None
        while not cancel.is_set() and job.matched < limit:
            listing = partial(self.events.list, sel.source, sel.start_us, sel.end_us, PAGE, cursor)
            page, cursor = await _patiently("list", listing, cancel)
            for summary in page:
                if job.matched >= limit or cancel.is_set():
                    break
                if types is not None and not types.matches(summary.event_type):
                    continue
                if sel.status is not None and summary.status is not sel.status:
                    continue
                if target is not None and not target.matches_meta(summary.source, summary.event_type):
                    continue
                job.matched += 1
                if sel.dry_run:
                    continue
                t0 = max(t0, loop.time() - job.queued / rate)  # no credit from time spent not sending
                due = t0 + job.queued / rate
                if due > loop.time() and await _cancelled_within(cancel, due - loop.time()):
                    break  # a cancel during the pause: nothing more is enqueued
                stored = await _patiently("read", partial(self.events.get, summary.source, summary.event_id), cancel)
                if stored is None:
                    job.failed += 1
                    continue
                e = stored.event
                if target is not None and not target.matches_body(e.source, e.event_type, e.body):
                    job.matched -= 1  # its condition does not take it
                    continue
                # Then the replica's pace, once the job's own is kept, for events sent only: taken before the
                # read, a subscription's condition that took 1 event in 10 made the replay 10 times slower.
                slot = self._shared_slot()
                if slot > loop.time() and await _cancelled_within(cancel, slot - loop.time()):
                    break
                enqueued = await self._enqueue(stored.event, job.id, sel.subscription_id, cancel)
                queued.append(replace(enqueued, body=b"", headers={}))  # what _wait_done reads: ids, not bodies
                job.queued += 1
                job.resume_from_us = summary.received_us  # the listing's position (the row's may be a later one)
            if cursor is None:
                break
        return queued

    def _shared_slot(self) -> float:
        """When the next event of this replica's jobs may go (taken by the caller): the configured pace is the
        replica's, shared by its jobs, each of which keeps its own (slower) pace first. Paced each on its own,
        ten jobs put ten times the pace into the processors beside live traffic. Several control replicas each
        have their own."""
        slot = max(asyncio.get_running_loop().time(), self._next_slot)
        self._next_slot = slot + 1 / self.limits.rate_per_second
        return slot

    async def _enqueue(
        self, original: InboundEvent, replay_id: str, subscription_id: str, cancel: asyncio.Event | None = None
    ) -> InboundEvent:
        """Publishes the replay of ``original``; with ``cancel`` (a job), again after pauses while the broker is
        unavailable. The copy is built once: a publish tried again carries the same receipt (or delivery id),
        so one that reached the broker after all is a redelivery to the processor, not a second replay. It
        carries none of the headers ingest no longer stores (``never_stored``): an event stored before a
        credential's name was covered kept the credential, which a replay stored again with a fresh retention."""
        event = replace(
            original,
            receipt_id=new_receipt_id(),
            replay=True,
            replay_id=replay_id,
            received_us=original.received_us,
            headers={k: v for k, v in original.headers.items() if not never_stored(k)},
        )
        if subscription_id:
            task = DeliveryTask(
                delivery_id(event.source, event.event_id, f"{subscription_id}#{replay_id}"),
                subscription_id,
                event,
                now_us(),
                replay_id,
            )
            publish = partial(self.publisher.publish_task, task)
        else:
            publish = partial(self.publisher.publish_event, event)
        if cancel is None:
            await publish()
        else:
            await _patiently("publish", publish, cancel)
        return event

    async def _wait_done(
        self, job: ReplayJob, sel: Selection, queued: list[InboundEvent], cancel: asyncio.Event
    ) -> None:
        """Counts the replayed events processed (or delivered) until all are, or a whole pass over those still
        pending finds nothing done a minute after the last that was. One read checks ``WAIT_CHUNK`` of them,
        going round (a job of 100,000 events no longer asks for all of them twice a second, and events that take
        long do not hide the ones behind them)."""
        loop = asyncio.get_running_loop()
        pending = list(queued)
        idle_since = loop.time()
        offset = 0
        while pending and not cancel.is_set():
            chunk = pending[offset : offset + WAIT_CHUNK]
            paused = [0.0]
            asked = loop.time()
            finished, failed = await _patiently("check", partial(self._finished, job, sel, chunk), cancel, paused)
            if finished:
                idle_since = loop.time()
            elif paused[0]:  # an outage waited out (its pauses and the failed tries) is not time without progress
                idle_since += loop.time() - asked
            job.done += len(finished - failed)
            job.failed += len(failed)
            kept = [e for e in chunk if e.key not in finished]
            pending[offset : offset + WAIT_CHUNK] = kept
            offset += len(kept)
            if offset < len(pending):
                await asyncio.sleep(CHUNK_PAUSE)
                continue
            offset = 0  # a whole pass
            if pending and loop.time() - idle_since > 60:
                job.message = f"{len(pending)} replayed events not finished after a minute without progress"
                return
            await asyncio.sleep(0.5)

    async def _finished(self, job: ReplayJob, sel: Selection, events: list[InboundEvent]) -> tuple[set[str], set[str]]:
        """The keys of ``events`` whose replay is over, and of those the ones that failed."""
        if sel.subscription_id:
            ids = [delivery_id(e.source, e.event_id, f"{sel.subscription_id}#{job.id}") for e in events]
            states = await self.deliveries.get_many(ids)
            over = {e.key: states[i].status for e, i in zip(events, ids, strict=True) if i in states}
            finished = {k for k, status in over.items() if status in FINAL_DELIVERY}
            # CANCELLED (the subscription was disabled or deleted meanwhile) sent nothing: failed, not done.
            return finished, {k for k in finished if over[k].value in ("failed", "cancelled")}
        priors = await self.events.priors(events)
        mine = {e.key: p for e in events if (p := priors.get(e.key)) and p.receipt_id == e.receipt_id}
        finished = {k for k, p in mine.items() if p.status in TERMINAL}
        return finished, {k for k in finished if mine[k].status is EventStatus.FAILED}

    async def _target(self, subscription_id: str) -> Filter:
        """The filter of the subscription a replay targets, which must exist and be enabled (a replay to a
        disabled one was recorded CANCELLED delivery by delivery, and counted done)."""
        s = await self.subscriptions.get(subscription_id)
        if s is None:
            raise NotFound(f"no subscription {subscription_id!r}", reason="SUBSCRIPTION_NOT_FOUND")
        if not s.enabled:
            raise FailedPrecondition(
                f"subscription {subscription_id!r} is {s.status.value}: enable it before replaying to it",
                reason="SUBSCRIPTION_DISABLED",
                metadata={"subscription_id": subscription_id[:64]},
            )
        try:
            return Filter(s.sources, s.event_types, s.trigger_conditions or None, strict=False)
        except SwitchboardError as exc:
            raise FailedPrecondition(
                f"subscription {subscription_id!r}: its stored filter does not compile ({exc.message})",
                reason="SUBSCRIPTION_FILTER_INVALID",
                metadata={"subscription_id": subscription_id[:64]},
            ) from None


async def _patiently(
    what: str, call: Callable[[], Awaitable[T]], cancel: asyncio.Event, paused: list[float] | None = None
) -> T:
    """``call()``, and again after each of ``OUTAGE_PAUSES`` while the store or the broker is unavailable (one
    Cassandra timeout or broker reconnect ended a job of 100,000 events FAILED, with no way to resume it
    short of replaying what it had sent again; found in review). The last failure, or one during a cancel,
    is raised: the job fails then, as before. The seconds paused are added to ``paused[0]``."""
    for pause in (*OUTAGE_PAUSES, None):
        try:
            return await call()
        except Unavailable as exc:
            if pause is None or cancel.is_set():
                raise
            log.warning("replay waits out an outage", extra={"step": what, "error": exc.message, "pause_s": pause})
            if paused is not None:
                paused[0] += pause
            if await _cancelled_within(cancel, pause):
                raise
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises on its last round


async def _cancelled_within(cancel: asyncio.Event, seconds: float) -> bool:
    """Waits ``seconds`` unless ``cancel`` is set first; whether it was."""
    try:
        await asyncio.wait_for(cancel.wait(), seconds)
    except TimeoutError:
        return False
    return True


def _new_id() -> str:
    return "rp_" + secrets.token_hex(10)


def _check_reason(reason: str) -> None:
    if len(reason) > MAX_REASON:
        raise InvalidRequest(
            f"reason is longer than {MAX_REASON} characters", reason="FIELD_INVALID", metadata={"field": "reason"}
        )
