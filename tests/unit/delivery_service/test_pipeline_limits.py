"""DeliveryPipeline's in-flight limits, against in-memory fakes of its Protocols (store, subscriptions, sender):
a task past its subscription's limit is deferred and its delivery recorded PENDING once; a copy that comes back
while the limit still holds is deferred again without the read of its state; with room, it is sent."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

import pytest

from delivery_service.limiter import Limiter
from delivery_service.pipeline import SATURATED, Defaults, DeliveryPipeline
from switchboard.delivery.sender import Response
from switchboard.model.subscriptions import Attempt, Delivery, DeliveryStatus, DeliveryTask, Subscription
from switchboard.queue import Ack, QueueMessage, Retry
from switchboard.wire import encode_task
from tests.unit.factories import event

URL = "https://hooks.example.com/in"


class Store:
    def __init__(self) -> None:
        self.rows: dict[str, Delivery] = {}
        self.reads: list[str] = []

    async def get_many(self, ids: Sequence[str]) -> dict[str, Delivery]:
        self.reads += ids
        return {i: self.rows[i] for i in ids if i in self.rows}

    async def record(self, d: Delivery, attempt: Attempt | None = None) -> None:
        self.rows[d.id] = d


class Subscriptions:
    def __init__(self, sub: Subscription) -> None:
        self.sub = sub

    def get(self, subscription_id: str) -> Subscription | None:
        return self.sub if subscription_id == self.sub.id else None

    async def refresh(self, subscription_id: str) -> Subscription | None:
        return self.get(subscription_id)


class NoDisable:
    async def disable(self, subscription_id: str, reason: str) -> None:
        raise AssertionError("nothing here disables a subscription")


class HeldSender:
    """Answers 200 once ``release`` is set; counts the requests it got."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.posted = asyncio.Event()
        self.posts = 0

    async def post(self, url: str, body: bytes, headers: dict[str, str], within: float) -> Response:
        self.posts += 1
        self.posted.set()
        await self.release.wait()
        return Response(status=200, duration_us=1000)


def copy(delivery_id: str, headers: dict[str, object] | None = None) -> QueueMessage:
    task = DeliveryTask(delivery_id=delivery_id, subscription_id="sub_1", event=event(), created_us=1)
    return QueueMessage(
        body=encode_task(task), message_id=delivery_id, headers=headers or {}, redelivered=False, queue="q"
    )


@pytest.fixture
def parts() -> tuple[DeliveryPipeline, Store, HeldSender]:
    sub = Subscription(id="sub_1", client_id="c", callback_url=URL, max_in_flight=1, secret="whsec_" + "A" * 32)
    store, sender = Store(), HeldSender()
    pipeline = DeliveryPipeline(
        Subscriptions(sub), store, NoDisable(), sender, Limiter(), Defaults(), rng=random.Random(1)
    )
    return pipeline, store, sender


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
    parts: tuple[DeliveryPipeline, Store, HeldSender],
) -> None:
    """Without a pace a copy that waited 16 s would wait ~30 s; with requests that end within milliseconds it
    is booked for the shortest hold, and the next one just after it."""
    pipeline, _store, sender = parts
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
