"""Every provider scheme, signed exactly as the provider signs, accepted end to end; a wrong secret is
rejected with 401 and nothing is stored."""

from __future__ import annotations

import time
import uuid

import grpc
import pytest

from switchboard.config import PlatformConfig
from switchboard.signatures import sign
from switchboard_devstack.samples import sample_event
from switchboard_devstack.stack import Stack
from tests.e2e.helpers import edge_client, get_event_code, wait_for_event
from tests.stack_fixture import PROVIDER_SOURCES

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("source", sorted(PROVIDER_SOURCES))
def test_provider_event_is_accepted_and_stored(stack: Stack, stack_config: PlatformConfig, source: str) -> None:
    scheme, secret = PROVIDER_SOURCES[source]
    rejected_id = "rejected-" + str(uuid.uuid4())
    with edge_client(stack_config) as client:
        # First a request signed with the wrong secret, carrying an event id of our choosing ...
        bad_body, bad_headers = sample_event(scheme)
        wrong = sign(scheme, secret[:-2] + "zz", bad_body, now=time.time(), event_id=rejected_id)
        rejected = client.post(f"/webhook/{source}", content=bad_body, headers={**bad_headers, **wrong})
        # ... then a good one, queued after it.
        body, headers = sample_event(scheme)
        signed = sign(scheme, secret, body, now=time.time(), event_id=None)
        resp = client.post(f"/webhook/{source}", content=body, headers={**headers, **signed})
    assert rejected.status_code == 401, rejected.text
    assert rejected.json()["details"][0]["reason"] == "SIGNATURE_MISMATCH"
    assert resp.status_code == 200, resp.text
    event_id = resp.json()["event_id"]
    event = wait_for_event(stack_config, source, event_id)
    assert event.body == body and event.provider == scheme
    if scheme != "standard_webhooks":
        assert event.event_type  # from the provider's header or payload
    assert event.duplicates == 0
    # The rejected request was ahead of the good one in the queue: had it been queued, it would be stored now.
    assert get_event_code(stack_config, source, rejected_id) == grpc.StatusCode.NOT_FOUND
