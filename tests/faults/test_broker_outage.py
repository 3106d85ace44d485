"""With the broker down, ingest answers 503 fast and never 200; after it is back, events flow again.
Runs last in the session (file name) because it stops the session's RabbitMQ node."""

from __future__ import annotations

import secrets
import time

import pytest

from switchboard.config import PlatformConfig
from tests.e2e.helpers import edge_client, stripe_event, stripe_headers, wait_for_event
from tests.stack_fixture import STRIPE_SECRET

pytestmark = pytest.mark.integration


def test_broker_down_gives_503_never_200_then_recovers(stack: object, stack_config: PlatformConfig) -> None:
    rabbit = stack.rabbit  # type: ignore[attr-defined]
    rabbit.kill()
    try:
        with edge_client(stack_config) as client:
            for _ in range(5):
                body = stripe_event("evt_" + secrets.token_hex(10))
                started = time.monotonic()
                resp = client.post("/webhook/shop", content=body, headers=stripe_headers(STRIPE_SECRET, body))
                elapsed = time.monotonic() - started
                assert resp.status_code == 503, resp.text
                assert resp.json()["code"] == 14  # UNAVAILABLE: the provider will retry
                assert elapsed < stack_config.ingest.confirm_timeout_seconds + 1.5
    finally:
        rabbit.start()
        rabbit.wait_ready(120)
    # Ingest and the processor reconnect on their own.
    deadline = time.monotonic() + 90
    with edge_client(stack_config) as client:
        while True:
            event_id = "evt_" + secrets.token_hex(10)
            body = stripe_event(event_id)
            resp = client.post("/webhook/shop", content=body, headers=stripe_headers(STRIPE_SECRET, body))
            if resp.status_code == 200:
                break
            assert resp.status_code == 503, resp.text
            assert time.monotonic() < deadline, "ingest did not recover after the broker came back"
            time.sleep(0.5)
    assert wait_for_event(stack_config, "shop", event_id, timeout=90).event_id == event_id
