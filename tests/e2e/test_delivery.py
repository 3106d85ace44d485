"""Outbound delivery through the real stack: a Stripe-signed event comes in, the processor fans it out to the
matching subscriptions, the delivery workers POST it to real HTTPS receivers, signed (Standard Webhooks),
retried by the rules, every attempt recorded."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, cast

import grpc
import pytest
import standardwebhooks
from google.protobuf.duration_pb2 import Duration
from webhooks.v1 import subscriptions_pb2 as pb
from webhooks.v1 import subscriptions_pb2_grpc
from webhooks.v1.dead_letters_pb2 import DEAD_LETTER_KIND_DELIVERY

from switchboard.config import PlatformConfig
from switchboard.delivery.ids import delivery_id
from switchboard.model.events import now_us
from switchboard.model.subscriptions import Attempt, Delivery, DeliveryStatus, Subscription
from switchboard.store import DeliveryStore, StoreSession, SubscriptionStore
from switchboard.streams import changes_exchange, deliveries_topology
from switchboard.subscription_cache import ChangeNotices
from switchboard_cli import status
from switchboard_devstack.stack import Stack
from tests.e2e.helpers import edge_client, stripe_headers, wait_for_dead_letters, wait_for_event
from tests.e2e.receivers import Answer, Receiver
from tests.stack_fixture import STRIPE_SECRET

pytestmark = pytest.mark.integration


@contextmanager
def control(cfg: PlatformConfig) -> Iterator[Any]:
    channel = grpc.insecure_channel(f"127.0.0.1:{cfg.control.port}")
    try:
        yield subscriptions_pb2_grpc.SubscriptionsStub(channel)
    finally:
        channel.close()


def subscribe(cfg: PlatformConfig, url: str, **fields: Any) -> tuple[Any, str]:
    retry = fields.pop("retry", None)
    sub = pb.Subscription(callback_url=url, **fields)
    if retry is not None:
        schedule, timeout = retry
        sub.retry_policy.schedule.extend(Duration(seconds=s) for s in schedule)
        sub.retry_policy.timeout.FromSeconds(timeout)
    with control(cfg) as stub:
        reply = stub.CreateSubscription(pb.CreateSubscriptionRequest(subscription=sub), timeout=10)
    return reply.subscription, reply.secret


def invoice(event_id: str, amount: int, event_type: str = "invoice.paid") -> bytes:
    payload = {
        "id": event_id,
        "object": "event",
        "type": event_type,
        "created": int(time.time()),
        "data": {"object": {"id": "in_" + event_id[-12:], "object": "invoice", "amount_due": amount}},
    }
    return json.dumps(payload, separators=(",", ":")).encode()


def post(cfg: PlatformConfig, body: bytes) -> None:
    with edge_client(cfg) as client:
        resp = client.post("/webhook/shop", content=body, headers=stripe_headers(STRIPE_SECRET, body))
    assert resp.status_code == 200, resp.text


def attempts(cfg: PlatformConfig, subscription_id: str, delivery: str, n: int, timeout: float = 60) -> list[Any]:
    """The delivery's attempts, oldest first, once there are ``n``."""
    deadline = time.monotonic() + timeout
    with control(cfg) as stub:
        while True:
            reply = stub.ListDeliveryAttempts(
                pb.ListDeliveryAttemptsRequest(subscription_id=subscription_id, delivery_id=delivery), timeout=10
            )
            if len(reply.attempts) >= n:
                return sorted(reply.attempts, key=lambda a: a.attempt)
            assert time.monotonic() < deadline, f"{len(reply.attempts)} of {n} attempts recorded"
            time.sleep(0.2)


def delivery_of(cfg: PlatformConfig, subscription_id: str, event_id: str) -> Any | None:
    with control(cfg) as stub:
        reply = stub.ListDeliveries(
            pb.ListDeliveriesRequest(subscription_id=subscription_id, source="shop", event_id=event_id), timeout=10
        )
    return reply.deliveries[0] if reply.deliveries else None


