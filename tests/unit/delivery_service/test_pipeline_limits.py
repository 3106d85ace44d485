"""DeliveryPipeline's in-flight limits, against in-memory fakes of its Protocols (store, subscriptions, sender):
a task past its subscription's limit is deferred and its delivery recorded PENDING once; a copy that comes back
while the limit still holds is deferred again without the read of its state; with room, it is sent. Once the
subscription's pace says its next slot is due soon, a task past the limit waits for it in the worker instead.
A task that waited, for a slot or a rate-limit token, sends what its subscription is when the wait ends."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

import pytest

from delivery_service.limiter import Limiter
from delivery_service.pipeline import SATURATED, Defaults, DeliveryPipeline, circuit_open, circuit_since, host_of
from switchboard.delivery import policy
from switchboard.delivery.sender import Response
from switchboard.delivery.signing import delivery_headers
from switchboard.model.events import now_us
from switchboard.model.subscriptions import (
    Attempt,
    Delivery,
    DeliveryStatus,
    DeliveryTask,
    Subscription,
    SubscriptionStatus,
)
from switchboard.queue import Ack, DeadLetter, QueueMessage, Retry, Verdict
from switchboard.wire import encode_task
from tests.unit.factories import event

URL = "https://hooks.example.com/in"


class Store:
    def __init__(self) -> None:
        self.rows: dict[str, Delivery] = {}
        self.reads: list[str] = []
        self.attempts: list[Attempt] = []

    async def get_many(self, ids: Sequence[str]) -> dict[str, Delivery]:
        self.reads += ids
        return {i: self.rows[i] for i in ids if i in self.rows}

    async def record(self, d: Delivery, attempt: Attempt | None = None, *, state: bool = True) -> None:
        if state:
            self.rows[d.id] = dataclasses.replace(d)
        if attempt is not None:
            self.attempts.append(attempt)


class Subscriptions:
    def __init__(self, sub: Subscription) -> None:
        self.sub: Subscription | None = sub

    def get(self, subscription_id: str) -> Subscription | None:
        return self.sub if self.sub is not None and subscription_id == self.sub.id else None

    async def refresh(self, subscription_id: str) -> Subscription | None:
        return self.get(subscription_id)


class NoDisable:
    async def disable(self, subscription_id: str, reason: str, callback_url: str) -> bool:
        raise AssertionError("nothing here disables a subscription")


class HeldSender:
    """Answers 200 once ``release`` is set; counts the requests it got."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.posted = asyncio.Event()
        self.posts = 0
        self.urls: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.on_post: Callable[[], None] = lambda: None
        self.status = 200
        self.open = 0
        self.most = 0  # requests open at once, at most

    async def post(self, url: str, body: bytes, headers: dict[str, str], within: float) -> Response:
        self.posts += 1
        self.urls.append(url)
        self.headers.append(headers)
        self.on_post()
        self.open += 1
        self.most = max(self.most, self.open)
        self.posted.set()
        try:
            await self.release.wait()
        finally:
            self.open -= 1
        return Response(status=self.status, duration_us=1000)


def copy(delivery_id: str, headers: dict[str, object] | None = None) -> QueueMessage:
    task = DeliveryTask(delivery_id=delivery_id, subscription_id="sub_1", event=event(), created_us=now_us())
    return QueueMessage(
        body=encode_task(task), message_id=delivery_id, headers=headers or {}, redelivered=False, queue="q"
    )


class GatedLimiter:
    """Holds every task at its rate-limit token until ``open`` is set, then says it waited (a low rate)."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.waiting = 0

    async def acquire(self, key: str, rate: float) -> float:
        self.waiting += 1
        try:
            await self.open.wait()
        finally:
            self.waiting -= 1
        return 2.5

    def prune(self, now: float) -> int:
        return 0


def build(
    slot_wait_ms: int,
    max_in_flight: int = 1,
    host_in_flight: int = 64,
    limiter: Limiter | GatedLimiter | Turnstile | None = None,
) -> tuple[DeliveryPipeline, Store, HeldSender]:
    sub = Subscription(
        id="sub_1", client_id="c", callback_url=URL, max_in_flight=max_in_flight, secret="whsec_" + "A" * 32
    )
    store, sender = Store(), HeldSender()
    pipeline = DeliveryPipeline(
        Subscriptions(sub),
        store,
        NoDisable(),
        sender,
        limiter or Limiter(),
        Defaults(slot_wait_ms=slot_wait_ms, host_in_flight=host_in_flight),
        rng=random.Random(1),
    )
    return pipeline, store, sender


@pytest.fixture
def parts() -> tuple[DeliveryPipeline, Store, HeldSender]:
    return build(slot_wait_ms=250)


@pytest.fixture
def deferring() -> tuple[DeliveryPipeline, Store, HeldSender]:
    """``delivery.slot_wait_ms`` 0: a task past its limit is always deferred."""
    return build(slot_wait_ms=0)


def change_subscription(pipeline: DeliveryPipeline, **changes: Any) -> None:
    """What the worker's subscription cache would say after the control service changed it."""
    subs = pipeline.subscriptions
    assert isinstance(subs, Subscriptions) and subs.sub is not None
    subs.sub = dataclasses.replace(subs.sub, **changes)


async def know_the_pace(pipeline: DeliveryPipeline, sender: HeldSender) -> None:
    """One delivery answered at once: the subscription's pace is known (milliseconds)."""
    sender.release.set()
    assert [v.outcome for v in await pipeline.handle([copy("dlv_pace")])] == ["delivered"]
    sender.release.clear()
    sender.posted.clear()


async def soon(done: Callable[[], bool]) -> None:
    """Lets the loop run until ``done()``, for at most ~0.2 s."""
    for _ in range(200):
        if done():
            return
        await asyncio.sleep(0.001)


