"""The delivery worker as a queue handler: for each delivery task, send it (signed, through the SSRF guard),
record the attempt, and answer the worker with what follows (``switchboard.delivery.policy`` decides).

* **Once delivered, never again.** The delivery's stored state is read first (one ``IN`` read per batch): a
  task whose delivery is already final (a republished copy from a processor's redelivery, or the copy left
  by a worker that died between its retry copy and its ack) is acked without a send; one recorded FAILED is
  dead-lettered again (its dead letter may never have been published), still without a send.
* **At least once.** A worker killed after the POST and before it recorded the attempt sends again with the
  same ``webhook-id`` on redelivery: receivers deduplicate on it (the Standard Webhooks contract).
* **Attempts** are numbered from the stored count, every one is a row (status, duration, selected response
  headers, the first 4 KB of the body, error class and message), and the delivery's row says where it
  stands (delivered, retrying with the next attempt's time, failed, cancelled).
* **Disabled or deleted subscriptions** get no more sends: the task is recorded CANCELLED and acked. A 410
  Gone disables the subscription (``AUTO_DISABLED`` with the reason; written before the attempt, so that a
  crash between the two cannot leave the subscription enabled) and the change is announced.
* **Circuit breaker** per subscription (``switchboard.delivery.breaker``): after ``delivery.breaker_failures``
  failures in a row that say the endpoint is unavailable, its tasks are deferred (parked in a delay queue
  until the cool-down ends, no attempt counted, nothing sent) and then one probe decides. A delivery first
  deferred before any attempt is recorded PENDING with the reason, so that it shows in the listings.
* **Rate limit** per subscription (``rate_limit_per_second``, default ``delivery.rate_limit_per_second``): a
  task waits for its token in the worker.
* **A task that waited sends what the subscription is now.** After a wait for a slot or a rate token (at a
  low rate, many seconds), the task reads its subscription again: disabled or deleted meanwhile, it sends
  nothing and is recorded CANCELLED; moved to another host, it starts over in that host's line; a new path,
  secret or retry policy on the same host is what this send uses; a circuit that opened meanwhile defers it.
* **One endpoint cannot take the worker, nor its host's connections.** At most ``max_in_flight`` tasks of one
  subscription (its own, else ``delivery.subscription_in_flight``) are sending (or waiting for their
  rate-limit token) in a worker at once, and at most ``delivery.host_in_flight`` to one host, whose last
  quarter is kept for endpoints with few requests out and the rest shared by the others
  (``switchboard.delivery.inflight``). A task refused by those limits whose next slot, at the pace its
  subscription's requests end, is due within ``delivery.slot_wait_ms`` waits for it here, in line
  (``switchboard.delivery.slots``; a fast endpoint at its bound costs no trip through a delay queue). The
  others are deferred (no attempt counted, recorded PENDING with the reason if never tried; a copy that comes
  back while the limit still holds goes back without the read of its state), each to its subscription's next
  free moment at that pace (``switchboard.delivery.pacing``; 1 s, then twice the copy's previous wait up to 30
  s until the pace is known), so a slow or rate-limited endpoint holds a bounded share of the worker's
  ``concurrency`` and of its host, its backlog drains at the rate it answers, and the others' tasks go on.
* **Bounded memory.** What the worker keeps per subscription (its pace, its line, its circuit, its rate
  bucket) is dropped once the subscription is deleted or disabled, at its next task or within
  ``FORGET_EVERY_S`` (``forget_gone``); rate buckets, as soon as they have refilled.
* **Traces.** A task whose event Envoy sampled gets a ``deliver`` span (in the event's trace, so every retry
  and redrive of it is there too; a copy deferred again for a limit it is still at gets none) with the POST
  (status code, the callback's host; never the URL's path or query, which may hold a token) and the
  Cassandra write of the attempt under it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from switchboard.backoff import Backoff
from switchboard.delivery import policy
from switchboard.delivery.breaker import Breakers, State
from switchboard.delivery.inflight import InFlight
from switchboard.delivery.pacing import Pacer
from switchboard.delivery.sender import Response
from switchboard.delivery.signing import delivery_headers
from switchboard.delivery.slots import SlotQueue
from switchboard.errors import InvalidRequest, StoreUnavailable
from switchboard.model.events import now_us
from switchboard.model.subscriptions import (
    FINAL_DELIVERY,
    Attempt,
    Delivery,
    DeliveryStatus,
    DeliveryTask,
    Subscription,
    SubscriptionStatus,
)
from switchboard.observability.tracing import NO_TRACER, Tracer
from switchboard.queue import Ack, DeadLetter, QueueMessage, Retry, Verdict
from switchboard.runtime.loop import gather_settled
from switchboard.wire import decode_task

log = logging.getLogger(__name__)

RECORD_BACKOFF = Backoff(0.2, 5.0)
RECORD_TRIES = 8
# Until the pace of its subscription's requests is known (``Pacer``), a task of a subscription (or host) at its
# in-flight limit comes back after 1 s, then after twice its previous wait, up to 30 s (jittered, never past
# 30 s, the longest a paced booking waits too: a longer wait would go to the 60 s delay queue).
SATURATED_DEFER_S = 1.0
SATURATED_MAX_DEFER_S = 30.0
# How often the worker drops what it keeps for subscriptions deleted or disabled meanwhile (``forget_gone``).
FORGET_EVERY_S = 60.0
SATURATED = "deferred: the endpoint has"  # how the reason of such a deferral starts
CIRCUIT_OPEN = "deferred: the endpoint's circuit is open"  # how the reason of a circuit's deferral starts
# The wait before a delivery answered 410 by a URL its subscription moved from is sent to its new one.
MOVED_RETRY_MS = 1000
_HELD_SINCE = re.compile(r"held back since (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)")


class Deliveries(Protocol):
    async def get_many(self, ids: Sequence[str]) -> dict[str, Delivery]: ...
    async def record(self, d: Delivery, attempt: Attempt | None = None, *, state: bool = True) -> None: ...


class Subscriptions(Protocol):
    def get(self, subscription_id: str) -> Subscription | None: ...
    async def refresh(self, subscription_id: str) -> Subscription | None: ...


class Disabler(Protocol):
    async def disable(self, subscription_id: str, reason: str, callback_url: str) -> bool:
        """Disables the subscription if it still sends to ``callback_url``; whether it is disabled."""


class Sender(Protocol):
    async def post(self, url: str, body: bytes, headers: dict[str, str], within: float) -> Response: ...


class Limiter(Protocol):
    async def acquire(self, key: str, rate: float) -> float: ...
    def prune(self, now: float) -> int: ...


@dataclass(frozen=True)
class Defaults:
    timeout_ms: int = 10_000
    rate_limit_per_second: int = 1000
    subscription_in_flight: int = 32
    host_in_flight: int = 64
    slot_wait_ms: int = 250
    max_retry_after_s: float = policy.MAX_RETRY_AFTER


class DeliveryPipeline:
    def __init__(
        self,
        subscriptions: Subscriptions,
        deliveries: Deliveries,
        disabler: Disabler,
        sender: Sender,
        limiter: Limiter,
        defaults: Defaults,
        *,
        rng: random.Random | None = None,
        tracer: Tracer = NO_TRACER,
        breakers: Breakers | None = None,
        on_wait: Callable[[bool], None] | None = None,
    ) -> None:
        """``on_wait``: called with True when a task that waited for a slot got one, False when it did not (and
        was deferred)."""
        self.subscriptions = subscriptions
        self.deliveries = deliveries
        self.disabler = disabler
        self.sender = sender
        self.limiter = limiter
        self.defaults = defaults
        self.rng = rng or random.Random()
        self.tracer = tracer
        self.breakers = breakers if breakers is not None else Breakers()
        # Per subscription and host: tasks between the limiter and the answer.
        self.in_flight = InFlight(defaults.host_in_flight)
        # When a task deferred for those limits comes back: within the same bounds as the doubling.
        self.pacer = Pacer(SATURATED_DEFER_S, SATURATED_MAX_DEFER_S)
        # Tasks refused a slot that wait here for their subscription's next one instead (when it is due soon).
        self.slots = SlotQueue(defaults.slot_wait_ms / 1000, 2 * defaults.slot_wait_ms / 1000)
        self.on_wait = on_wait

    def forget_gone(self) -> int:
        """Drops what the worker keeps per subscription (its pace, the moment its line last moved, its circuit)
        for the subscriptions deleted or disabled since, and the rate buckets that refilled; returns how many
        subscriptions it forgot. A disabled or deleted subscription's next task forgets it too, but one whose
        tasks are all done would be kept for ever (the main loop calls this every ``FORGET_EVERY_S``)."""
        kept = self.pacer.subscriptions() | self.slots.subscriptions() | self.breakers.keys()
        gone = [
            k for k in kept if (s := self.subscriptions.get(k)) is None or s.status is not SubscriptionStatus.ENABLED
        ]
        for k in gone:
            self._forget(k)
        self.limiter.prune(time.monotonic())
        return len(gone)

    def _forget(self, subscription_id: str) -> None:
        """The subscription is deleted or disabled: its circuit, pace and line's last move are dropped."""
        self.breakers.forget(subscription_id)
        self.pacer.forget(subscription_id)
        self.slots.forget(subscription_id)

    def key(self, message: QueueMessage) -> str:
        """Copies of one delivery never run at the same time here."""
        return message.message_id

    async def handle(self, batch: Sequence[QueueMessage]) -> list[Verdict]:
        tasks: list[DeliveryTask | None] = []
        for m in batch:
            try:
                tasks.append(decode_task(m.body))
            except InvalidRequest as exc:
                log.error(
                    "undecodable delivery task dead-lettered", extra={"message_id": m.message_id, "error": exc.message}
                )
                tasks.append(None)
        early = [self._still_saturated(t, m) if t is not None else None for t, m in zip(tasks, batch, strict=True)]
        known = await self.deliveries.get_many(
            [t.delivery_id for t, v in zip(tasks, early, strict=True) if t is not None and v is None]
        )
        jobs: list[Awaitable[Verdict]] = []
        for t, m, v in zip(tasks, batch, early, strict=True):
            if v is not None:
                jobs.append(_ready(v))
            elif t is None:
                jobs.append(_undecodable())
            else:
                state = known.get(t.delivery_id)
                ahead = _ahead_of_schedule(state, m)
                jobs.append(
                    _ready(ahead) if ahead else self._one(t, state, saturated_wait(m), _held(m), circuit_since(m))
                )
        # A failure is raised only once every task of the batch is over, their outcomes recorded: the worker
        # runs the batch again, and a task still sending then would be sent a second time at once.
        return await gather_settled(*jobs)

    def _still_saturated(self, task: DeliveryTask, message: QueueMessage) -> Verdict | None:
        """A copy deferred before for an in-flight limit that its subscription (or host) is still at goes back
        to the delay queue at once: no read of its state (its first deferral recorded what had to be: PENDING
        for a delivery never tried; a delivery that became final meanwhile is acked when it comes back with
        room), no span. None: the copy goes the whole way."""
        waited = saturated_wait(message)
        if not waited:
            return None
        sub = self.subscriptions.get(task.subscription_id)
        if sub is None or sub.status is not SubscriptionStatus.ENABLED:
            return None
        refused = self.in_flight.refusal(sub.id, host_of(sub.callback_url), self._limit(sub))
        if refused is None or self._may_wait(sub):  # room, or its slot is due soon: it waits for it in _deliver
            return None
        return _deferral(message.attempt, f"{SATURATED} {refused}", self._saturated_hold(sub.id, waited))

    def _saturated_hold(self, subscription_id: str, waited: float) -> float:
        """The wait of a task deferred for an in-flight limit: its subscription's next free moment once the pace
        of its requests is known, else doubling from the copy's last wait."""
        slots = self.in_flight.subscription(subscription_id)
        paced = self.pacer.hold(subscription_id, slots, time.monotonic())
        return paced if paced is not None else saturated_hold(waited, self.rng)

    def _limit(self, sub: Subscription) -> int:
        return sub.max_in_flight or self.defaults.subscription_in_flight

    def _timeout_ms(self, sub: Subscription) -> int:
        """Its send's timeout: the subscription's retry policy's, else the platform's."""
        retry = sub.retry
        return retry.timeout_ms if retry and retry.timeout_ms else self.defaults.timeout_ms

    async def _take_slot(self, sub: Subscription, host: str) -> tuple[str | None, bool]:
        """Takes one of the subscription's in-flight slots, if need be after waiting in the worker for one of
        its requests to end (``SlotQueue``: when its pace says one frees soon). Returns (None, whether it
        waited) with the slot taken, or (why the task may not go now, …): the words after "the endpoint has",
        and the caller defers it."""
        limit = self._limit(sub)
        refused: str | None
        if self.slots.waiting(sub.id) and self.in_flight.refusal(sub.id, host, limit) is None:
            self.slots.fill(sub.id)  # room opened without a request ending: the ones in line go first
        if self.slots.waiting(sub.id) and self._may_wait(sub):  # behind the ones that wait for its next slots
            refused = f"{self.in_flight.subscription(sub.id)} requests in flight and tasks waiting for them"
        else:
            refused = self.in_flight.take(sub.id, host, limit)
            if refused is None:
                self.slots.started(sub.id, time.monotonic())
                return None, False
            if not self._may_wait(sub):  # its slot is not due soon, or nothing of it is out: deferred
                return refused, False
        taken = await self.slots.wait(
            sub.id,
            functools.partial(self._take_for, sub.id, host, limit),
            functools.partial(self._release, sub.id, host),
        )
        if self.on_wait is not None:
            try:
                self.on_wait(taken)
            except Exception:  # a metrics hook must not cost the slot taken for this task
                log.warning("the slot-wait hook failed", exc_info=True)
        return (None, True) if taken else (refused, True)

    def _take_for(self, subscription_id: str, host: str, limit: int) -> str | None:
        """A waiter's ``take``, under the subscription's limit as it is when the slot comes (``limit``: as it was
        when the waiter lined up, if the subscription is no longer known)."""
        current = self.subscriptions.get(subscription_id)
        return self.in_flight.take(subscription_id, host, self._limit(current) if current is not None else limit)

    def _may_wait(self, sub: Subscription) -> bool:
        """Whether a task of the subscription refused a slot (its own limit, or its host's rules) may wait in line
        for the next one its requests free."""
        out = self.in_flight.subscription(sub.id)
        return self.slots.admits(sub.id, self.pacer.latency(sub.id), out, time.monotonic())

    def _release(self, subscription_id: str, host: str) -> None:
        """A request taken with ``_take_slot`` is over: its slot goes to the subscription's first waiter."""
        self.in_flight.release(subscription_id, host)
        self.slots.handover(subscription_id, time.monotonic())

    async def _one(
        self,
        task: DeliveryTask,
        state: Delivery | None,
        waited: float,
        held: Callable[[], bool] = lambda: True,
        held_since: int = 0,
    ) -> Verdict:
        """``waited``: seconds this copy was deferred for an in-flight limit (0 if it was not); ``held()``: the
        copy is still this worker's (its channel is open); ``held_since``: when its circuit began holding it
        back, if it did (``circuit_since``)."""
        attributes = {
            "switchboard.delivery_id": task.delivery_id,
            "switchboard.subscription_id": task.subscription_id,
            "switchboard.event_id": task.event.event_id,
        }
        with self.tracer.span("deliver", task.event.traceparent, kind="consumer", attributes=attributes) as span:
            verdict = await self._deliver(task, state, waited, span.traceparent if span else "", held, held_since)
            if span is not None:
                span.set("switchboard.verdict", type(verdict).__name__.lower())
                span.set("switchboard.outcome", getattr(verdict, "outcome", "") or "")
            return verdict

    async def _deliver(
        self,
        task: DeliveryTask,
        state: Delivery | None,
        waited: float,
        trace: str,
        held: Callable[[], bool] = lambda: True,
        held_since: int = 0,
    ) -> Verdict:
        """One task; ``trace`` is the parent of its spans ("" when its event is not traced). A copy whose channel
        closed while it waited for a slot or a rate token (this worker missed its heartbeats, or lost its
        connection) is not sent: the broker has handed it to the partition's next worker, which reads the same
        state and sends the same attempt, and the two records would race (a late RETRYING over a DELIVERED)."""
        if state is not None and state.status is DeliveryStatus.FAILED:
            # Its dead letter may never have been published (the copy refused, or the worker died before it):
            # dead-lettered again, with nothing sent. A second record of it at worst, never none.
            return DeadLetter(state.attempts, state.last_error or "failed", outcome="failed", again=True)
        if state is not None and state.status in FINAL_DELIVERY:
            return Ack("already_final")
        sub = self.subscriptions.get(task.subscription_id) or await self.subscriptions.refresh(task.subscription_id)
        delivery = state or Delivery(
            id=task.delivery_id,
            subscription_id=task.subscription_id,
            source=task.event.source,
            event_id=task.event.event_id,
            event_type=task.event.event_type,
            status=DeliveryStatus.PENDING,
            created_us=task.created_us,
        )
        if sub is None or sub.status is not SubscriptionStatus.ENABLED:
            self._forget(task.subscription_id)
            delivery.status = DeliveryStatus.CANCELLED
            delivery.last_error = (
                "the subscription is deleted" if sub is None else f"the subscription is {sub.status.value}"
            )
            delivery.updated_us = now_us()
            await self._record(delivery, None, trace)
            return Ack("cancelled")

        # Should it be the probe, its answer is due within its timeout (plus what it may wait for a slot or a
        # rate token): the other tasks wait that long.
        admission = self.breakers.admit(sub.id, time.monotonic(), self._timeout_ms(sub) / 1000 + 1.0)
        if admission.hold > 0:
            since = held_since or now_us()
            if self._past_schedule(delivery, since, sub):
                return await self._give_up(delivery, trace)
            reason = circuit_open(admission.hold, since)
            return await self._defer(delivery, state is None, admission.hold, reason, trace)
        probe = admission.probe  # non-zero: this task is its half-open circuit's one probe
        host = host_of(sub.callback_url)
        try:
            refused, paused = await self._take_slot(sub, host)
        except BaseException:
            self.breakers.release(sub.id, probe)
            raise
        if refused is not None:
            self.breakers.release(sub.id, probe)
            if not held():  # lost while it waited: the partition's next worker has it (it records, not this one)
                return Ack("abandoned")
            reason = f"{SATURATED} {refused}"
            return await self._defer(delivery, state is None, self._saturated_hold(sub.id, waited), reason, trace)
        taken = time.monotonic()
        try:
            rate = sub.rate_limit_per_second or self.defaults.rate_limit_per_second
            paused = await self.limiter.acquire(sub.id, rate) > 0 or paused
        except BaseException:
            self._release(sub.id, host)
            self.breakers.release(sub.id, probe)
            raise
        if paused:  # it waited for a slot or a rate token, holding nothing else: the world may have moved
            current = self.subscriptions.get(sub.id)
            if current is not sub and (
                current is None
                or current.status is not SubscriptionStatus.ENABLED
                or host_of(current.callback_url) != host
            ):  # disabled, deleted or moved: this task starts over (cancelled, or in line for its new host)
                self._release(sub.id, host)
                self.breakers.release(sub.id, probe)
                return await self._deliver(task, state, waited, trace, held, held_since)
            sub = current or sub  # a new path, secret or retry policy on the same host: this send uses it
            hold = self.breakers.held(sub.id, time.monotonic())  # it may have opened meanwhile
            if not hold and not probe and self.breakers.state(sub.id) is not State.CLOSED:
                # Its cool-down is over or its probe is out: the probe decides first.
                hold = self.breakers.probe_hold(sub.id, time.monotonic())
            if hold > 0:
                self._release(sub.id, host)
                self.breakers.release(sub.id, probe)
                if not held():  # its deferral would write PENDING over what the next worker records
                    return Ack("abandoned")
                return await self._defer(
                    delivery, state is None, hold, circuit_open(hold, held_since or now_us()), trace
                )
        if not held():
            self._release(sub.id, host)
            self.breakers.release(sub.id, probe)
            return Ack("abandoned")
        try:  # from here the slot is released whatever happens
            attempt_no = delivery.attempts + 1
            schedule = _schedule(sub)
            timeout_ms = self._timeout_ms(sub)
            started = now_us()
            headers = delivery_headers(task.delivery_id, task.event.body, sub.signing_secrets(started), started / 1e6)
            headers["content-type"] = task.event.content_type or "application/json"
            response = await self.sender.post(sub.callback_url, task.event.body, headers, timeout_ms / 1000)
        except BaseException:
            self.breakers.release(sub.id, probe)
            raise
        finally:
            self.pacer.ended(sub.id, time.monotonic() - taken)
            self._release(sub.id, host)
        decision = policy.classify(
            response.status,
            response.error_class or None,
            response.retry_after,
            time.time(),
            attempt=attempt_no,
            policy=schedule,
            rng=self.rng,
            max_retry_after=self.defaults.max_retry_after_s,
        )
        finished = now_us()
        self.tracer.record(
            "POST",
            trace,
            started * 1000,
            (started + response.duration_us) * 1000,
            kind="client",
            attributes={
                "http.request.method": "POST",
                "server.address": urlsplit(sub.callback_url).hostname or "",
                "http.response.status_code": response.status or 0,
                "switchboard.attempt": attempt_no,
                "http.request.body.size": len(task.event.body),
            },
            error=response.error_class or ("" if 200 <= (response.status or 0) < 300 else f"HTTP {response.status}"),
        )
        outcome = {
            policy.Outcome.DELIVERED: DeliveryStatus.DELIVERED,
            policy.Outcome.RETRY: DeliveryStatus.RETRYING,
            policy.Outcome.FAILED: DeliveryStatus.FAILED,
        }[decision.outcome]
        error = "" if outcome is DeliveryStatus.DELIVERED else f"{decision.reason}: {decision.detail}"[:1000]
        delivery.status = outcome
        delivery.attempts = attempt_no
        delivery.last_http_status = response.status or 0
        delivery.last_error = error
        delivery.updated_us = finished
        delivery.next_attempt_us = finished + (decision.delay_ms or 0) * 1000 if decision.delay_ms else 0
        attempt = Attempt(
            delivery_id=task.delivery_id,
            subscription_id=sub.id,
            source=task.event.source,
            event_id=task.event.event_id,
            attempt=attempt_no,
            started_us=started,
            duration_us=response.duration_us,
            http_status=response.status or 0,
            response_headers=response.headers,
            response_body=response.body,
            error_class=response.error_class,
            error=response.error[:1000],
            outcome=outcome,
        )
        unavailable = policy.endpoint_unavailable(decision)
        change = self.breakers.record(sub.id, failed=unavailable, now=time.monotonic(), probe=probe)
        if change is not None and change.state is State.OPEN:
            log.warning(
                "circuit opened: sends to the subscription's endpoint held back",
                extra={"subscription": sub.id, "cooldown_s": change.cooldown_seconds, "error": error[:300]},
            )
        elif change is not None:
            log.info("circuit closed: the endpoint answered", extra={"subscription": sub.id})
        delay_ms = decision.delay_ms
        disabled = False
        if decision.disable_subscription:
            self._forget(sub.id)
            # Before the attempt is recorded: a worker killed between the two leaves a FAILED delivery that its
            # redelivery acks without a send, so disabling after the record could be lost. This way round, the
            # redelivery finds the subscription disabled and records the task CANCELLED.
            disabled = await self.disabler.disable(
                sub.id, f"the endpoint answered {response.status} ({decision.detail})", sub.callback_url
            )
            if not disabled:
                # A 410 of a URL the subscription no longer sends to (its client moved it while this POST was
                # out): nothing was disabled, and the delivery goes to its new URL if it has an attempt left (it
                # was failed for good).
                error = delivery.last_error = f"{error} (from a URL the subscription no longer sends to)"[:1000]
            if not disabled and attempt_no < schedule.max_attempts:
                outcome = attempt.outcome = delivery.status = DeliveryStatus.RETRYING
                delay_ms = MOVED_RETRY_MS
                delivery.next_attempt_us = finished + delay_ms * 1000
        if outcome is not DeliveryStatus.DELIVERED and not held():
            # The task was lost while its POST was out (the channel closed): the broker gave it to the
            # partition's next worker, which may have recorded its own send already. This failure is history (the
            # attempt's row), not the delivery's state: written over the other worker's DELIVERED, it said
            # RETRYING for good (this Retry copy is dropped with the message). A success is recorded: a worker
            # that takes the task after it then acks without sending it again.
            await self._record(delivery, attempt, trace, state=False)
            return Ack("abandoned")
        await self._record(delivery, attempt, trace)
        if outcome is DeliveryStatus.DELIVERED:
            # Timed for a fresh delivery only (no row before this send: not retried, deferred or redriven, and
            # not a replay): a replay or redrive of an old event reported its age, and filled the alert's p99.
            fresh = state is None and not task.replay_id
            return Ack("delivered", (finished - task.event.received_us) / 1000 if fresh else None)
        if outcome is DeliveryStatus.RETRYING:
            assert delay_ms is not None
            return Retry(attempt_no, error, delay_ms=delay_ms)
        log.info(
            "delivery failed",
            extra={"delivery": task.delivery_id, "subscription": sub.id, "attempts": attempt_no, "error": error[:300]},
        )
        return DeadLetter(attempt_no, error, outcome="disabled" if disabled else "failed")

    def _past_schedule(self, delivery: Delivery, since_us: int, sub: Subscription) -> bool:
        """Whether the delivery's circuit has held it back (since ``since_us``: its copies' first circuit
        deferral in a row) for longer than the rest of its retry schedule would have taken, with the schedule's
        jitter and a longest cool-down more for a last probe. Deferred for as long as its endpoint stayed down,
        it was never dead-lettered, and a backlog of tasks carrying whole events grew for as long. (Counted from
        the row's last write or the task's creation, a task held back for other reasons before the circuit
        opened, or waiting for a long Retry-After, was given up at the circuit's first deferral.)"""
        rest = _schedule(sub).retry_delays[max(delivery.attempts - 1, 0) :]
        allowed_s = sum(rest) * (1 + policy.JITTER) + self.breakers.settings.max_cooldown_seconds
        return now_us() - since_us > allowed_s * 1_000_000

    async def _give_up(self, delivery: Delivery, trace: str) -> Verdict:
        """FAILED without a send (``_past_schedule``), and dead-lettered: a redrive sends it again."""
        error = (
            "CIRCUIT_OPEN: the endpoint's circuit stayed open past the retry schedule "
            f"({delivery.attempts} attempt(s) made)"
        )
        delivery.status, delivery.last_error, delivery.updated_us = DeliveryStatus.FAILED, error, now_us()
        delivery.next_attempt_us = 0
        await self._record(delivery, None, trace)
        log.info("delivery given up: its circuit stayed open", extra={"delivery": delivery.id, "error": error})
        return DeadLetter(delivery.attempts, error, outcome="failed")

    async def _defer(self, delivery: Delivery, new: bool, hold: float, reason: str, trace: str) -> Verdict:
        """Parks a task for ``hold`` seconds (its subscription's circuit is open, or it has as many requests in
        flight as it may): no send, no attempt. A delivery never tried yet is recorded PENDING with the reason
        (once: later deferrals of it write nothing)."""
        if new:
            delivery.last_error = reason
            delivery.updated_us = now_us()
            delivery.next_attempt_us = delivery.updated_us + round(hold * 1_000_000)
            await self._record(delivery, None, trace)
        # No jitter: the task waits in the shortest delay queue that holds ``hold`` (a cool-down of 30 s in the
        # 30 s one), and when they all come back the half-open circuit lets one through and defers the rest until
        # its answer is due (``Breakers.probe_hold``).
        return _deferral(delivery.attempts, reason, hold)

    async def _record(self, delivery: Delivery, attempt: Attempt | None, trace: str, *, state: bool = True) -> None:
        with self.tracer.span("cassandra record", trace, kind="client", attributes={"db.system.name": "cassandra"}):
            await self._record_retrying(delivery, attempt, state=state)

    async def _record_retrying(self, delivery: Delivery, attempt: Attempt | None, *, state: bool = True) -> None:
        """Writes the outcome, retrying the store for a while: giving up would send the delivery again. Every
        try writes the same rows (the attempt's run id is drawn once, with the attempt)."""
        for tries, delay in enumerate(RECORD_BACKOFF.delays(), start=1):
            try:
                await self.deliveries.record(delivery, attempt, state=state)
                return
            except StoreUnavailable:
                if tries >= RECORD_TRIES:
                    raise
                await asyncio.sleep(delay)