def test_an_event_is_fanned_out_to_the_matching_subscriptions_signed_and_recorded(
    stack: Stack, stack_config: PlatformConfig
) -> None:
    cfg = stack_config
    with Receiver(cfg.tls_dir) as rx:
        everything, secret_a = subscribe(cfg, rx.url("/a"), event_types=["invoice.*"], sources=["shop"])
        big, secret_b = subscribe(
            cfg, rx.url("/b"), event_types=["invoice.paid"], trigger_conditions="event.data.object.amount_due > 1000"
        )
        charges, _ = subscribe(cfg, rx.url("/c"), event_types=["charge.*"])
        huge, _ = subscribe(
            cfg, rx.url("/d"), event_types=["invoice.*"], trigger_conditions="event.data.object.amount_due > 1000000"
        )
        event_id = "evt_fan_" + secrets.token_hex(6)
        body = invoice(event_id, 4200)
        post(cfg, body)

        a, b = rx.wait("/a", 1)[0], rx.wait("/b", 1)[0]
        for got, secret, sub in ((a, secret_a, everything), (b, secret_b, big)):
            assert got.body == body  # exactly as the provider sent it
            assert got.headers["Content-Type"] == "application/json"
            assert got.headers["webhook-id"] == delivery_id("shop", event_id, sub.id)
            assert standardwebhooks.Webhook(secret).verify(got.body, got.headers) == json.loads(body)
            assert got.headers["User-Agent"].startswith("Switchboard-Webhooks")
        event = wait_for_event(cfg, "shop", event_id)
        assert [r.outcome for r in event.results if r.operation == "deliver"] == [1]  # OK once
        (attempt,) = attempts(cfg, everything.id, a.headers["webhook-id"], 1)
        assert (attempt.attempt, attempt.http_status, attempt.outcome) == (1, 200, pb.DELIVERY_STATUS_DELIVERED)
        assert attempt.response_body == b"ok"
        delivered = delivery_of(cfg, everything.id, event_id)
        assert delivered is not None and delivered.status == pb.DELIVERY_STATUS_DELIVERED
        # Filtered out by type and by condition: no delivery at all.
        assert delivery_of(cfg, charges.id, event_id) is None and delivery_of(cfg, huge.id, event_id) is None
        assert rx.on("/c") == [] and rx.on("/d") == []
        assert len(rx.on("/a")) == 1 and len(rx.on("/b")) == 1


def test_a_server_error_is_retried_on_the_schedule_until_delivered(stack: Stack, stack_config: PlatformConfig) -> None:
    cfg = stack_config
    script = {"/flaky": [Answer(500), Answer(200)]}
    with Receiver(cfg.tls_dir, script) as rx:
        sub, _ = subscribe(cfg, rx.url("/flaky"), event_types=["invoice.*"], retry=([1, 1, 1], 5))
        event_id = "evt_500_" + secrets.token_hex(6)
        post(cfg, invoice(event_id, 10))
        first, second = rx.wait("/flaky", 2)
        assert first.headers["webhook-id"] == second.headers["webhook-id"]  # stable across retries
        assert second.at - first.at >= 0.9  # the schedule's 1 s, jittered ±10 %
        tries = attempts(cfg, sub.id, first.headers["webhook-id"], 2)
        assert [(t.attempt, t.http_status, t.outcome) for t in tries] == [
            (1, 500, pb.DELIVERY_STATUS_RETRYING),
            (2, 200, pb.DELIVERY_STATUS_DELIVERED),
        ]


def test_410_gone_disables_the_subscription(stack: Stack, stack_config: PlatformConfig) -> None:
    cfg = stack_config
    with Receiver(cfg.tls_dir, {"/gone": [Answer(410)]}) as rx:
        sub, _ = subscribe(cfg, rx.url("/gone"), event_types=["invoice.*"], retry=([1, 1, 1], 5))
        event_id = "evt_410_" + secrets.token_hex(6)
        post(cfg, invoice(event_id, 10))
        (got,) = rx.wait("/gone", 1)
        tries = attempts(cfg, sub.id, got.headers["webhook-id"], 1)
        assert [(t.http_status, t.outcome) for t in tries] == [(410, pb.DELIVERY_STATUS_FAILED)]
        with control(cfg) as stub:
            reply = stub.GetSubscription(pb.GetSubscriptionRequest(id=sub.id), timeout=10)
        assert reply.subscription.status == pb.SUBSCRIPTION_STATUS_AUTO_DISABLED
        assert "410" in reply.subscription.status_reason
        # No retry, and nothing more for a disabled subscription.
        second = "evt_410b_" + secrets.token_hex(6)
        post(cfg, invoice(second, 10))
        wait_for_event(cfg, "shop", second)
        time.sleep(2.5)
        assert len(rx.on("/gone")) == 1


def delivery_metrics(stack: Stack) -> status.Samples:
    """One scrape of every running delivery worker's metrics."""
    samples = status.Samples()
    for proc in stack.delivery_procs:
        if proc.is_running() and proc.metrics_port:
            text = status.scrape(f"{stack.cfg.metrics.host}:{proc.metrics_port}")
            assert text is not None, f"{proc.name}'s metrics endpoint did not answer"
            samples.add(text, proc.name)
    return samples