async def one_sending_one_waiting(
    pipeline: DeliveryPipeline, sender: HeldSender, headers: dict[str, object] | None = None
) -> tuple[asyncio.Task[list[Verdict]], asyncio.Task[list[Verdict]]]:
    """dlv_b holds the subscription's one slot (the sender holds its answer); dlv_c comes next."""
    held = asyncio.create_task(pipeline.handle([copy("dlv_b")]))
    await sender.posted.wait()
    waiting = asyncio.create_task(pipeline.handle([copy("dlv_c", headers)]))
    await soon(lambda: bool(pipeline.slots.waiting("sub_1")) or waiting.done())
    return held, waiting


async def test_a_copy_back_while_the_limit_holds_is_deferred_again_without_a_read(
    parts: tuple[DeliveryPipeline, Store, HeldSender],
) -> None:
    pipeline, store, sender = parts
    first = asyncio.create_task(pipeline.handle([copy("dlv_a")]))
    await sender.posted.wait()  # dlv_a holds the subscription's one slot

    (deferred,) = await pipeline.handle([copy("dlv_b")])
    assert isinstance(deferred, Retry) and deferred.outcome == "deferred"
    assert deferred.error.startswith(SATURATED) and 800 <= (deferred.delay_ms or 0) <= 1200
    assert store.rows["dlv_b"].status is DeliveryStatus.PENDING  # recorded once, with the reason
    assert store.reads == ["dlv_a", "dlv_b"]

    # The copy comes back with the worker's retry headers while dlv_a is still out.
    headers = {"x-attempt": deferred.attempt, "x-last-error": deferred.error, "x-retry-delay-ms": deferred.delay_ms}
    (again,) = await pipeline.handle([copy("dlv_b", headers)])
    assert isinstance(again, Retry) and again.error.startswith(SATURATED)
    assert 1600 <= (again.delay_ms or 0) <= 2400  # twice the last wait
    assert store.reads == ["dlv_a", "dlv_b"]  # no read this time
    assert sender.posts == 1

    sender.release.set()
    assert [type(v) for v in await first] == [Ack]
    (sent,) = await pipeline.handle([copy("dlv_b", headers)])  # room now: read, sent, recorded
    assert isinstance(sent, Ack) and sent.outcome == "delivered"
    assert store.reads == ["dlv_a", "dlv_b", "dlv_b"]
    recorded = store.rows["dlv_b"]
    assert recorded.status is DeliveryStatus.DELIVERED and recorded.attempts == 1 and sender.posts == 2


async def test_once_the_pace_is_known_a_deferred_copy_comes_back_when_a_slot_should_be_free(
    deferring: tuple[DeliveryPipeline, Store, HeldSender],
) -> None:
    """Without a pace a copy that waited 16 s would wait ~30 s; with requests that end within milliseconds it
    is booked for the shortest hold, and the next one just after it."""
    pipeline, _store, sender = deferring
    sender.release.set()
    assert [v.outcome for v in await pipeline.handle([copy("dlv_a")])] == ["delivered"]
    sender.release.clear()
    sender.posted.clear()
    held = asyncio.create_task(pipeline.handle([copy("dlv_b")]))
    await sender.posted.wait()
    long_wait = {"x-attempt": 0, "x-last-error": f"{SATURATED} 1 requests in flight", "x-retry-delay-ms": 16000}
    first, second = await pipeline.handle([copy("dlv_c", long_wait), copy("dlv_d")])
    assert isinstance(first, Retry) and isinstance(second, Retry)
    assert first.delay_ms is not None and second.delay_ms is not None
    assert 1000 <= first.delay_ms <= second.delay_ms < 1100
    sender.release.set()
    await held


@pytest.mark.parametrize("returning", [False, True], ids=["fresh", "deferred-before"])
async def test_past_a_fast_endpoints_limit_a_task_waits_for_the_next_slot_instead_of_a_deferral(
    parts: tuple[DeliveryPipeline, Store, HeldSender], returning: bool
) -> None:
    """Its requests end within milliseconds, so a task past its limit of 1 waits in the worker and is sent as
    soon as the request before it is answered: no deferral, no PENDING record, never two requests open. A copy
    deferred before (while the pace was unknown) that comes back at the limit waits the same way."""
    pipeline, store, sender = parts
    headers: dict[str, object] = (
        {"x-attempt": 0, "x-last-error": f"{SATURATED} 1 requests in flight", "x-retry-delay-ms": 1000}
        if returning
        else {}
    )
    await know_the_pace(pipeline, sender)
    held, waiting = await one_sending_one_waiting(pipeline, sender, headers)
    assert not waiting.done() and sender.posts == 2 and "dlv_c" not in store.rows  # waits: not sent, not deferred
    sender.release.set()
    assert [v.outcome for v in await held] == ["delivered"]
    (sent,) = await waiting
    assert isinstance(sent, Ack) and sent.outcome == "delivered"
    assert store.rows["dlv_c"].status is DeliveryStatus.DELIVERED and store.rows["dlv_c"].attempts == 1
    assert sender.posts == 3 and sender.most == 1
    assert pipeline.in_flight.subscription("sub_1") == 0 and pipeline.slots.total() == 0


