"""With the broker down, ingest answers 503 fast and never 200; after it is back, events flow again. It kills
the RabbitMQ node of a stack of its own (``own_stack``), so no other test depends on running before it."""

from __future__ import annotations

import secrets
import time

import pytest

from edge.envoy_config import route_timeout_seconds
from switchboard_devstack.stack import Stack
from tests.e2e.helpers import edge_client, stripe_event, stripe_headers, wait_for_event
from tests.stack_fixture import STRIPE_SECRET

pytestmark = pytest.mark.integration


def test_broker_down_gives_503_never_200_then_recovers(own_stack: Stack) -> None:
    cfg = own_stack.cfg
    rabbit = own_stack.rabbit
    assert rabbit is not None
    rabbit.kill()
    try:
        with edge_client(cfg) as client:
            for _ in range(5):
                body = stripe_event("evt_" + secrets.token_hex(10))
                started = time.monotonic()
                resp = client.post("/webhook/shop", content=body, headers=stripe_headers(STRIPE_SECRET, body))
                elapsed = time.monotonic() - started
                assert resp.status_code == 503, resp.text
                assert resp.json()["code"] == 14  # UNAVAILABLE: the provider will retry
                # Answered by ingest, not by Envoy giving up on it (that would be a 504 at the route timeout);
                # the bound is loose on purpose: this machine is shared by the whole stack.
                assert elapsed < route_timeout_seconds(cfg)
    finally:
        rabbit.start()
        rabbit.wait_ready(120)
    # Ingest and the processor reconnect on their own.
    deadline = time.monotonic() + 90
    with edge_client(cfg) as client:
        while True:
            event_id = "evt_" + secrets.token_hex(10)
            body = stripe_event(event_id)
            resp = client.post("/webhook/shop", content=body, headers=stripe_headers(STRIPE_SECRET, body))
            if resp.status_code == 200:
                break
            assert resp.status_code == 503, resp.text
            assert time.monotonic() < deadline, "ingest did not recover after the broker came back"
            time.sleep(0.5)
    assert wait_for_event(cfg, "shop", event_id, timeout=90).event_id == event_id
