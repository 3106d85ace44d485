"""A replay to one subscription sends only what that subscription takes, to an enabled one, at a pace without
bursts, and counts deliveries cancelled meanwhile as failed. Found in review: a targeted replay sent every
event of the selection (other sources' and types' data to a client that never subscribed to it), a replay to
a disabled subscription counted its cancelled deliveries done, and time spent listing skipped events was
saved up and spent in one burst. Fakes stand in for the store and the broker."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import pytest

from control_service.replay import Limits, ReplayManager, Selection
from switchboard.errors import FailedPrecondition, InvalidRequest
from switchboard.model.events import EventStatus, EventSummary, StoredEvent
from switchboard.model.operations import ReplayState
from switchboard.model.subscriptions import Delivery, DeliveryStatus, DeliveryTask, Subscription, SubscriptionStatus
from tests.unit.control_service.test_replay_runner import Jobs, until
from tests.unit.factories import event

SEL = Selection(source="shop", start_us=1_000_000, end_us=2_000_000, subscription_id="sub_1")


def body(i: int, amount: int) -> bytes:
    return json.dumps({"id": f"evt_{i}", "data": {"object": {"amount_due": amount}}}).encode()


class Store:
    """Events ``(type, amount)`` in order; ``slow_pages`` pages are listed with a pause each."""

    def __init__(self, kinds: Sequence[tuple[str, int]], *, page_pause: float = 0.0) -> None:
        self.kinds = list(kinds)
        self.page_pause = page_pause

    async def list(self, source: str, start_us: int, end_us: int, limit: int, after: Any) -> Any:
        start = after or 0
        if self.page_pause:
            await asyncio.sleep(self.page_pause)
        page = [
            EventSummary("shop", f"evt_{i}", t, 1_500_000, EventStatus.PROCESSED, "r0")
            for i, (t, _) in enumerate(self.kinds[start : start + limit], start)
        ]
        return page, (start + limit if start + limit < len(self.kinds) else None)

    async def get(self, source: str, event_id: str) -> StoredEvent:
        i = int(event_id.split("_")[1])
        t, amount = self.kinds[i]
        return StoredEvent(event(event_id=event_id, event_type=t, body=body(i, amount)), EventStatus.PROCESSED)


class Outbound:
    """The publisher and the deliveries' store: every task published is at once in ``status``."""

    def __init__(self, status: DeliveryStatus = DeliveryStatus.DELIVERED) -> None:
        self.status = status
        self.tasks: list[DeliveryTask] = []
        self.at: list[float] = []

    async def publish_task(self, task: DeliveryTask) -> None:
        self.tasks.append(task)
        self.at.append(asyncio.get_running_loop().time())

    async def get_many(self, ids: Sequence[str]) -> dict[str, Delivery]:
        sent = {t.delivery_id: t for t in self.tasks}
        return {
            i: Delivery(i, "sub_1", "shop", sent[i].event.event_id, sent[i].event.event_type, self.status)
            for i in ids
            if i in sent
        }


class Subscriptions:
    def __init__(self, sub: Subscription) -> None:
        self.sub = sub

    async def get(self, subscription_id: str) -> Subscription | None:
        return self.sub if subscription_id == self.sub.id else None


def subscription(**over: Any) -> Subscription:
    fields: dict[str, Any] = {
        "id": "sub_1",
        "client_id": "c",
        "callback_url": "https://h.example.com/",
        "event_types": ("invoice.*",),
        "trigger_conditions": "event.data.object.amount_due > 100",
    }
    return Subscription(**(fields | over))


def manager(store: Store, out: Outbound, sub: Subscription) -> ReplayManager:
    return ReplayManager(store, out, Subscriptions(sub), Jobs(), out, Limits())  # type: ignore[arg-type]