def open_circuits(stack: Stack) -> float:
    """``switchboard_delivery_open_circuits`` summed over the running delivery workers."""
    return delivery_metrics(stack).total("switchboard_delivery_open_circuits")


def test_an_endpoint_that_keeps_failing_gets_no_sends_while_its_circuit_is_open(
    stack: Stack, stack_config: PlatformConfig
) -> None:
    """The test stack's breaker: 4 failures in a row open a subscription's circuit for 5 s."""
    cfg = stack_config
    # Down for four requests, then back; but nothing may be sent to it while its circuit is open.
    with Receiver(cfg.tls_dir, {"/down": [Answer(503)] * 4 + [Answer(200)]}) as rx:
        sub, _ = subscribe(cfg, rx.url("/down"), event_types=["invoice.*"], retry=([1] * 8, 5))
        first = "evt_cb1_" + secrets.token_hex(6)
        post(cfg, invoice(first, 10))
        tries = rx.wait("/down", 4)  # attempts 1-4 of the first delivery, ~1 s apart: the circuit opens
        second = "evt_cb2_" + secrets.token_hex(6)
        post(cfg, invoice(second, 10))
        deadline = time.monotonic() + 4
        while (waiting := delivery_of(cfg, sub.id, second)) is None:
            assert time.monotonic() < deadline, "the second delivery was not recorded as deferred"
            time.sleep(0.1)
        assert waiting.status == pb.DELIVERY_STATUS_PENDING and waiting.attempts == 0
        assert waiting.last_error.startswith("deferred: the endpoint's circuit is open")
        assert len(rx.on("/down")) == 4
        held = open_circuits(stack)
        assert held >= 1

        got = rx.wait("/down", 6, timeout=60)
        assert got[4].at - tries[3].at >= 5.0 - 0.2  # the cool-down, then one probe and the rest
        assert {r.headers["webhook-id"] for r in got} == {
            tries[0].headers["webhook-id"],
            waiting.id,
        }
        first_tries = attempts(cfg, sub.id, tries[0].headers["webhook-id"], 5)
        assert [(t.attempt, t.http_status) for t in first_tries] == [(1, 503), (2, 503), (3, 503), (4, 503), (5, 200)]
        # The deferral counted no attempt: the second delivery's only attempt is its first.
        (only,) = attempts(cfg, sub.id, waiting.id, 1)
        assert (only.attempt, only.http_status, only.outcome) == (1, 200, pb.DELIVERY_STATUS_DELIVERED)
        time.sleep(1.5)
        assert len(rx.on("/down")) == 6
        assert open_circuits(stack) == held - 1  # the probe's 200 closed it


def test_a_slow_endpoint_holds_a_bounded_share_of_the_worker_and_the_others_go_on(
    stack: Stack, stack_config: PlatformConfig
) -> None:
    """Two endpoints get the same events, one answering after 5 s, the other at once. The fast one gets every
    event before the slow one has answered anything (a worker's slots are not all held by the slow sends);
    the slow one never has more than ``delivery.subscription_in_flight`` requests open, the tasks past that
    are deferred (recorded PENDING with the reason, no attempt counted) and sent when it has room; every
    delivery reaches its endpoint once. A third endpoint with its own ``max_in_flight`` (3) gets at most that
    many requests at once."""
    cfg = stack_config
    limit = cfg.delivery.subscription_in_flight
    delay = 5.0
    n = limit + 8
    script = {"/slow": [Answer(200, delay=delay)], "/own": [Answer(200, delay=1.0)]}
    with Receiver(cfg.tls_dir, script) as rx:
        slow, _ = subscribe(cfg, rx.url("/slow"), event_types=["payout.*"], retry=([1, 1, 1], 20))
        subscribe(cfg, rx.url("/fast"), event_types=["payout.*"])
        own, _ = subscribe(cfg, rx.url("/own"), event_types=["payout.failed"], retry=([1, 1, 1], 20), max_in_flight=3)
        assert own.max_in_flight == 3
        run = secrets.token_hex(4)
        for i in range(n):
            post(cfg, invoice(f"evt_slow_{run}_{i}", 10, "payout.failed" if i < 8 else "payout.paid"))
        fast = rx.wait("/fast", n)
        first_slow = rx.on("/slow")[0]
        assert fast[-1].at < first_slow.at + delay, "the fast endpoint waited for the slow one"

        deadline = time.monotonic() + delay
        deferred: list[Any] = []
        while not deferred:
            assert time.monotonic() < deadline, "no delivery to the slow endpoint was recorded as deferred"
            with control(cfg) as stub:
                listed = stub.ListDeliveries(
                    pb.ListDeliveriesRequest(subscription_id=slow.id, status=pb.DELIVERY_STATUS_PENDING), timeout=10
                ).deliveries
            deferred = [d for d in listed if d.last_error.startswith("deferred: ")]
            time.sleep(0.2)
        assert all(d.attempts == 0 and "in flight" in d.last_error for d in deferred), deferred

        got = rx.wait("/slow", n, timeout=60)
        rx.wait("/own", 8, timeout=60)
        assert rx.most_unanswered("/slow") == limit
        assert rx.most_unanswered("/own") == 3
    assert sorted(rx.ids("/slow").values()) == [1] * n  # each delivery once, none twice
    assert sorted(rx.ids("/fast").values()) == [1] * n
    assert sorted(rx.ids("/own").values()) == [1] * 8
    assert len(got) == n


