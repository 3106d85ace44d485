"""The generic, option-driven HMAC scheme."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest

from switchboard.errors import ConfigError, SignatureError, SwitchboardError
from switchboard.signatures import hmac as generic
from switchboard.signatures.base import Verified

SECRET = "generic-secret-value-1"
OTHER = "generic-secret-value-2"
THIRD = "generic-secret-value-3"
NOW = 1_700_000_000.0
BODY = json.dumps({"event": {"id": "ev_42", "kind": "order.created"}, "n": 1}).encode()


def verifier(*secrets: str, **options: Any) -> generic.HmacVerifier:
    options.setdefault("header", "X-Signature")
    return generic.build("gen", list(secrets or (SECRET,)), options)


def sign(secret: str = SECRET, body: bytes = BODY, now: float = NOW, **options: Any) -> dict[str, str]:
    options.setdefault("header", "X-Signature")
    return generic.sign(secret, body, now=now, **options)


def test_defaults_hex_sha256_raw_body() -> None:
    headers = sign()
    assert headers == {"x-signature": hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()}
    result = verifier().verify(headers, BODY, NOW)
    assert result == Verified("sha256:" + hashlib.sha256(BODY).hexdigest(), "", None)


def test_base64_sha512_with_prefix() -> None:
    options: dict[str, Any] = {"algorithm": "sha512", "encoding": "base64", "prefix": "SHA512="}
    headers = sign(**options)
    digest = hmac.new(SECRET.encode(), BODY, hashlib.sha512).digest()
    assert headers["x-signature"] == "SHA512=" + base64.b64encode(digest).decode()
    assert verifier(**options).verify(headers, BODY, NOW)
    # The prefix is compared case-insensitively.
    lowered = {"x-signature": headers["x-signature"].replace("SHA512=", "sha512=")}
    assert verifier(**options).verify(lowered, BODY, NOW)


def test_id_and_type_from_headers_first_then_fields() -> None:
    options: dict[str, Any] = {
        "id_header": "X-Event-Id",
        "type_header": "X-Event-Type",
        "id_field": "event.id",
        "type_field": "event.kind",
    }
    headers = sign(**options, event_id="hdr-1", event_type="from.header")
    assert verifier(**options).verify(headers, BODY, NOW) == Verified("hdr-1", "from.header", None)
    del headers["x-event-id"]
    assert verifier(**options).verify(headers, BODY, NOW) == Verified("ev_42", "from.header", None)


def test_fields_by_dotted_path_and_index() -> None:
    body = json.dumps({"items": [{"id": 7, "t": "a.b"}]}).encode()
    options: dict[str, Any] = {"id_field": "items.0.id", "type_field": "items.0.t"}
    assert verifier(**options).verify(sign(body=body), body, NOW) == Verified("7", "a.b", None)


def test_fields_fall_back_when_absent_or_not_json() -> None:
    options: dict[str, Any] = {"id_field": "event.id", "type_field": "event.kind"}
    for body in (b"not json", b'{"event": 5}', b"[" * 50_000, b'{"event": {"id": true, "kind": 3}}'):
        result = verifier(**options).verify(sign(body=body), body, NOW)
        assert result == Verified("sha256:" + hashlib.sha256(body).hexdigest(), "", None)


def test_timestamp_header_signed_and_checked() -> None:
    options: dict[str, Any] = {"timestamp_header": "X-Timestamp", "tolerance_seconds": 60}
    headers = sign(**options)
    assert headers["x-timestamp"] == str(int(NOW))
    expected = hmac.new(SECRET.encode(), f"{int(NOW)}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert headers["x-signature"] == expected
    assert verifier(**options).verify(headers, BODY, NOW).provider_time == NOW
    with pytest.raises(SignatureError) as exc:
        verifier(**options).verify(sign(now=NOW - 61, **options), BODY, NOW)
    assert (exc.value.reason, exc.value.metadata) == ("TIMESTAMP_EXPIRED", {"header": "x-timestamp"})
    with pytest.raises(SignatureError) as exc:
        verifier(**options).verify(sign(now=NOW + 61, **options), BODY, NOW)
    assert exc.value.reason == "TIMESTAMP_IN_FUTURE"
    with pytest.raises(SignatureError) as exc:
        verifier(**options).verify(headers | {"x-timestamp": str(int(NOW) + 1)}, BODY, NOW)
    assert exc.value.reason == "SIGNATURE_MISMATCH"
    with pytest.raises(SignatureError) as exc:
        verifier(**options).verify({"x-signature": headers["x-signature"]}, BODY, NOW)
    assert (exc.value.reason, exc.value.metadata) == ("SIGNATURE_HEADER_MISSING", {"header": "x-timestamp"})
    with pytest.raises(SignatureError) as exc:
        verifier(**options).verify(headers | {"x-timestamp": "soon"}, BODY, NOW)
    assert (exc.value.reason, exc.value.metadata) == ("SIGNATURE_HEADER_MALFORMED", {"header": "x-timestamp"})


def test_tampered_body_and_wrong_secret() -> None:
    for headers, body in ((sign(), BODY + b"\n"), (sign(OTHER), BODY)):
        with pytest.raises(SignatureError) as exc:
            verifier().verify(headers, body, NOW)
        assert (exc.value.reason, exc.value.metadata) == ("SIGNATURE_MISMATCH", {"header": "x-signature"})


def test_missing_header() -> None:
    with pytest.raises(SignatureError) as exc:
        verifier().verify({"x-other": "1"}, BODY, NOW)
    assert (exc.value.reason, exc.value.metadata) == ("SIGNATURE_HEADER_MISSING", {"header": "x-signature"})


@pytest.mark.parametrize(
    ("options", "value"),
    [
        ({}, "zz" * 32),
        ({}, "ab" * 31),
        ({}, "ab" * 64),  # a sha512 length under sha256
        ({"algorithm": "sha512"}, "ab" * 32),
        ({"encoding": "base64"}, "ab" * 32),
        ({"encoding": "base64"}, base64.b64encode(b"x" * 31).decode()),
        ({"prefix": "sha256="}, "ab" * 32),
        ({"prefix": "sha256="}, "sha1=" + "ab" * 32),
    ],
)
def test_malformed_header(options: dict[str, str], value: str) -> None:
    with pytest.raises(SignatureError) as exc:
        verifier(**options).verify({"x-signature": value}, BODY, NOW)
    assert (exc.value.reason, exc.value.metadata) == ("SIGNATURE_HEADER_MALFORMED", {"header": "x-signature"})


def test_rotation() -> None:
    v = verifier(SECRET, OTHER)
    assert v.verify(sign(SECRET), BODY, NOW)
    assert v.verify(sign(OTHER), BODY, NOW)
    with pytest.raises(SignatureError) as exc:
        v.verify(sign(THIRD), BODY, NOW)
    assert exc.value.reason == "SIGNATURE_MISMATCH"


def test_type_header_missing_gives_empty_type_and_id_header_missing_gives_hash() -> None:
    options: dict[str, Any] = {"id_header": "X-Id", "type_header": "X-Type"}
    result = verifier(**options).verify(sign(), BODY, NOW)
    assert result == Verified("sha256:" + hashlib.sha256(BODY).hexdigest(), "", None)


def test_binary_body_is_fine() -> None:
    # The generic scheme never requires JSON.
    body = b"\xff\x00binary"
    assert verifier().verify(sign(body=body), body, NOW).event_id.startswith("sha256:")


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"header": None}, "header"),
        ({"header": 5}, "header"),
        ({"header": "bad header"}, "header"),
        ({"algorithm": "md5"}, "algorithm"),
        ({"algorithm": "sha1"}, "algorithm"),
        ({"encoding": "base32"}, "encoding"),
        ({"prefix": 1}, "prefix"),
        ({"prefix": "\n"}, "prefix"),
        ({"timestamp_header": "x y"}, "timestamp_header"),
        ({"tolerance_seconds": 60}, "tolerance_seconds"),  # without timestamp_header
        ({"timestamp_header": "x-ts", "tolerance_seconds": -1}, "tolerance_seconds"),
        ({"id_field": "a..b"}, "id_field"),
        ({"type_field": ""}, "type_field"),
        ({"id_header": ["x"]}, "id_header"),
        ({"colour": "blue"}, "colour"),
        # headers the edge removes or replaces: the sender's value never reaches ingest
        ({"id_header": "X-Request-Id"}, "id_header"),  # Envoy's own id: every retry a new event
        ({"header": "traceparent"}, "header"),
        ({"timestamp_header": "x-envoy-original-path"}, "timestamp_header"),
        ({"type_header": "x-switchboard-client"}, "type_header"),
        ({"header": "content-type"}, "header"),
        ({"id_header": "baggage"}, "id_header"),
    ],
)
def test_invalid_options_name_the_source_and_key(options: dict[str, Any], key: str) -> None:
    raw = {"header": "x-signature", **options}
    if raw["header"] is None:
        del raw["header"]
    with pytest.raises(ConfigError) as exc:
        generic.build("gen", [SECRET], raw)
    assert "'gen'" in str(exc.value)
    assert repr(key) in str(exc.value)


def test_secret_never_in_errors_or_repr() -> None:
    v = verifier(SECRET, OTHER)
    for headers in (sign(THIRD), {}, {"x-signature": "nope"}):
        with pytest.raises(SwitchboardError) as exc:
            v.verify(headers, BODY, NOW)
        for text in (str(exc.value), repr(exc.value), repr(exc.value.metadata)):
            assert SECRET not in text and OTHER not in text
    assert SECRET not in repr(v)
