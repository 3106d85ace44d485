"""A delivery worker SIGKILLed while it holds deliveries in flight: every delivery still reaches its
receiver, at least once, with the same ``webhook-id`` when it is sent again (receivers deduplicate on it);
the sends that were repeated are counted and printed. On a stack of the test's own: the victim alone, then two
delivery workers after it.
And the window between a 410's disable and the record of its attempt (a failpoint crashes the worker there)."""

from __future__ import annotations

import asyncio
import os
import secrets
import time

import pytest
from webhooks.v1 import subscriptions_pb2 as pb

from switchboard.delivery.ids import delivery_id
from switchboard_devstack.stack import Stack
from tests.e2e.receivers import Answer, Receiver
from tests.e2e.test_delivery import control, delivery_of, invoice, post, subscribe
from tests.faults.load import LoadResult, send_load
from tests.stack_fixture import STRIPE_SECRET

pytestmark = pytest.mark.integration

EVENTS = int(os.environ.get("SWITCHBOARD_DELIVERY_FAULT_EVENTS", "1200"))
RATE = 80.0


def test_sigkill_a_delivery_worker_loses_no_delivery(own_stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = own_stack.cfg
    # The victim is the only worker until it dies, so a request the receiver holds unanswered is the victim's:
    # it is killed while such a request is in the middle of its 200 ms answer (a kill at a fixed moment found
    # the victim with none in flight now and then, and the test proved nothing).
    victim, *others = own_stack.ensure_deliveries(1)
    for proc in others:
        proc.terminate()
        own_stack.forget_delivery(proc)
    with Receiver(cfg.tls_dir, {"/sink": [Answer(200, delay=0.2)]}) as rx:
        sub, _ = subscribe(cfg, rx.url("/sink"), event_types=["test.delivery"], retry=([1, 2, 5, 10], 5))
        prefix = "evt_dkill_" + secrets.token_hex(3)

        async def scenario() -> LoadResult:
            load = asyncio.create_task(
                send_load(cfg, STRIPE_SECRET, prefix=prefix, count=EVENTS, rate=RATE, event_type="test.delivery")
            )
            await asyncio.sleep(EVENTS / RATE / 3)
            deadline = time.monotonic() + 30
            while rx.unanswered("/sink") == 0:
                assert time.monotonic() < deadline, "the victim never had a request in flight"
                await asyncio.sleep(0.005)
            victim.kill()
            own_stack.forget_delivery(victim)
            await asyncio.sleep(3)
            await asyncio.to_thread(own_stack.ensure_deliveries, 2)
            return await load

        load = asyncio.run(scenario())
        expected = {delivery_id("shop", eid, sub.id) for eid in load.accepted}
        deadline = time.monotonic() + 180
        while not expected <= set(rx.ids("/sink")):
            assert time.monotonic() < deadline, f"{len(expected - set(rx.ids('/sink')))} deliveries never arrived"
            time.sleep(0.5)
        ids = rx.ids("/sink")
        repeated = {i: n for i, n in ids.items() if n > 1}
        with capsys.disabled():
            print(
                f"\n[kill_delivery] events accepted {len(expected)} / deliveries received {len(set(ids) & expected)}"
                f" (unique) / sent more than once {len(repeated)} ({sum(repeated.values()) - len(repeated)} extra)"
            )
        assert set(ids) == expected  # nothing lost, nothing foreign
        assert victim.returncode == -9
        assert repeated, "no delivery was in flight in the victim: the test proved nothing"


def test_a_worker_killed_between_a_410_disable_and_its_record_sends_nothing_more(own_stack: Stack) -> None:
    """``delivery_service.failpoints.exit_after_disable``: the worker that got a 410 disabled the subscription
    and died before recording the attempt. The redelivered task finds the subscription disabled: the delivery
    is recorded CANCELLED and nothing is sent again; the 410 attempt itself is the window's loss."""
    cfg = own_stack.cfg
    for proc in list(own_stack.delivery_procs):  # only the armed worker may take the task
        proc.terminate()
        own_stack.forget_delivery(proc)
    victim = own_stack.start_delivery(env={"SWITCHBOARD_FAILPOINTS": "exit_after_disable"})
    own_stack.wait_deliveries(120)
    with Receiver(cfg.tls_dir, {"/gone": [Answer(410)]}) as rx:
        sub, _ = subscribe(cfg, rx.url("/gone"), event_types=["invoice.*"], retry=([1, 1, 1], 5))
        event_id = "evt_410kill_" + secrets.token_hex(6)
        post(cfg, invoice(event_id, 10))
        (got,) = rx.wait("/gone", 1)
        deadline = time.monotonic() + 30
        while victim.is_running():
            assert time.monotonic() < deadline, "the armed worker did not crash after the 410"
            time.sleep(0.1)
        assert victim.returncode == 137
        own_stack.forget_delivery(victim)

        with control(cfg) as stub:
            reply = stub.GetSubscription(pb.GetSubscriptionRequest(id=sub.id), timeout=10)
        assert reply.subscription.status == pb.SUBSCRIPTION_STATUS_AUTO_DISABLED
        assert "410" in reply.subscription.status_reason
        before = delivery_of(cfg, sub.id, event_id)
        assert before is None or before.status != pb.DELIVERY_STATUS_CANCELLED  # the victim recorded nothing final

        own_stack.ensure_deliveries(1)  # an unarmed worker gets the redelivered task
        deadline = time.monotonic() + 60
        while (d := delivery_of(cfg, sub.id, event_id)) is None or d.status != pb.DELIVERY_STATUS_CANCELLED:
            assert time.monotonic() < deadline, f"delivery not cancelled: {d}"
            time.sleep(0.2)
        assert d.id == got.headers["webhook-id"]
        assert d.last_error == "the subscription is auto_disabled"
        with control(cfg) as stub:
            tries = stub.ListDeliveryAttempts(
                pb.ListDeliveryAttemptsRequest(subscription_id=sub.id, delivery_id=d.id), timeout=10
            )
        assert list(tries.attempts) == []
        time.sleep(2.0)
        assert len(rx.on("/gone")) == 1