def test_slow_endpoints_on_one_host_leave_room_on_it_for_a_fast_one(stack: Stack, stack_config: PlatformConfig) -> None:
    """Four endpoints on one host get the same 30 events: three answer after 5 s, one at once. The slow ones'
    90 requests are more than the worker opens to one host (``delivery.host_in_flight``, 64; with the sender's
    pool alone, the requests past those waited for a connection in front of the fast endpoint's). The fast one
    gets every event before the slow ones answered anything: the slow ones hold at most the host's shared
    part between them, the last quarter stays free for endpoints with few requests out, the slow tasks past
    their share are deferred (recorded PENDING, the reason names the host) and every delivery reaches its
    endpoint once."""
    cfg = stack_config
    host_limit = cfg.delivery.host_in_flight
    delay = 5.0
    n = 30
    slow_paths = ["/slow-a", "/slow-b", "/slow-c"]
    with Receiver(cfg.tls_dir, {p: [Answer(200, delay=delay)] for p in slow_paths}) as rx:
        slow = [subscribe(cfg, rx.url(p), event_types=["transfer.*"], retry=([1, 1, 1], 20))[0] for p in slow_paths]
        subscribe(cfg, rx.url("/fast"), event_types=["transfer.*"])
        run = secrets.token_hex(4)
        for i in range(n):
            post(cfg, invoice(f"evt_host_{run}_{i}", 10, "transfer.paid"))
        fast = rx.wait("/fast", n)
        first_slow = min(rx.on(p)[0].at for p in slow_paths)
        assert fast[-1].at < first_slow + delay, "the fast endpoint waited for the slow ones"

        deadline = time.monotonic() + delay
        deferred: list[Any] = []
        while not deferred:
            assert time.monotonic() < deadline, "no delivery to a slow endpoint was recorded as deferred"
            with control(cfg) as stub:
                for sub in slow:
                    listed = stub.ListDeliveries(
                        pb.ListDeliveriesRequest(subscription_id=sub.id, status=pb.DELIVERY_STATUS_PENDING), timeout=10
                    ).deliveries
                    deferred += [d for d in listed if d.last_error.startswith("deferred: ")]
            time.sleep(0.2)
        assert all(d.attempts == 0 and "host" in d.last_error for d in deferred), deferred
        # The worker shows it: the host busy, so the slow ones' part of it (48) or more out.
        deadline = time.monotonic() + delay
        while (seen := delivery_metrics(stack)).total("switchboard_delivery_busy_hosts") < 1:
            assert time.monotonic() < deadline, "the host was never reported busy"
            time.sleep(0.2)
        assert seen.total("switchboard_delivery_sending") >= host_limit - host_limit // 4

        for p in slow_paths:
            rx.wait(p, n, timeout=120)
        # The host's reserve was never taken: at most the shared part (48) for the slow ones, and the fast one's.
        assert rx.most_unanswered() < host_limit
    for p in [*slow_paths, "/fast"]:
        assert sorted(rx.ids(p).values()) == [1] * n  # each delivery once, none twice