async def test_a_slow_endpoints_task_past_its_limit_is_still_deferred_and_a_wait_that_runs_out_too(
    parts: tuple[DeliveryPipeline, Store, HeldSender],
) -> None:
    """A slot every 5 s is not due within the 250 ms a task may wait: deferred at once, as before. A task that
    did wait, for a request that then took longer than its pace said, is deferred after twice that wait."""
    pipeline, store, sender = parts
    held = asyncio.create_task(pipeline.handle([copy("dlv_a")]))
    await sender.posted.wait()
    pipeline.pacer.ended("sub_1", 5.0)
    (deferred,) = await pipeline.handle([copy("dlv_b")])
    assert isinstance(deferred, Retry) and deferred.outcome == "deferred" and deferred.error.startswith(SATURATED)
    assert store.rows["dlv_b"].status is DeliveryStatus.PENDING

    for _ in range(50):  # the pace falls to ~1 ms: the next task waits, for a request that does not end
        pipeline.pacer.ended("sub_1", 0.001)
    loop = asyncio.get_running_loop()
    started = loop.time()
    (ran_out,) = await pipeline.handle([copy("dlv_c")])
    assert isinstance(ran_out, Retry) and ran_out.outcome == "deferred" and ran_out.error.startswith(SATURATED)
    assert 0.5 <= loop.time() - started < 2  # the wait's timeout: twice slot_wait_ms
    assert store.rows["dlv_c"].status is DeliveryStatus.PENDING and pipeline.slots.total() == 0
    assert sender.posts == 1
    sender.release.set()
    await held


async def test_a_task_that_waited_for_a_slot_while_the_circuit_opened_is_deferred_for_the_cool_down(
    parts: tuple[DeliveryPipeline, Store, HeldSender],
) -> None:
    """The endpoint starts failing while a task waits for its slot: when the slot comes, the circuit is open,
    so the task sends nothing and is deferred to the end of the cool-down like any task of an open circuit."""
    pipeline, store, sender = parts
    await know_the_pace(pipeline, sender)
    sender.status = 503
    held, waiting = await one_sending_one_waiting(pipeline, sender)
    assert pipeline.slots.waiting("sub_1") == 1
    for _ in range(pipeline.breakers.settings.failure_threshold):  # other sends failed meanwhile
        pipeline.breakers.record("sub_1", failed=True, now=time.monotonic())
    sender.release.set()
    (failed,) = await held
    assert isinstance(failed, Retry) and failed.outcome != "deferred"  # dlv_b was sent: a 503, retried
    (deferred,) = await waiting
    assert isinstance(deferred, Retry) and deferred.outcome == "deferred"
    assert deferred.error.startswith("deferred: the endpoint's circuit is open")
    assert 20_000 <= (deferred.delay_ms or 0) <= 30_000  # the cool-down's rest
    assert sender.posts == 2 and store.rows["dlv_c"].status is DeliveryStatus.PENDING
    assert pipeline.in_flight.subscription("sub_1") == 0


async def test_a_half_open_circuits_probe_refused_for_the_in_flight_limit_lets_the_next_task_probe(
    parts: tuple[DeliveryPipeline, Store, HeldSender],
) -> None:
    """The cool-down is over and the next task is the probe, but its subscription's one slot is still held by
    a request from before: it is deferred, and the circuit does not wait two minutes for a probe never sent."""
    pipeline, _store, sender = parts
    held = asyncio.create_task(pipeline.handle([copy("dlv_a")]))
    await sender.posted.wait()
    long_ago = time.monotonic() - pipeline.breakers.settings.cooldown_seconds - 1
    for _ in range(pipeline.breakers.settings.failure_threshold):
        pipeline.breakers.record("sub_1", failed=True, now=long_ago)
    (deferred,) = await pipeline.handle([copy("dlv_b")])  # the probe, refused: no pace yet, no slot
    assert isinstance(deferred, Retry) and deferred.error.startswith(SATURATED)
    assert pipeline.breakers.admit("sub_1", time.monotonic()).hold == 0.0  # the next task may probe
    sender.release.set()
    await held


async def test_a_task_past_its_share_of_its_host_waits_for_its_next_slot_too() -> None:
    """Its own limit is 32, but a worker opens only 8 connections to its host and keeps the last 2 for
    endpoints with few requests out: at 6 out the subscription is refused for its host's sake, and with a
    known pace its next task waits for one of its 6 to end rather than go through a delay queue."""
    pipeline, store, sender = build(slot_wait_ms=250, max_in_flight=32, host_in_flight=8)
    await know_the_pace(pipeline, sender)
    held = [asyncio.create_task(pipeline.handle([copy(f"dlv_{i}")])) for i in range(6)]
    await soon(lambda: sender.open == 6)
    assert sender.open == 6 and pipeline.in_flight.refusal("sub_1", host_of(URL), 32) is not None
    waiting = asyncio.create_task(pipeline.handle([copy("dlv_7")]))
    await soon(lambda: bool(pipeline.slots.waiting("sub_1")) or waiting.done())
    assert pipeline.slots.waiting("sub_1") == 1 and "dlv_7" not in store.rows
    sender.release.set()
    assert [v.outcome for batch in await asyncio.gather(*held) for v in batch] == ["delivered"] * 6
    (sent,) = await waiting
    assert isinstance(sent, Ack) and sent.outcome == "delivered" and sender.most == 6


async def test_a_task_whose_subscription_is_disabled_while_it_waits_for_a_slot_sends_nothing() -> None:
    pipeline, store, sender = build(slot_wait_ms=250)
    await know_the_pace(pipeline, sender)
    held, waiting = await one_sending_one_waiting(pipeline, sender)
    assert pipeline.slots.waiting("sub_1") == 1
    change_subscription(pipeline, status=SubscriptionStatus.DISABLED)
    sender.release.set()
    await held
    (cancelled,) = await waiting
    assert isinstance(cancelled, Ack) and cancelled.outcome == "cancelled"
    assert store.rows["dlv_c"].status is DeliveryStatus.CANCELLED and sender.posts == 2
    assert pipeline.in_flight.subscription("sub_1") == 0


