"""Every provider scheme, signed exactly as the provider signs, accepted end to end; a wrong secret is
rejected with 401 and nothing is stored."""

from __future__ import annotations

import time

import grpc
import pytest

from switchboard.config import PlatformConfig
from switchboard.signatures import sign
from switchboard_devstack.samples import sample_event
from tests.e2e.helpers import edge_client, get_event_code, wait_for_event
from tests.stack_fixture import PROVIDER_SOURCES

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("source", sorted(PROVIDER_SOURCES))
def test_provider_event_is_accepted_and_stored(stack: object, stack_config: PlatformConfig, source: str) -> None:
    scheme, secret = PROVIDER_SOURCES[source]
    body, headers = sample_event(scheme)
    signed = sign(scheme, secret, body, now=time.time(), event_id=None)
    with edge_client(stack_config) as client:
        resp = client.post(f"/webhook/{source}", content=body, headers={**headers, **signed})
        assert resp.status_code == 200, resp.text
        event_id = resp.json()["event_id"]
        wrong = sign(scheme, secret[:-2] + "zz", body, now=time.time())
        rejected = client.post(f"/webhook/{source}", content=body, headers={**headers, **wrong})
    assert rejected.status_code == 401, rejected.text
    assert rejected.json()["details"][0]["reason"] == "SIGNATURE_MISMATCH"
    event = wait_for_event(stack_config, source, event_id)
    assert event.body == body and event.provider == scheme
    if scheme != "standard_webhooks":
        assert event.event_type  # from the provider's header or payload
    # The rejected request carried the same id header for GitHub/Shopify only if signed alike; here the
    # stored event is the accepted one, exactly once.
    assert event.duplicates == 0
    assert get_event_code(stack_config, source, event_id + "-never") == grpc.StatusCode.NOT_FOUND