def test_a_fast_endpoint_at_its_limit_has_its_next_tasks_wait_for_a_slot_not_a_delay_queue(
    stack: Stack, stack_config: PlatformConfig
) -> None:
    """An endpoint with ``max_in_flight`` 8 that answers after 0.4 s: once the worker knows that pace (one
    delivery first), a burst of 12 events finds its 8 slots taken and the 4 tasks past them, whose slots are due
    within ``delivery.slot_wait_ms`` (one every ~50 ms), wait in the worker and are handed the slots as the
    first requests end, instead of a deferral through a delay queue (which comes back after 1 s at the
    earliest): all 12 arrive within one answer's time of each other, never more than 8 open, each once."""
    cfg = stack_config
    delay = 0.4
    with Receiver(cfg.tls_dir, {"/burst": [Answer(200, delay=delay)]}) as rx:
        subscribe(cfg, rx.url("/burst"), event_types=["dispute.*"], max_in_flight=8)
        run = secrets.token_hex(4)
        post(cfg, invoice(f"evt_burst_{run}_first", 10, "dispute.created"))
        rx.wait("/burst", 1)
        time.sleep(delay + 0.2)  # answered and recorded: the pace is known
        sent_before = delivery_metrics(stack).total("switchboard_delivery_slot_waits_total", outcome="taken")
        bodies = [invoice(f"evt_burst_{run}_{i}", 10, "dispute.created") for i in range(12)]
        with ThreadPoolExecutor(len(bodies)) as pool:
            list(pool.map(lambda body: post(cfg, body), bodies))
        burst = rx.wait("/burst", 13)[1:]
        waited = delivery_metrics(stack).total("switchboard_delivery_slot_waits_total", outcome="taken") - sent_before
        assert waited >= 1, "no task of the burst waited for a slot: the 12 did not meet the limit of 8 at once"
        spread = max(r.at for r in burst) - min(r.at for r in burst)
        assert spread < 2 * delay + 0.1, f"the burst took {spread:.2f} s: a task went through a delay queue"
        assert rx.most_unanswered("/burst") <= 8
    assert sorted(rx.ids("/burst").values()) == [1] * 13


def active_connections(stack: Stack) -> set[str]:
    """The broker connections that hold an active consumer of a deliveries partition."""
    assert stack.rabbit is not None
    partitions = set(deliveries_topology(stack.cfg).work_queues)
    ctl = stack.rabbit.rabbitmqctl
    channels = dict(
        line.split("\t")[:2]
        for line in ctl("list_channels", "pid", "connection", "-q", "--no-table-headers").stdout.splitlines()
    )
    consumers = ctl("list_consumers", "queue_name", "channel_pid", "active", "-q", "--no-table-headers").stdout
    return {
        channels[channel]
        for queue, channel, active, *_ in (line.split("\t") for line in consumers.splitlines())
        if queue in partitions and active == "true" and channel in channels
    }


def test_two_workers_keep_each_subscriptions_in_flight_limit_between_them(
    stack: Stack, stack_config: PlatformConfig
) -> None:
    """With a second delivery worker, each subscription's tasks still go to one worker at a time (the
    deliveries stream is partitioned by subscription): sixteen endpoints with ``max_in_flight`` 2, answering
    after 0.5 s, never have more than 2 requests open, while the first worker hands the second its share of
    the partitions (it does so only for partitions it is busy on, one every few seconds) and both are active.
    Without partitions (``delivery.partitions`` 0; the test stack has 4) two workers share one queue and each
    keeps its own count: an endpoint saw up to 4. Every delivery arrives once."""
    cfg = stack_config
    before = set(stack.delivery_procs)
    stack.ensure_deliveries(2)
    added = [p for p in stack.delivery_procs if p not in before]
    paths = [f"/pair-{i}" for i in range(16)]  # all in the first worker's own partitions: 1 in 65,536
    try:
        with Receiver(cfg.tls_dir, {p: [Answer(200, delay=0.5)] for p in paths}) as rx:
            for p in paths:
                subscribe(cfg, rx.url(p), event_types=["refund.*"], retry=([1, 1, 1], 20), max_in_flight=2)
            run = secrets.token_hex(4)
            n = 0
            deadline = time.monotonic() + 90
            while len(active_connections(stack)) < 2 or n < 12:  # load until the second worker has its share
                assert time.monotonic() < deadline, "the second worker never became active on a partition"
                for _ in range(4):  # a burst: 4 requests per endpoint want to be open at once
                    post(cfg, invoice(f"evt_pair_{run}_{n}", 10, "refund.created"))
                    n += 1
                time.sleep(1.0)
            for p in paths:
                rx.wait(p, n, timeout=120)
            most = {p: rx.most_unanswered(p) for p in paths}
        assert max(most.values()) == 2 and all(m <= 2 for m in most.values()), most
        for p in paths:
            assert sorted(rx.ids(p).values()) == [1] * n  # each delivery once, none twice
    finally:
        for proc in added:
            proc.stop()
            stack.forget_delivery(proc)