@functools.lru_cache(maxsize=4096)
def host_of(url: str) -> str:
    """What the sender's connection pool counts a callback URL's requests by: its host and port."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:  # the sender refuses such a URL itself, without a connection
        port = None
    return f"{parts.hostname or ''}:{port or (443 if parts.scheme == 'https' else 80)}"


def circuit_open(hold: float, since_us: int) -> str:
    """The reason of a task deferred for its subscription's open circuit, ``hold`` seconds before it sends, held
    back since ``since_us`` (its copy carries the reason: ``circuit_since`` reads it back)."""
    since = dt.datetime.fromtimestamp(since_us // 1_000_000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{CIRCUIT_OPEN} (held back since {since}; sending again in {hold:.1f} s)"


def circuit_since(message: QueueMessage) -> int:
    """When the copy's circuit began holding it back (µs), if its last deferral was its circuit's, else 0."""
    if not message.last_error.startswith(CIRCUIT_OPEN):
        return 0
    found = _HELD_SINCE.search(message.last_error)
    if found is None:
        return 0
    at = dt.datetime.strptime(found.group(1), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    return int(at.timestamp()) * 1_000_000


def saturated_hold(waited: float, rng: random.Random) -> float:
    """How long a task of a subscription (or host) at its in-flight limit is deferred while the pace of its
    requests is unknown, given what this copy ``waited`` for the same reason before (0: the first time): 1 s,
    then twice that, ±20%, at most 30 s."""
    return min(SATURATED_MAX_DEFER_S, max(SATURATED_DEFER_S, 2 * waited) * rng.uniform(0.8, 1.2))


def saturated_wait(message: QueueMessage) -> float:
    """Seconds the copy waited if the worker deferred it for an in-flight limit, else 0 (the
    worker's retry headers: the verdict's reason and the delay it got)."""
    if not message.last_error.startswith(SATURATED):
        return 0.0
    return max(0, message.retry_delay_ms) / 1000


def _ahead_of_schedule(state: Delivery | None, message: QueueMessage) -> Verdict | None:
    """A copy from before the delivery's last attempt (its ``x-attempt`` below the recorded attempts) while
    the next attempt is scheduled later: the copy of a batch the worker runs again after it raised, or the
    original that a worker killed after its retry copy left behind. Sent now, it would go ahead of the
    schedule (a 429's Retry-After included): it is deferred to the scheduled moment instead. Never acked: the
    retry copy may not exist (a worker killed before it)."""
    if state is None or state.status is not DeliveryStatus.RETRYING or message.attempt >= state.attempts:
        return None
    hold = (state.next_attempt_us - now_us()) / 1_000_000
    if hold <= 0:
        return None
    return _deferral(state.attempts, "deferred: its next attempt is scheduled later", hold)


def _schedule(sub: Subscription) -> policy.RetryPolicy:
    """The subscription's retry schedule: its own delays (cut to its attempts), else the platform's."""
    retry = sub.retry
    schedule = policy.RetryPolicy(tuple(ms / 1000 for ms in retry.delays_ms)) if retry else policy.DEFAULT_POLICY
    if retry is not None and retry.max_attempts < schedule.max_attempts:
        schedule = policy.RetryPolicy(schedule.retry_delays[: retry.max_attempts - 1])
    return schedule


def _deferral(attempts: int, reason: str, hold: float) -> Retry:
    """The verdict that parks a task for ``hold`` seconds without an attempt (``attempts``: made so far)."""
    return Retry(attempts, reason, delay_ms=max(1, round(hold * 1000)), outcome="deferred")


def _held(message: QueueMessage) -> Callable[[], bool]:
    return lambda: message.held


async def _ready(verdict: Verdict) -> Verdict:
    return verdict


async def _undecodable() -> Verdict:
    return DeadLetter(0, "not a webhooks.v1.DeliveryTask", outcome="undecodable")