async def test_a_replay_to_a_subscription_sends_only_the_events_it_takes() -> None:
    store = Store([("invoice.paid", 500), ("charge.succeeded", 500), ("invoice.paid", 50), ("invoice.created", 900)])
    out = Outbound()
    replays = manager(store, out, subscription())
    job = await replays.start(SEL)
    await until(lambda: job.state is not ReplayState.RUNNING)
    # evt_1: another type; evt_2: its condition does not take it.
    assert [t.event.event_id for t in out.tasks] == ["evt_0", "evt_3"]
    assert (job.state, job.matched, job.queued, job.done, job.failed) == (ReplayState.DONE, 2, 2, 2, 0)
    dry = await replays.start(Selection(**{**SEL.__dict__, "dry_run": True}))
    await until(lambda: dry.state is not ReplayState.RUNNING)
    assert dry.matched == 3  # by sources and types: the condition is checked on each body when it is sent

    with pytest.raises(FailedPrecondition) as refused:
        await replays.replay_event("shop", "evt_2", "sub_1", "test")
    assert refused.value.reason == "SUBSCRIPTION_NOT_MATCHING" and len(out.tasks) == 2
    await replays.replay_event("shop", "evt_3", "sub_1", "test")
    assert [t.event.event_id for t in out.tasks] == ["evt_0", "evt_3", "evt_3"]


async def test_a_replay_to_a_disabled_subscription_is_refused_and_cancelled_deliveries_count_failed() -> None:
    store = Store([("invoice.paid", 500)])
    disabled = manager(store, Outbound(), subscription(status=SubscriptionStatus.DISABLED))
    for start in (disabled.start(SEL), disabled.replay_event("shop", "evt_0", "sub_1", "test")):
        with pytest.raises(FailedPrecondition) as refused:
            await start
        assert refused.value.reason == "SUBSCRIPTION_DISABLED"
    out = Outbound(DeliveryStatus.CANCELLED)  # disabled while the job ran: nothing was sent
    job = await manager(store, out, subscription()).start(SEL)
    await until(lambda: job.state is not ReplayState.RUNNING)
    assert (job.state, job.queued, job.done, job.failed) == (ReplayState.DONE, 1, 0, 1)


async def test_time_spent_listing_skipped_events_is_not_spent_in_a_burst() -> None:
    """At 20 events/s, half a second listing other types used to let ~10 events out at once."""
    store = Store([("charge.succeeded", 500)] * 250 + [("invoice.paid", 500)] * 6, page_pause=0.25)
    out = Outbound()
    every = subscription(event_types=(), trigger_conditions="")
    job = await manager(store, out, every).start(
        Selection(**{**SEL.__dict__, "rate_per_second": 20, "event_types": ("invoice.*",)})
    )
    await until(lambda: job.state is not ReplayState.RUNNING, seconds=10)
    assert len(out.tasks) == 6
    gaps = [b - a for a, b in zip(out.at, out.at[1:], strict=False)]
    assert min(gaps) > 0.04, gaps  # 1/20 s apart, give or take the loop's timer


async def test_a_range_replay_to_a_subscription_that_takes_no_event_of_the_source_is_refused() -> None:
    """As the single-event path refuses it: it ran, matched nothing, and ended DONE with 0."""
    replays = manager(Store([("invoice.paid", 500)]), Outbound(), subscription(sources=("github",)))
    with pytest.raises(FailedPrecondition) as refused:
        await replays.start(SEL)
    assert refused.value.reason == "SUBSCRIPTION_NOT_MATCHING" and refused.value.metadata["source"] == "shop"


async def test_a_single_replay_without_a_source_or_an_id_is_an_invalid_request() -> None:
    """It was answered NOT_FOUND, as if an event could have no source or id."""
    replays = manager(Store([("invoice.paid", 500)]), Outbound(), subscription())
    for source, event_id, field in (("", "evt_0", "source"), ("shop", "", "event_id")):
        with pytest.raises(InvalidRequest) as refused:
            await replays.replay_event(source, event_id, "", "test")
        assert (refused.value.reason, refused.value.metadata) == ("FIELD_REQUIRED", {"field": field})