def test_a_client_error_fails_at_once_and_is_dead_lettered(stack: Stack, stack_config: PlatformConfig) -> None:
    cfg = stack_config
    with Receiver(cfg.tls_dir, {"/bad": [Answer(400, body=b'{"error":"unknown field"}')]}) as rx:
        sub, _ = subscribe(cfg, rx.url("/bad"), event_types=["invoice.*"], retry=([1, 1, 1], 5))
        post(cfg, invoice("evt_400_" + secrets.token_hex(6), 10))
        (got,) = rx.wait("/bad", 1)
        (attempt,) = attempts(cfg, sub.id, got.headers["webhook-id"], 1)
        assert (attempt.http_status, attempt.outcome) == (400, pb.DELIVERY_STATUS_FAILED)
        assert attempt.response_body == b'{"error":"unknown field"}'
        match = {"subscription_id": sub.id, "delivery_id": got.headers["webhook-id"]}
        (dead,) = wait_for_dead_letters(cfg, DEAD_LETTER_KIND_DELIVERY, match)
        assert (dead.reason, dead.attempts) == ("FAILED", 1)
        assert "400" in dead.last_error
        time.sleep(2.5)
        assert len(rx.on("/bad")) == 1  # not retried


def test_a_timeout_is_retried_and_retry_after_is_honoured(stack: Stack, stack_config: PlatformConfig) -> None:
    cfg = stack_config
    script = {
        "/slow": [Answer(200, delay=3.0), Answer(200)],
        "/busy": [Answer(503, headers={"Retry-After": "3"}), Answer(200)],
    }
    with Receiver(cfg.tls_dir, script) as rx:
        slow, _ = subscribe(cfg, rx.url("/slow"), event_types=["invoice.*"], retry=([1, 1, 1], 1))
        busy, _ = subscribe(cfg, rx.url("/busy"), event_types=["invoice.*"], retry=([1, 1, 1], 5))
        post(cfg, invoice("evt_tmo_" + secrets.token_hex(6), 10))
        s1, _s2 = rx.wait("/slow", 2)
        b1, b2 = rx.wait("/busy", 2)
        slow_tries = attempts(cfg, slow.id, s1.headers["webhook-id"], 2)
        assert [(t.http_status, t.error_class) for t in slow_tries] == [(0, "timeout"), (200, "")]
        assert b2.at - b1.at >= 3.0 - 0.05  # Retry-After: 3 beats the schedule's 1 s
        busy_tries = attempts(cfg, busy.id, b1.headers["webhook-id"], 2)
        assert [t.http_status for t in busy_tries] == [503, 200]
        assert busy_tries[0].response_headers["retry-after"] == "3"


def test_redirects_are_not_followed(stack: Stack, stack_config: PlatformConfig) -> None:
    cfg = stack_config
    with Receiver(cfg.tls_dir) as rx:
        rx.script["/moved"] = [Answer(302, headers={"Location": rx.url("/target")}), Answer(200)]
        sub, _ = subscribe(cfg, rx.url("/moved"), event_types=["invoice.*"], retry=([1, 1, 1], 5))
        post(cfg, invoice("evt_302_" + secrets.token_hex(6), 10))
        first, _second = rx.wait("/moved", 2)
        tries = attempts(cfg, sub.id, first.headers["webhook-id"], 2)
        assert [(t.http_status, t.outcome) for t in tries] == [
            (302, pb.DELIVERY_STATUS_RETRYING),
            (200, pb.DELIVERY_STATUS_DELIVERED),
        ]
        assert rx.on("/target") == []


def test_private_callbacks_are_refused_at_create_and_at_delivery(stack: Stack, stack_config: PlatformConfig) -> None:
    cfg = stack_config
    with control(cfg) as stub:
        for url in (
            "https://10.0.0.7/hook",
            "https://169.254.169.254/latest",
            "https://[fd00::1]/x",
            "http://example.com/",
        ):
            with pytest.raises(grpc.RpcError) as refused:
                stub.CreateSubscription(
                    pb.CreateSubscriptionRequest(
                        subscription=pb.Subscription(callback_url=url, event_types=["invoice.*"])
                    ),
                    timeout=10,
                )
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, url
    # A subscription whose callback turned private after it was created (written straight to the store, as a
    # DNS change would make it): the worker refuses to connect, records why, and fails the delivery.
    session = StoreSession.connect(cfg.cassandra)
    try:
        subs = SubscriptionStore(session, cfg.delivery.secret_box())
        now = now_us()
        sub = Subscription(
            id="sub_private_" + secrets.token_hex(6),
            client_id="internal",
            callback_url="https://10.0.0.7/hook",
            event_types=("invoice.*",),
            secret="whsec_" + "A" * 43 + "=",
            created_us=now,
            updated_us=now,
        )
        asyncio.run(subs.put(sub))
    finally:
        session.close()

    async def announce() -> None:
        notices = ChangeNotices(cfg.rabbitmq.amqp_url, changes_exchange(cfg), purpose="test")
        await notices.start()
        await notices.changed(sub.id)
        await notices.close()

    asyncio.run(announce())
    time.sleep(0.5)
    event_id = "evt_priv_" + secrets.token_hex(6)
    post(cfg, invoice(event_id, 10))
    deadline = time.monotonic() + 30
    while (d := delivery_of(cfg, sub.id, event_id)) is None or d.status != pb.DELIVERY_STATUS_FAILED:
        assert time.monotonic() < deadline, f"delivery stayed {d}"
        time.sleep(0.2)
    (attempt,) = attempts(cfg, sub.id, d.id, 1)
    assert (attempt.http_status, attempt.error_class) == (0, "forbidden_destination")


