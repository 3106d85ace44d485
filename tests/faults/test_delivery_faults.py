"""A delivery worker SIGKILLed while it holds deliveries in flight: every delivery still reaches its
receiver, at least once, with the same ``webhook-id`` when it is sent again (receivers deduplicate on it);
the sends that were repeated are counted and printed. On a stack of the test's own, two delivery workers."""

from __future__ import annotations

import asyncio
import os
import secrets
import time

import pytest

from switchboard.delivery.ids import delivery_id
from switchboard_devstack.stack import Stack
from tests.e2e.receivers import Answer, Receiver
from tests.e2e.test_delivery import subscribe
from tests.faults.load import LoadResult, send_load
from tests.stack_fixture import STRIPE_SECRET

pytestmark = pytest.mark.integration

EVENTS = int(os.environ.get("SWITCHBOARD_DELIVERY_FAULT_EVENTS", "1200"))
RATE = 80.0


def test_sigkill_a_delivery_worker_loses_no_delivery(own_stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = own_stack.cfg
    own_stack.ensure_deliveries(2)
    # Each answer takes 200 ms, so the victim dies with deliveries in the middle of their request.
    with Receiver(cfg.tls_dir, {"/sink": [Answer(200, delay=0.2)]}) as rx:
        sub, _ = subscribe(cfg, rx.url("/sink"), event_types=["test.delivery"], retry=([1, 2, 5, 10], 5))
        prefix = "evt_dkill_" + secrets.token_hex(3)
        victims = []

        async def scenario() -> LoadResult:
            load = asyncio.create_task(
                send_load(cfg, STRIPE_SECRET, prefix=prefix, count=EVENTS, rate=RATE, event_type="test.delivery")
            )
            await asyncio.sleep(EVENTS / RATE / 3)
            victim = own_stack.delivery_procs[0]
            victims.append(victim)
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
        assert victims[0].returncode == -9
        assert repeated, "no delivery was in flight in the victim: the test proved nothing"