async def test_a_task_that_comes_while_others_wait_lines_up_behind_them_unless_room_opened() -> None:
    """Limit 1, one request out, one task waiting: the next task lines up behind it (it does not jump the line
    when the held request ends). Then the limit is raised to 3: the next task finds room, the waiting ones are
    given it first in order, and what is left is its own, so 3 requests go out at once without waiting for
    the held one."""
    pipeline, _store, sender = build(slot_wait_ms=250)
    await know_the_pace(pipeline, sender)
    held = asyncio.create_task(pipeline.handle([copy("dlv_a")]))
    await sender.posted.wait()
    line = [asyncio.create_task(pipeline.handle([copy("dlv_b")]))]
    await asyncio.sleep(0.01)
    line.append(asyncio.create_task(pipeline.handle([copy("dlv_c")])))
    await asyncio.sleep(0.01)
    assert pipeline.slots.waiting("sub_1") == 2 and sender.open == 1
    change_subscription(pipeline, max_in_flight=3)
    fresh = asyncio.create_task(pipeline.handle([copy("dlv_d")]))
    await asyncio.sleep(0.01)
    assert sender.open == 3 and pipeline.slots.waiting("sub_1") == 1  # b and c sending; d waits behind them
    sender.release.set()
    for t in [held, *line, fresh]:
        assert [v.outcome for v in await t] == ["delivered"]
    assert pipeline.in_flight.subscription("sub_1") == 0


async def test_a_failing_slot_wait_hook_costs_no_slot() -> None:
    pipeline, _store, sender = build(slot_wait_ms=250)

    def broken(taken: bool) -> None:
        raise RuntimeError("metrics are down")

    pipeline.on_wait = broken
    await know_the_pace(pipeline, sender)
    held, waiting = await one_sending_one_waiting(pipeline, sender)
    sender.release.set()
    assert [v.outcome for v in await held] == ["delivered"]
    assert [v.outcome for v in await waiting] == ["delivered"]
    assert pipeline.in_flight.subscription("sub_1") == 0 and pipeline.in_flight.total() == 0


async def test_a_task_whose_subscription_moved_host_while_it_waited_starts_over_for_the_new_one() -> None:
    pipeline, store, sender = build(slot_wait_ms=250)
    await know_the_pace(pipeline, sender)
    held, waiting = await one_sending_one_waiting(pipeline, sender)
    assert pipeline.slots.waiting("sub_1") == 1
    change_subscription(pipeline, callback_url="https://elsewhere.example.com/in")
    counted: list[int] = []
    sender.on_post = lambda: counted.append(pipeline.in_flight.host("elsewhere.example.com:443"))
    sender.release.set()
    assert [v.outcome for v in await held] == ["delivered"]
    assert [v.outcome for v in await waiting] == ["delivered"]
    assert sender.urls[-1] == "https://elsewhere.example.com/in"  # sent to where the subscription is now,
    assert counted == [1]  # counted against that host, not the one it waited on
    assert pipeline.in_flight.total() == 0 and store.rows["dlv_c"].attempts == 1


async def waiting_for_a_token(outcome_of_wait: Callable[[DeliveryPipeline], None]) -> tuple[Verdict, Store, HeldSender]:
    """dlv_a holds a slot and waits for its rate-limit token; ``outcome_of_wait`` changes the world meanwhile;
    then the token comes and the sender answers at once."""
    limiter = GatedLimiter()
    pipeline, store, sender = build(slot_wait_ms=250, max_in_flight=4, limiter=limiter)
    sender.release.set()
    task = asyncio.create_task(pipeline.handle([copy("dlv_a")]))
    await soon(lambda: limiter.waiting == 1)
    assert limiter.waiting == 1 and pipeline.in_flight.subscription("sub_1") == 1  # its slot is held meanwhile
    outcome_of_wait(pipeline)
    limiter.open.set()
    (verdict,) = await task
    assert pipeline.in_flight.total() == 0
    return verdict, store, sender


async def test_a_task_whose_subscription_is_disabled_while_it_waits_for_its_rate_token_sends_nothing() -> None:
    verdict, store, sender = await waiting_for_a_token(
        lambda p: change_subscription(p, status=SubscriptionStatus.DISABLED)
    )
    assert isinstance(verdict, Ack) and verdict.outcome == "cancelled"
    assert sender.posts == 0 and store.rows["dlv_a"].status is DeliveryStatus.CANCELLED
    assert store.rows["dlv_a"].last_error == "the subscription is disabled"


async def test_a_task_whose_subscription_is_deleted_while_it_waits_for_its_rate_token_sends_nothing() -> None:
    def delete(p: DeliveryPipeline) -> None:
        assert isinstance(p.subscriptions, Subscriptions)
        p.subscriptions.sub = None

    verdict, store, sender = await waiting_for_a_token(delete)
    assert isinstance(verdict, Ack) and verdict.outcome == "cancelled"
    assert sender.posts == 0 and store.rows["dlv_a"].last_error == "the subscription is deleted"


async def test_a_task_that_waited_for_its_rate_token_sends_to_the_new_path_signed_with_the_new_secret() -> None:
    """The secret was rotated (the old one already expired) and the path changed on the same host while the
    task waited: the request goes to the new path and verifies with the new secret only."""
    new_secret = "whsec_" + "B" * 32
    verdict, store, sender = await waiting_for_a_token(
        lambda p: change_subscription(p, callback_url=URL + "/v2", secret=new_secret)
    )
    assert isinstance(verdict, Ack) and verdict.outcome == "delivered"
    assert sender.urls == [URL + "/v2"]
    (sent,) = sender.headers
    stamp = float(sent["webhook-timestamp"])
    expected = delivery_headers("dlv_a", event().body, [new_secret], stamp)["webhook-signature"]
    assert sent["webhook-signature"] == expected
    assert store.rows["dlv_a"].status is DeliveryStatus.DELIVERED


class Holding:
    """The driver's side of a message, as the worker's: held while its channel is open."""

    held = True