def test_during_a_rotation_deliveries_carry_both_signatures(stack: Stack, stack_config: PlatformConfig) -> None:
    cfg = stack_config
    with Receiver(cfg.tls_dir) as rx:
        sub, old = subscribe(cfg, rx.url("/rot"), event_types=["invoice.*"])
        with control(cfg) as stub:
            reply = stub.RotateSubscriptionSecret(pb.RotateSubscriptionSecretRequest(id=sub.id), timeout=10)
        new = reply.secret
        assert new != old and new.startswith("whsec_")
        time.sleep(0.5)  # the change notice reaches the workers' caches
        body = invoice("evt_rot_" + secrets.token_hex(6), 10)
        post(cfg, body)
        (got,) = rx.wait("/rot", 1)
        assert len(got.headers["webhook-signature"].split()) == 2
        for secret in (old, new):
            assert standardwebhooks.Webhook(secret).verify(got.body, got.headers) == json.loads(body)


def test_concurrent_records_share_requests_and_all_land(stack: Stack, stack_config: PlatformConfig) -> None:
    """The delivery store's group commit against the real Cassandra: 60 deliveries recorded at once (each
    with its attempt) go out in a handful of batches, and every row of every one is there to read, also when
    looked up one by one at the same time (the lookups share one read)."""
    session = StoreSession.connect(stack_config.cassandra)
    store = DeliveryStore(session)
    run = secrets.token_hex(4)
    now = now_us()
    deliveries = [
        Delivery(
            id=f"dlv_group_{run}_{i}",
            subscription_id=f"sub_group_{run}",
            source="stripe",
            event_id=f"evt_group_{run}_{i}",
            event_type="invoice.paid",
            status=DeliveryStatus.DELIVERED,
            attempts=1,
            last_http_status=200,
            created_us=now + i,
            updated_us=now + i,
        )
        for i in range(60)
    ]

    async def record_all() -> None:
        await asyncio.gather(
            *(
                store.record(
                    d,
                    Attempt(
                        d.id,
                        d.subscription_id,
                        d.source,
                        d.event_id,
                        1,
                        d.created_us,
                        900,
                        200,
                        {"x-seen": d.id},
                        b"ok",
                        outcome=DeliveryStatus.DELIVERED,
                    ),
                )
                for d in deliveries
            )
        )

    async def with_a_bad_one() -> BaseException | None:
        bad = dataclasses.replace(deliveries[0], id=f"dlv_group_{run}_bad", attempts=cast(int, "one"))
        # Two good ones take both slots; the bad one waits with three more, to share their request.
        writes = [store.record(d) for d in deliveries[:2]] + [store.record(bad)]
        results = await asyncio.gather(*writes, *(store.record(d) for d in deliveries[2:5]), return_exceptions=True)
        assert results[:2] + results[3:] == [None] * 5  # a unit that does not bind fails only its own writer
        return results[2] if isinstance(results[2], BaseException) else None

    async def read_back() -> tuple[dict[str, Delivery], list[list[Attempt]], list[Delivery]]:
        found = await store.get_many([d.id for d in deliveries])
        # One caller per delivery, all in one turn of the loop (as the delivery worker starts its tasks): they
        # share the reads (GroupRead, at most 64 keys each) and each gets its own row.
        before = store.lookups.reads
        one_by_one = await asyncio.gather(*(store.get_many([d.id]) for d in deliveries))
        assert store.lookups.reads - before == 1
        assert [list(got) for got in one_by_one] == [[d.id] for d in deliveries]
        attempts = await asyncio.gather(*(store.attempts_of(d.id) for d in deliveries))
        listed, _ = await store.page(f"sub_group_{run}", now - 1_000_000, now + 1_000_000, 100, None)
        return found, list(attempts), listed

    try:
        asyncio.run(record_all())
        shared = store.group.requests
        refused = asyncio.run(with_a_bad_one())
        found, attempts, listed = asyncio.run(read_back())
    finally:
        session.close()
    assert isinstance(refused, TypeError) and "attempts" in str(refused), refused
    assert store.group.units == 65
    assert shared <= 6, shared  # 2 alone, then the 58 that waited, in ~40 KB batches
    assert {i: (d.status, d.attempts) for i, d in found.items()} == {
        d.id: (DeliveryStatus.DELIVERED, 1) for d in deliveries
    }
    assert [[(a.attempt, a.http_status, a.response_headers, a.response_body) for a in x] for x in attempts] == [
        [(1, 200, {"x-seen": d.id}, b"ok")] for d in deliveries
    ]
    assert sorted(d.id for d in listed) == sorted(d.id for d in deliveries)


