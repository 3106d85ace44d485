"""Shopify ``X-Shopify-Hmac-Sha256`` verification."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime

import pytest

from switchboard.errors import ConfigError, InvalidRequest, SignatureError, SwitchboardError
from switchboard.signatures import shopify
from switchboard.signatures.base import Verified

SECRET = "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"
OTHER = "shpss_rotated_0a1b2c3d4e5f"
THIRD = "shpss_unknown"
NOW = 1_700_000_000.0
WEBHOOK_ID = "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"
BODY = json.dumps(
    {"id": 820982911946154508, "email": "jon@example.com", "updated_at": "2023-11-14T17:13:10-05:00"}
).encode()


def verifier(*secrets: str, **options: object) -> shopify.ShopifyVerifier:
    return shopify.build("shop", list(secrets or (SECRET,)), options)


def signed(secret: str = SECRET, body: bytes = BODY) -> dict[str, str]:
    return shopify.sign(secret, body, now=NOW, event_id=WEBHOOK_ID, event_type="orders/updated")


def test_signature_is_base64_hmac_sha256() -> None:
    expected = base64.b64encode(hmac.new(SECRET.encode(), BODY, hashlib.sha256).digest()).decode()
    assert signed()["x-shopify-hmac-sha256"] == expected


def test_valid_signature_extracts_fields() -> None:
    updated = datetime(2023, 11, 14, 22, 13, 10, tzinfo=UTC).timestamp()
    assert verifier().verify(signed(), BODY, NOW) == Verified(
        event_id=WEBHOOK_ID,
        event_type="orders/updated",
        provider_time=NOW,
        entity_id="820982911946154508",
        entity_version=int(updated) * 1_000_000,
    )


@pytest.mark.parametrize(
    ("triggered_at", "expected"),
    [
        ("2023-03-29T18:00:27.877041743Z", datetime(2023, 3, 29, 18, 0, 27, 877041, tzinfo=UTC).timestamp()),
        ("2023-03-29T18:00:27+02:00", datetime(2023, 3, 29, 16, 0, 27, tzinfo=UTC).timestamp()),
        ("yesterday", None),
        ("", None),
        ("0000-01-01T00:00:00Z", None),
    ],
)
def test_triggered_at(triggered_at: str, expected: float | None) -> None:
    headers = signed() | {"x-shopify-triggered-at": triggered_at}
    assert verifier().verify(headers, BODY, NOW).provider_time == pytest.approx(expected)


def test_optional_fields_absent_or_odd() -> None:
    for body in (b"not json at all", b"[]", json.dumps({"id": None, "updated_at": 5}).encode()):
        headers = signed(body=body)
        del headers["x-shopify-triggered-at"]
        result = verifier().verify(headers, body, NOW)
        assert (result.entity_id, result.entity_version, result.provider_time) == ("", 0, None)


def test_string_id_and_bad_updated_at() -> None:
    body = json.dumps({"id": "gid://shopify/Order/1", "updated_at": "not a date"}).encode()
    result = verifier().verify(signed(body=body), body, NOW)
    assert (result.entity_id, result.entity_version) == ("gid://shopify/Order/1", 0)


def test_tampered_body() -> None:
    with pytest.raises(SignatureError) as exc:
        verifier().verify(signed(), BODY.replace(b"jon@", b"eve@"), NOW)
    assert exc.value.reason == "SIGNATURE_MISMATCH"
    assert exc.value.metadata == {"header": "x-shopify-hmac-sha256"}


def test_wrong_secret() -> None:
    with pytest.raises(SignatureError) as exc:
        verifier().verify(signed(OTHER), BODY, NOW)
    assert exc.value.reason == "SIGNATURE_MISMATCH"


def test_missing_header() -> None:
    headers = signed()
    del headers["x-shopify-hmac-sha256"]
    with pytest.raises(SignatureError) as exc:
        verifier().verify(headers, BODY, NOW)
    assert exc.value.reason == "SIGNATURE_HEADER_MISSING"
    assert exc.value.metadata == {"header": "x-shopify-hmac-sha256"}


@pytest.mark.parametrize(
    "value",
    [
        "not base64!",
        base64.b64encode(b"x" * 31).decode(),
        base64.b64encode(b"x" * 33).decode(),
        base64.b64encode(b"x" * 32).decode().rstrip("="),
        "a" * 64,  # hex, not base64 of 32 bytes
        "é" * 44,
    ],
)
def test_malformed_header(value: str) -> None:
    with pytest.raises(SignatureError) as exc:
        verifier().verify(signed() | {"x-shopify-hmac-sha256": value}, BODY, NOW)
    assert exc.value.reason == "SIGNATURE_HEADER_MALFORMED"
    assert exc.value.metadata == {"header": "x-shopify-hmac-sha256"}


def test_missing_webhook_id() -> None:
    headers = signed()
    del headers["x-shopify-webhook-id"]
    with pytest.raises(InvalidRequest) as exc:
        verifier().verify(headers, BODY, NOW)
    assert exc.value.reason == "EVENT_ID_MISSING"


def test_no_timestamp_tolerance() -> None:
    assert verifier().verify(signed(), BODY, NOW + 86400 * 30)


def test_rotation() -> None:
    v = verifier(SECRET, OTHER)
    assert v.verify(signed(SECRET), BODY, NOW)
    assert v.verify(signed(OTHER), BODY, NOW)
    with pytest.raises(SignatureError) as exc:
        v.verify(signed(THIRD), BODY, NOW)
    assert exc.value.reason == "SIGNATURE_MISMATCH"


def test_options_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"'shop'.*'header'"):
        verifier(SECRET, header="x-other")


def test_secret_never_in_errors_or_repr() -> None:
    v = verifier(SECRET, OTHER)
    for headers in (signed(THIRD), {}, {"x-shopify-hmac-sha256": "??"}):
        with pytest.raises(SwitchboardError) as exc:
            v.verify(headers, BODY, NOW)
        for text in (str(exc.value), repr(exc.value), repr(exc.value.metadata)):
            assert SECRET not in text and OTHER not in text
    assert SECRET not in repr(v)
