"""``switchboard_devstack.samples``: realistic events that our own verifiers accept once signed."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest

from switchboard.signatures import github, hmac, shopify, standard_webhooks, stripe
from switchboard_devstack.samples import sample_event, signed_event

WHSEC = "whsec_" + base64.b64encode(b"s" * 32).decode()
SCHEMES = ["stripe", "github", "shopify", "standard_webhooks", "hmac"]
HMAC_OPTIONS = {"header": "X-Sig", "id_field": "id", "type_field": "type", "timestamp_header": "X-Ts"}


def build(scheme: str, options: dict[str, Any]) -> Any:
    module = {
        "stripe": stripe,
        "github": github,
        "shopify": shopify,
        "standard_webhooks": standard_webhooks,
        "hmac": hmac,
    }[scheme]
    return module.build("s", [WHSEC], options)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_sample_is_json_with_headers(scheme: str) -> None:
    body, headers = sample_event(scheme)
    assert isinstance(json.loads(body), dict)
    assert headers["content-type"] == "application/json"
    assert all(key == key.lower() for key in headers)
    assert not any("signature" in key or "hmac" in key for key in headers)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("size", [None, 100, 5000, 64 * 1024])
def test_signed_samples_verify(scheme: str, size: int | None) -> None:
    options = HMAC_OPTIONS if scheme == "hmac" else {}
    now = time.time()
    body, headers = signed_event(scheme, WHSEC, now=now, options=options, size=size, entity_id="12345")
    if size and size > 3000:
        assert len(body) == size
    result = build(scheme, options).verify(headers, body, now)
    assert result.event_id
    assert result.event_type
    if scheme in ("stripe", "shopify"):
        assert result.entity_id == "12345"
        assert result.entity_version > 0
    if scheme != "github":
        assert result.provider_time == pytest.approx(now, abs=2)


def test_fresh_ids_each_call() -> None:
    assert json.loads(sample_event("stripe")[0])["id"] != json.loads(sample_event("stripe")[0])["id"]
    assert sample_event("github")[1]["x-github-delivery"] != sample_event("github")[1]["x-github-delivery"]
    assert sample_event("shopify")[1]["x-shopify-webhook-id"] != sample_event("shopify")[1]["x-shopify-webhook-id"]


def test_event_type_and_shapes() -> None:
    stripe_event = json.loads(sample_event("stripe")[0])
    assert stripe_event["id"].startswith("evt_") and stripe_event["type"] == "invoice.paid"
    assert stripe_event["data"]["object"]["object"] == "invoice"
    assert json.loads(sample_event("stripe", event_type="invoice.voided")[0])["type"] == "invoice.voided"
    assert sample_event("github")[1]["x-github-event"] == "push"
    assert "commits" in json.loads(sample_event("github")[0])
    assert sample_event("shopify")[1]["x-shopify-topic"] == "orders/updated"
    sw_event = json.loads(sample_event("standard_webhooks", event_type="user.created")[0])
    assert set(sw_event) == {"type", "timestamp", "data"} and sw_event["type"] == "user.created"


def test_unknown_scheme() -> None:
    with pytest.raises(ValueError, match="paypal"):
        sample_event("paypal")