def test_an_attempt_written_again_is_one_row_of_its_history(stack: Stack, stack_config: PlatformConfig) -> None:
    """A worker retries its record after a store timeout with the same attempt (its run id drawn once, with the
    attempt): one row of history. Another worker's send of the same attempt number is a row of its own."""
    session = StoreSession.connect(stack_config.cassandra)
    store = DeliveryStore(session)
    run, now = secrets.token_hex(4), now_us()
    d = Delivery(
        id=f"dlv_again_{run}",
        subscription_id=f"sub_again_{run}",
        source="stripe",
        event_id=f"evt_again_{run}",
        event_type="invoice.paid",
        status=DeliveryStatus.RETRYING,
        attempts=1,
        last_http_status=503,
        created_us=now,
        updated_us=now,
    )

    def sent(status: int) -> Attempt:
        return Attempt(d.id, d.subscription_id, d.source, d.event_id, 1, now, 900, status, outcome=d.status)

    first, second = sent(503), sent(502)

    async def run_it() -> list[Attempt]:
        await store.record(d, first)
        await store.record(d, first)  # written again, as _record_retrying does after a timeout
        await store.record(d, second)  # the same attempt number sent by a second worker
        return await store.attempts_of(d.id)

    try:
        history = asyncio.run(run_it())
    finally:
        session.close()
    assert sorted(a.http_status for a in history) == [502, 503]
    # Each row's own run id, read back (a listing's cursor holds it): a new one was drawn for every row read.
    assert {a.run_id for a in history} == {first.run_id, second.run_id}


def test_large_attempts_are_listed_in_pages_a_default_client_takes(stack: Stack, stack_config: PlatformConfig) -> None:
    """A page of attempts carried every response excerpt and the headers a receiver chose: past the 4 MiB a gRPC
    client takes by default (this test's channel, grpcurl), RESOURCE_EXHAUSTED. A page now ends at ~3 MiB and
    its token goes on after its last attempt (its cursor holds the attempt's run id as stored)."""
    cfg = stack_config
    with Receiver(cfg.tls_dir) as rx:
        sub, _ = subscribe(cfg, rx.url("/big"), event_types=["invoice.*"], status=pb.SUBSCRIPTION_STATUS_DISABLED)
    session = StoreSession.connect(cfg.cassandra)
    store = DeliveryStore(session)
    now = now_us()
    attempts = [
        Attempt(
            f"dlv_big_{sub.id}_{i}",
            sub.id,
            "shop",
            f"evt_big_{i}",
            1,
            now - i * 1000,
            900,
            200,
            {"server": f"{i}" * 1_100_000},  # over a megabyte, as the store could hold from before (now cut)
            b"b" * 4096,
            outcome=DeliveryStatus.DELIVERED,
        )
        for i in range(7)
    ]

    async def record_all() -> None:
        for a in attempts:
            d = Delivery(a.delivery_id, sub.id, "shop", a.event_id, "invoice.paid", DeliveryStatus.DELIVERED, 1)
            d.created_us = d.updated_us = a.started_us
            await store.record(d, a)

    try:
        asyncio.run(record_all())
    finally:
        session.close()
    pages: list[list[Any]] = []
    token = ""
    with control(cfg) as stub:
        while True:
            request = pb.ListDeliveryAttemptsRequest(subscription_id=sub.id, page_size=1000, page_token=token)
            reply = stub.ListDeliveryAttempts(request, timeout=30)
            pages.append(list(reply.attempts))
            if not (token := reply.next_page_token):
                break
    assert [len(p) for p in pages] == [2, 2, 2, 1]
    listed = [a for p in pages for a in p]
    assert [a.delivery_id for a in listed] == [a.delivery_id for a in attempts]
    assert all(dict(a.response_headers)["server"] == f"{i}" * 1_100_000 for i, a in enumerate(listed))