async def test_a_task_whose_channel_closes_while_it_waits_for_its_rate_token_sends_nothing() -> None:
    """Found in review: the worker lost its channel (missed heartbeats, a dropped connection) while the task
    waited; the broker hands it to the partition's next worker, which reads the same state and sends the same
    attempt. Sent here as well, the endpoint got it twice and the two records raced (a late RETRYING over a
    DELIVERED). Nothing is sent, nothing recorded, the slot is given back."""
    limiter = GatedLimiter()
    pipeline, store, sender = build(slot_wait_ms=250, max_in_flight=4, limiter=limiter)
    sender.release.set()
    raw = Holding()
    task = asyncio.create_task(pipeline.handle([dataclasses.replace(copy("dlv_a"), raw=raw)]))
    await soon(lambda: limiter.waiting == 1)
    raw.held = False
    limiter.open.set()
    (verdict,) = await task
    assert isinstance(verdict, Ack) and verdict.outcome == "abandoned"
    assert sender.posts == 0 and store.rows == {} and pipeline.in_flight.total() == 0


async def test_a_task_whose_subscription_moved_host_while_it_waited_for_its_rate_token_goes_to_the_new_one() -> None:
    verdict, store, sender = await waiting_for_a_token(
        lambda p: change_subscription(p, callback_url="https://elsewhere.example.com/in")
    )
    assert isinstance(verdict, Ack) and verdict.outcome == "delivered"
    assert sender.urls == ["https://elsewhere.example.com/in"] and store.rows["dlv_a"].attempts == 1


async def test_a_task_whose_circuit_opened_while_it_waited_for_its_rate_token_is_deferred() -> None:
    def fail(p: DeliveryPipeline) -> None:  # other tasks' sends failed meanwhile
        for _ in range(p.breakers.settings.failure_threshold):
            p.breakers.record("sub_1", failed=True, now=time.monotonic())

    verdict, store, sender = await waiting_for_a_token(fail)
    assert isinstance(verdict, Retry) and verdict.outcome == "deferred"
    assert verdict.error.startswith("deferred: the endpoint's circuit is open")
    assert sender.posts == 0 and store.rows["dlv_a"].status is DeliveryStatus.PENDING


async def test_a_task_that_fails_leaves_no_task_of_its_batch_sending_when_the_worker_retries_it() -> None:
    """dlv_b's record fails while dlv_a is still sending: the batch's failure comes only once dlv_a is over
    and recorded, so the worker's retry of the batch finds dlv_a delivered and does not send it again."""

    class SecondAnswersAtOnce(HeldSender):
        async def post(self, url: str, body: bytes, headers: dict[str, str], within: float) -> Response:
            if headers["webhook-id"] == "dlv_b":
                self.posts += 1
                return Response(status=200, duration_us=1000)
            return await super().post(url, body, headers, within)

    pipeline, store, _ = build(slot_wait_ms=250, max_in_flight=4)
    sender = SecondAnswersAtOnce()
    pipeline.sender = sender
    recorded = store.record

    async def record(d: Delivery, attempt: Attempt | None = None, *, state: bool = True) -> None:
        if d.id == "dlv_b":
            raise RuntimeError("the disk is full")
        await recorded(d, attempt, state=state)

    store.record = record  # type: ignore[method-assign]
    first = asyncio.create_task(pipeline.handle([copy("dlv_a"), copy("dlv_b")]))
    await soon(lambda: sender.posts == 2)
    await asyncio.sleep(0.02)
    assert sender.posts == 2 and sender.open == 1 and not first.done()  # dlv_a sending: no answer yet
    sender.release.set()
    with pytest.raises(RuntimeError, match="disk is full"):
        await first
    assert store.rows["dlv_a"].status is DeliveryStatus.DELIVERED
    store.record = recorded  # type: ignore[method-assign]
    again = await pipeline.handle([copy("dlv_a"), copy("dlv_b")])
    assert [v.outcome for v in again] == ["already_final", "delivered"]
    assert sender.posts == 3 and sender.most == 1 and pipeline.in_flight.total() == 0


class Turnstile:
    """Holds each task at its rate-limit token until the test lets that one through (in arrival order)."""

    def __init__(self) -> None:
        self.gates: list[asyncio.Event] = []

    async def acquire(self, key: str, rate: float) -> float:
        gate = asyncio.Event()
        self.gates.append(gate)
        await gate.wait()
        return 1.0

    def prune(self, now: float) -> int:
        return 0


def open_circuit(pipeline: DeliveryPipeline, cooled: bool) -> None:
    """Other sends failed: the circuit opens; ``cooled``: long enough ago that its cool-down is over."""
    settings = pipeline.breakers.settings
    at = time.monotonic() - (settings.cooldown_seconds + 1 if cooled else 0)
    for _ in range(settings.failure_threshold):
        pipeline.breakers.record("sub_1", failed=True, now=at)


async def test_a_probe_cancelled_while_it_waits_for_its_token_lets_the_next_task_probe() -> None:
    limiter = Turnstile()
    pipeline, _store, sender = build(slot_wait_ms=250, max_in_flight=4, limiter=limiter)
    open_circuit(pipeline, cooled=True)
    probe = asyncio.create_task(pipeline.handle([copy("dlv_probe")]))
    await soon(lambda: len(limiter.gates) == 1)
    assert pipeline.breakers.admit("sub_1", time.monotonic()).hold > 0  # its probe is out: the others wait
    probe.cancel()  # the worker stops
    with pytest.raises(asyncio.CancelledError):
        await probe
    assert pipeline.breakers.admit("sub_1", time.monotonic()).hold == 0.0  # the next task probes at once
    assert sender.posts == 0 and pipeline.in_flight.total() == 0


