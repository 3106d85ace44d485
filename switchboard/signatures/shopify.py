"""Shopify: ``X-Shopify-Hmac-Sha256`` = base64(HMAC-SHA256(app secret, raw body)).

Nothing time-related is signed, so there is no tolerance check; only the body is signed: a faithful re-send
is caught by deduplicating on ``X-Shopify-Webhook-Id`` (the event id), but a signed body sent again under a
new webhook id or topic is taken as a new event (``allow_cidrs`` narrows who can). Type: ``X-Shopify-Topic``.
Provider time: ``X-Shopify-Triggered-At`` (ISO 8601) when present. Entity: the payload's ``id`` (as a
string); version: the payload's ``updated_at`` (ISO 8601) in microseconds. The body is parsed only for those
optional fields: a body that is not JSON still verifies, with no entity.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from switchboard.signatures.base import (
    MacSet,
    Options,
    Verified,
    Verifier,
    as_id,
    decode_base64,
    event_id_missing,
    format_iso8601,
    header_value,
    malformed,
    parse_iso8601,
    require,
    try_json,
    unix_to_micros,
    utf8_keys,
)

SCHEME = "shopify"
HEADER = "x-shopify-hmac-sha256"
ID_HEADER = "x-shopify-webhook-id"
TOPIC_HEADER = "x-shopify-topic"
TRIGGERED_AT_HEADER = "x-shopify-triggered-at"


class ShopifyVerifier(Verifier):
    __slots__ = ("_macs",)

    scheme = SCHEME
    SIGNATURE_HEADERS = frozenset({HEADER})

    def __init__(self, source: str, secrets: Sequence[str]) -> None:
        super().__init__(source)
        self._macs = MacSet(source, utf8_keys(source, secrets))

    def verify(self, headers: Mapping[str, str], body: bytes, received_at: float) -> Verified:
        raw = decode_base64(require(headers, HEADER), 32)
        if raw is None:
            raise malformed(HEADER, "the signature is not the base64 of 32 bytes")
        self._macs.check([raw], HEADER, body)

        event_id = header_value(headers, ID_HEADER)
        if not event_id:
            raise event_id_missing(ID_HEADER)
        provider_time = parse_iso8601(header_value(headers, TRIGGERED_AT_HEADER))
        entity_id, version = "", 0
        payload = try_json(body)
        if isinstance(payload, dict):
            entity_id = as_id(payload.get("id"))
            if entity_id:
                version = unix_to_micros(parse_iso8601(payload.get("updated_at")))
        return Verified(event_id, header_value(headers, TOPIC_HEADER), provider_time, entity_id, version)


def build(source: str, secrets: Sequence[str], options: Mapping[str, Any]) -> ShopifyVerifier:
    opts = Options(source, SCHEME, options)
    opts.finish()
    return ShopifyVerifier(source, secrets)


def sign(
    secret: str,
    body: bytes,
    *,
    now: float,
    event_id: str | None = None,
    event_type: str = "orders/updated",
    shop_domain: str = "example.myshopify.com",
) -> dict[str, str]:
    """The headers Shopify sends (keys lowercase): signature, webhook id, topic, trigger time, shop."""
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).digest()
    return {
        HEADER: base64.b64encode(digest).decode("ascii"),
        ID_HEADER: event_id or str(uuid.uuid4()),
        TOPIC_HEADER: event_type,
        TRIGGERED_AT_HEADER: format_iso8601(now),
        "x-shopify-shop-domain": shop_domain,
        "x-shopify-api-version": "2024-07",
    }