async def test_a_task_let_through_before_the_circuit_opened_waits_for_the_probe_after_its_token() -> None:
    """Allowed while the circuit was closed, it waited for its token while the circuit opened and cooled down:
    it is not sent as a second probe the breaker does not know of; it is deferred for the probe to decide."""
    limiter = GatedLimiter()
    pipeline, store, sender = build(slot_wait_ms=250, max_in_flight=4, limiter=limiter)
    sender.release.set()
    task = asyncio.create_task(pipeline.handle([copy("dlv_a")]))
    await soon(lambda: limiter.waiting == 1)
    open_circuit(pipeline, cooled=True)
    limiter.open.set()
    (deferred,) = await task
    assert isinstance(deferred, Retry) and deferred.outcome == "deferred" and deferred.delay_ms == 1000
    assert sender.posts == 0 and store.rows["dlv_a"].status is DeliveryStatus.PENDING
    assert pipeline.breakers.admit("sub_1", time.monotonic()).hold == 0.0  # the next task is the probe


async def test_a_task_that_starts_over_does_not_release_another_tasks_probe() -> None:
    """dlv_a was let through while the circuit was closed and waits for its token; the circuit opens, cools
    down, and dlv_probe becomes its probe (waiting for its token too). dlv_a's subscription moves host: it
    starts over without touching the probe, so no second probe goes while the first is out."""
    limiter = Turnstile()
    pipeline, _store, sender = build(slot_wait_ms=250, max_in_flight=4, limiter=limiter)
    sender.release.set()
    first = asyncio.create_task(pipeline.handle([copy("dlv_a")]))
    await soon(lambda: len(limiter.gates) == 1)
    open_circuit(pipeline, cooled=True)
    probe = asyncio.create_task(pipeline.handle([copy("dlv_probe")]))
    await soon(lambda: len(limiter.gates) == 2)
    change_subscription(pipeline, callback_url="https://elsewhere.example.com/in")
    limiter.gates[0].set()  # dlv_a's token: it finds the move and starts over
    (restarted,) = await asyncio.wait_for(first, 2)  # (a second probe would wait at the turnstile)
    assert isinstance(restarted, Retry) and restarted.outcome == "deferred"  # behind the probe, still out
    assert pipeline.breakers.admit("sub_1", time.monotonic()).hold > 0  # the probe is still the only one
    limiter.gates[1].set()  # the probe's token: it finds the move too and, still the probe, starts over
    await soon(lambda: len(limiter.gates) == 3)
    limiter.gates[2].set()
    assert [v.outcome for v in await probe] == ["delivered"]
    assert sender.posts == 1 and pipeline.breakers.admit("sub_1", time.monotonic()).hold == 0.0  # closed by the probe


async def test_what_the_worker_keeps_for_a_subscription_deleted_or_disabled_since_is_dropped() -> None:
    """Its pace, its line's last move and its circuit were kept for ever when no task of it came back; the
    enabled subscription's stay. The rate buckets that refilled go too: a new one starts full, as they were."""
    pipeline, _store, sender = build(slot_wait_ms=250)
    await know_the_pace(pipeline, sender)
    pipeline.breakers.record("sub_1", failed=True, now=time.monotonic())
    kept = {"pace": pipeline.pacer.subscriptions(), "line": pipeline.slots.subscriptions()}
    assert kept == {"pace": {"sub_1"}, "line": {"sub_1"}} and pipeline.breakers.keys() == {"sub_1"}
    assert pipeline.forget_gone() == 0  # enabled: kept
    assert pipeline.pacer.latency("sub_1") is not None and pipeline.breakers.keys() == {"sub_1"}
    change_subscription(pipeline, status=SubscriptionStatus.DISABLED)
    assert pipeline.forget_gone() == 1
    assert not pipeline.pacer.subscriptions() and not pipeline.slots.subscriptions() and not pipeline.breakers.keys()


def test_a_rate_bucket_that_refilled_is_dropped_and_one_in_debt_is_kept() -> None:
    limiter = Limiter()

    async def take(key: str, rate: float, n: int) -> None:
        for _ in range(n):
            await limiter.acquire(key, rate)

    asyncio.run(take("idle", 1000, 1))  # one token of 1,000: refilled 1 ms later
    asyncio.run(take("busy", 2, 2))  # both tokens of 2 per second: empty for the next 0.5 s
    assert len(limiter) == 2
    time.sleep(0.01)
    assert limiter.prune(time.monotonic()) == 1 and len(limiter) == 1
    assert limiter.prune(time.monotonic() + 1.0) == 1 and len(limiter) == 0  # refilled a second on


def stored(delivery_id: str, status: DeliveryStatus, attempts: int, **more: Any) -> Delivery:
    """A delivery of sub_1 as the store holds it after ``attempts`` attempts."""
    return Delivery(
        id=delivery_id,
        subscription_id="sub_1",
        source="shop",
        event_id="evt_1",
        event_type="invoice.paid",
        status=status,
        attempts=attempts,
        **more,
    )


async def test_a_task_whose_delivery_failed_is_dead_lettered_again_without_a_send() -> None:
    """Recorded FAILED, then its dead-letter copy was refused (or its worker died before it): the task came
    back and was acked as final, and the delivery had no dead letter to find or redrive."""
    pipeline, store, sender = build(slot_wait_ms=250)
    store.rows["dlv_f"] = stored("dlv_f", DeliveryStatus.FAILED, 8, last_error="http_5xx: HTTP 503")
    (verdict,) = await pipeline.handle([copy("dlv_f")])
    assert isinstance(verdict, DeadLetter) and (verdict.attempt, verdict.error) == (8, "http_5xx: HTTP 503")
    assert verdict.again  # a copy of that death: the recorder never takes it for a new one
    assert sender.posts == 0


async def test_a_copy_from_before_the_last_attempt_waits_for_the_scheduled_one() -> None:
    """Attempt 3 answered 429 with Retry-After 60 s and was recorded RETRYING; a copy from before it (x-attempt
    2: its batch run again after it raised, or left by a worker killed after the retry copy) came back and was
    sent at once, ahead of the endpoint's Retry-After. It is deferred to the scheduled moment; the scheduled
    copy (x-attempt 3) is sent."""
    pipeline, store, sender = build(slot_wait_ms=250)
    sender.release.set()
    store.rows["dlv_r"] = stored("dlv_r", DeliveryStatus.RETRYING, 3, next_attempt_us=now_us() + 60_000_000)
    (early,) = await pipeline.handle([copy("dlv_r", {"x-attempt": 2})])
    assert isinstance(early, Retry) and early.outcome == "deferred" and early.attempt == 3
    assert 55_000 <= (early.delay_ms or 0) <= 60_000 and sender.posts == 0
    (scheduled,) = await pipeline.handle([copy("dlv_r", {"x-attempt": 3})])
    assert isinstance(scheduled, Ack) and scheduled.outcome == "delivered" and sender.posts == 1


async def test_only_a_fresh_delivery_reports_its_latency(parts: tuple[DeliveryPipeline, Store, HeldSender]) -> None:
    """Found in review: a replay's or a redrive's delivery keeps the event's arrival time, so it reported the
    event's age (days) as its latency. Timed: a delivery with no row before its send, not a replay."""
    pipeline, store, sender = parts
    sender.release.set()
    (fresh,) = await pipeline.handle([copy("dlv_fresh")])
    assert isinstance(fresh, Ack) and fresh.outcome == "delivered" and fresh.latency_ms is not None

    redriven = copy("dlv_redriven")  # its row says PENDING with 0 attempts: a redrive's reset
    store.rows["dlv_redriven"] = Delivery(
        "dlv_redriven", "sub_1", "shop", "evt_1", "invoice.paid", DeliveryStatus.PENDING, created_us=1
    )
    task = DeliveryTask("dlv_replayed", "sub_1", event(), created_us=1, replay_id="rpl_1")
    replayed = QueueMessage(body=encode_task(task), message_id="dlv_replayed", headers={}, redelivered=False, queue="q")
    for message in (redriven, replayed):
        (ack,) = await pipeline.handle([message])
        assert isinstance(ack, Ack) and (ack.outcome, ack.latency_ms) == ("delivered", None)


async def test_a_failed_send_of_a_task_lost_while_its_post_was_out_is_history_not_the_deliverys_state() -> None:
    """Found in review: worker A lost its channel while its POST was out; the partition's next worker B sent the
    task and recorded DELIVERED; A's late failure was then written over it (RETRYING, for good: A's Retry copy
    is dropped with the message). A records its attempt only and gives the task up; B's DELIVERED stands."""
    a, store, a_sender = build(slot_wait_ms=250)
    a_sender.status = 503
    raw = Holding()
    lost = asyncio.create_task(a.handle([dataclasses.replace(copy("dlv_a"), raw=raw)]))
    await a_sender.posted.wait()
    raw.held = False  # the broker hands the task to the partition's next worker
    b, _, b_sender = build(slot_wait_ms=250)
    b.deliveries = store
    b_sender.release.set()
    (taken,) = await b.handle([copy("dlv_a")])
    assert isinstance(taken, Ack) and store.rows["dlv_a"].status is DeliveryStatus.DELIVERED
    a_sender.release.set()
    (verdict,) = await lost
    assert isinstance(verdict, Ack) and verdict.outcome == "abandoned"
    assert store.rows["dlv_a"].status is DeliveryStatus.DELIVERED
    assert sorted((x.outcome.value, x.http_status) for x in store.attempts) == [("delivered", 200), ("retrying", 503)]
    assert len({x.run_id for x in store.attempts}) == 2


async def test_a_success_of_a_task_lost_while_its_post_was_out_is_recorded() -> None:
    """The other way round: A's send succeeded after it lost the task. Recorded DELIVERED, so that the worker
    that takes the task next acks it without sending it a second time."""
    a, store, a_sender = build(slot_wait_ms=250)
    raw = Holding()
    lost = asyncio.create_task(a.handle([dataclasses.replace(copy("dlv_a"), raw=raw)]))
    await a_sender.posted.wait()
    raw.held = False
    a_sender.release.set()
    await lost
    assert store.rows["dlv_a"].status is DeliveryStatus.DELIVERED
    b, _, b_sender = build(slot_wait_ms=250)
    b.deliveries = store
    (taken,) = await b.handle([copy("dlv_a")])
    assert isinstance(taken, Ack) and b_sender.posts == 0


async def test_while_a_probe_is_out_the_other_tasks_are_deferred_until_its_answer_is_due() -> None:
    """A second at a time, a backlog went round the delay queue once a second for as long as the probe was out
    (up to its timeout): a state read and a confirmed publish per task and second. Found in review."""
    limiter = Turnstile()
    pipeline, _store, sender = build(slot_wait_ms=250, max_in_flight=4, limiter=limiter)
    open_circuit(pipeline, cooled=True)
    probe = asyncio.create_task(pipeline.handle([copy("dlv_probe")]))
    await soon(lambda: len(limiter.gates) == 1)
    (deferred,) = await pipeline.handle([copy("dlv_b")])
    assert isinstance(deferred, Retry) and deferred.outcome == "deferred"
    timeout_ms = pipeline.defaults.timeout_ms
    assert timeout_ms <= (deferred.delay_ms or 0) <= timeout_ms + 1000  # the probe's timeout and a margin
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    assert sender.posts == 0


async def test_a_task_lost_while_it_waited_for_its_token_is_not_deferred_over_the_next_workers_record() -> None:
    """Its channel closed while it waited (the partition's next worker has the task and may have recorded its
    send), and its circuit opened meanwhile: its deferral wrote PENDING over that record. It is abandoned."""
    limiter = GatedLimiter()
    pipeline, store, sender = build(slot_wait_ms=250, max_in_flight=4, limiter=limiter)
    raw = SimpleNamespace(held=True)
    message = dataclasses.replace(copy("dlv_a"), raw=raw)
    task = asyncio.create_task(pipeline.handle([message]))
    await soon(lambda: limiter.waiting == 1)
    raw.held = False  # the channel closed
    open_circuit(pipeline, cooled=False)
    limiter.open.set()
    (verdict,) = await task
    assert isinstance(verdict, Ack) and verdict.outcome == "abandoned"
    assert "dlv_a" not in store.rows and sender.posts == 0 and pipeline.in_flight.total() == 0


async def test_a_delivery_its_circuit_held_back_longer_than_the_rest_of_its_schedule_is_dead_lettered() -> None:
    """While its circuit was open a task was deferred without an attempt, for as long as the endpoint stayed
    down: never dead-lettered, and the delay queues grew by a whole event per task (found in review). Held back
    by its circuit (since its copies' first circuit deferral in a row) past the rest of its schedule, with the
    jitter and a longest cool-down more, it is FAILED and dead-lettered, which a redrive sends again. A task
    held back before for another reason, or that waited long for a Retry-After, starts its count at its first
    circuit deferral (counted from the row's last write, such a task was given up at once: found in review)."""
    pipeline, store, sender = build(slot_wait_ms=250, max_in_flight=4)
    open_circuit(pipeline, cooled=False)
    hour = 3_600_000_000
    now = now_us()

    def retrying(delivery_id: str) -> Delivery:  # attempt 3 made 40 hours ago
        return Delivery(delivery_id, "sub_1", "shop", "e", "t", DeliveryStatus.RETRYING, 3, updated_us=now - 40 * hour)

    for name in ("dlv_old", "dlv_young", "dlv_first", "dlv_saturated"):
        store.rows[name] = retrying(name)

    def held_since(delivery_id: str, since_us: int) -> QueueMessage:
        return copy(delivery_id, {"x-attempt": 3, "x-last-error": circuit_open(30.0, since_us)})

    # The rest of the default schedule after attempt 3 is 30 min + 2 h + 5 h + 10 h + 10 h (27.5 h; 30.4 h with
    # the jitter and a 10-minute cool-down).
    verdicts = await pipeline.handle(
        [
            held_since("dlv_old", now - 31 * hour),
            held_since("dlv_young", now - 29 * hour),
            copy("dlv_first", {"x-attempt": 3, "x-last-error": "THROTTLED: 429, Retry-After honoured (3600 s)"}),
            copy("dlv_saturated", {"x-attempt": 3, "x-last-error": f"{SATURATED} 4 requests in flight"}),
            copy("dlv_fresh"),
        ]
    )
    old, young, first, saturated, fresh = verdicts
    assert isinstance(old, DeadLetter) and old.error.startswith("CIRCUIT_OPEN: the endpoint's circuit stayed open")
    assert store.rows["dlv_old"].status is DeliveryStatus.FAILED and store.rows["dlv_old"].attempts == 3
    assert [v.outcome for v in (young, first, saturated, fresh)] == ["deferred"] * 4
    assert store.rows["dlv_young"].status is DeliveryStatus.RETRYING and sender.posts == 0
    # Each deferral's copy says since when its circuit holds it back: the first ones from now on.
    assert all(isinstance(v, Retry) for v in (young, first, fresh))
    since = [circuit_since(copy("x", {"x-last-error": v.error})) for v in (young, first, fresh)]  # type: ignore[union-attr]
    assert abs(since[0] - (now - 29 * hour)) < 1_000_000
    assert all(abs(s - now) < 5_000_000 for s in since[1:])


class Disables:
    """Disables the subscription unless its client moved it to another URL meanwhile (``moved``)."""

    def __init__(self, moved: bool) -> None:
        self.moved = moved
        self.asked: list[str] = []

    async def disable(self, subscription_id: str, reason: str, callback_url: str) -> bool:
        self.asked.append(callback_url)
        return not self.moved


@pytest.mark.parametrize("moved", [False, True])
async def test_a_410_of_a_url_the_subscription_moved_from_sends_the_delivery_again(moved: bool) -> None:
    """A 410 from the URL the POST went to while the client moved the subscription to a new one: nothing is
    disabled (the store's condition on the URL), and the delivery, failed and dead-lettered as "disabled",
    never reached the new URL (found in review). It is tried again a second later, at its subscription's URL."""
    pipeline, store, sender = build(slot_wait_ms=250, max_in_flight=4)
    disabler = Disables(moved)
    pipeline.disabler = disabler
    sender.status = 410
    sender.release.set()
    (verdict,) = await pipeline.handle([copy("dlv_a")])
    assert disabler.asked == [URL]
    row = store.rows["dlv_a"]
    if moved:
        assert isinstance(verdict, Retry) and verdict.delay_ms == 1000 and verdict.attempt == 1
        assert row.status is DeliveryStatus.RETRYING and "no longer sends to" in row.last_error
        assert store.attempts[-1].outcome is DeliveryStatus.RETRYING
    else:
        assert isinstance(verdict, DeadLetter) and verdict.outcome == "disabled"
        assert row.status is DeliveryStatus.FAILED


async def test_a_410_of_a_url_moved_from_on_the_last_attempt_says_so() -> None:
    """Out of attempts, the delivery fails; its error says the 410 came from a URL the subscription no longer
    sends to (it never reached the new one), not the bare 410 (found in review)."""
    pipeline, store, sender = build(slot_wait_ms=250, max_in_flight=4)
    pipeline.disabler = Disables(moved=True)
    sender.status = 410
    sender.release.set()
    last = policy.DEFAULT_POLICY.max_attempts
    store.rows["dlv_a"] = Delivery("dlv_a", "sub_1", "shop", "e", "t", DeliveryStatus.RETRYING, last - 1)
    (verdict,) = await pipeline.handle([copy("dlv_a", {"x-attempt": last - 1})])
    assert isinstance(verdict, DeadLetter) and verdict.outcome == "failed"
    assert "no longer sends to" in verdict.error and store.rows["dlv_a"].status is DeliveryStatus.FAILED
