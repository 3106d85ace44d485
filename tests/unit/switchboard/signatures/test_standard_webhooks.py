"""Standard Webhooks verification, cross-checked against the reference ``standardwebhooks`` library."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime

import pytest
import standardwebhooks

from switchboard.errors import ConfigError, SignatureError, SwitchboardError
from switchboard.signatures import standard_webhooks as sw
from switchboard.signatures.base import Verified

# The example of the specification (also Svix's documentation).
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TS = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
OTHER = "whsec_" + base64.b64encode(b"rotated-secret-rotated-secret-32").decode()
THIRD = "whsec_" + base64.b64encode(b"a third secret, never configured").decode()
NOW = 1_700_000_000.0
BODY = json.dumps({"type": "invoice.paid", "timestamp": "2023-11-14T22:13:20Z", "data": {"id": "inv_1"}}).encode()


def verifier(*secrets: str, **options: object) -> sw.StandardWebhooksVerifier:
    return sw.build("std", list(secrets or (SECRET,)), options)


def signed(secret: str = SECRET, body: bytes = BODY, now: float = NOW) -> dict[str, str]:
    return sw.sign(secret, body, now=now, event_id="msg_1")


def test_specification_example() -> None:
    headers = sw.sign(SPEC_SECRET, SPEC_BODY, now=SPEC_TS, event_id=SPEC_ID)
    assert headers == {"webhook-id": SPEC_ID, "webhook-timestamp": str(SPEC_TS), "webhook-signature": SPEC_SIGNATURE}
    result = verifier(SPEC_SECRET).verify(headers, SPEC_BODY, SPEC_TS)
    assert result == Verified(SPEC_ID, "", float(SPEC_TS))


def test_valid_signature_extracts_fields() -> None:
    assert verifier().verify(signed(), BODY, NOW) == Verified("msg_1", "invoice.paid", NOW)


def test_secret_without_prefix_or_padding() -> None:
    raw = SECRET.removeprefix("whsec_")
    assert verifier(raw).verify(signed(), BODY, NOW)
    assert verifier("whsec_" + raw.rstrip("=")).verify(signed(), BODY, NOW)


@pytest.mark.parametrize("secret", ["whsec_", "whsec_!!!notbase64", "whsec_éXYZ", "whsec_QUJDR"])
def test_bad_secret_is_a_config_error_without_the_secret(secret: str) -> None:
    with pytest.raises(ConfigError) as exc:
        verifier(secret)
    assert "'std'" in str(exc.value)
    if secret != "whsec_":
        assert secret.removeprefix("whsec_") not in str(exc.value)
        assert secret.removeprefix("whsec_") not in repr(exc.value)


def test_tampered_body() -> None:
    with pytest.raises(SignatureError) as exc:
        verifier().verify(signed(), BODY.replace(b"inv_1", b"inv_2"), NOW)
    assert exc.value.reason == "SIGNATURE_MISMATCH"
    assert exc.value.metadata == {"header": "webhook-signature"}


def test_tampered_id_or_timestamp() -> None:
    with pytest.raises(SignatureError) as exc:
        verifier().verify(signed() | {"webhook-id": "msg_2"}, BODY, NOW)
    assert exc.value.reason == "SIGNATURE_MISMATCH"
    with pytest.raises(SignatureError) as exc:
        verifier().verify(signed() | {"webhook-timestamp": str(int(NOW) + 1)}, BODY, NOW)
    assert exc.value.reason == "SIGNATURE_MISMATCH"


def test_wrong_secret() -> None:
    with pytest.raises(SignatureError) as exc:
        verifier().verify(signed(OTHER), BODY, NOW)
    assert exc.value.reason == "SIGNATURE_MISMATCH"


@pytest.mark.parametrize("header", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header(header: str) -> None:
    headers = signed()
    del headers[header]
    with pytest.raises(SignatureError) as exc:
        verifier().verify(headers, BODY, NOW)
    assert exc.value.reason == "SIGNATURE_HEADER_MISSING"
    assert exc.value.metadata == {"header": header}


GOOD_B64 = base64.b64encode(b"\x01" * 32).decode()


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("webhook-timestamp", "abc"),
        ("webhook-timestamp", "1700000000.5"),
        ("webhook-timestamp", "-1700000000"),
        ("webhook-timestamp", "\u0661\u0667" + "\u0660" * 8),
        ("webhook-signature", GOOD_B64),  # no version
        ("webhook-signature", "v1," + "!" * 44),
        ("webhook-signature", "v1," + base64.b64encode(b"\x01" * 31).decode()),
        ("webhook-signature", "v1a," + GOOD_B64),  # only other versions
        ("webhook-signature", "v2,abc v1"),
    ],
)
def test_malformed_headers(header: str, value: str) -> None:
    with pytest.raises(SignatureError) as exc:
        verifier().verify(signed() | {header: value}, BODY, NOW)
    assert exc.value.reason == "SIGNATURE_HEADER_MALFORMED"
    assert exc.value.metadata == {"header": header}


def test_undecodable_id_is_malformed() -> None:
    with pytest.raises(SignatureError) as exc:
        verifier().verify(signed() | {"webhook-id": "msg_\udc80"}, BODY, NOW)
    assert (exc.value.reason, exc.value.metadata) == ("SIGNATURE_HEADER_MALFORMED", {"header": "webhook-id"})


def test_other_versions_are_ignored() -> None:
    headers = signed()
    headers["webhook-signature"] = f"v1a,{GOOD_B64}  v1,{GOOD_B64} {headers['webhook-signature']}"
    assert verifier().verify(headers, BODY, NOW)


def test_expired_timestamp() -> None:
    with pytest.raises(SignatureError) as exc:
        verifier().verify(signed(now=NOW - 301), BODY, NOW)
    assert exc.value.reason == "TIMESTAMP_EXPIRED"
    assert exc.value.metadata == {"header": "webhook-timestamp"}


def test_future_timestamp() -> None:
    with pytest.raises(SignatureError) as exc:
        verifier().verify(signed(now=NOW + 301), BODY, NOW)
    assert exc.value.reason == "TIMESTAMP_IN_FUTURE"


def test_tolerance_option() -> None:
    v = verifier(SECRET, tolerance_seconds=30.5)
    assert v.verify(signed(now=NOW + 30), BODY, NOW)
    with pytest.raises(SignatureError) as exc:
        v.verify(signed(now=NOW + 31), BODY, NOW)
    assert exc.value.reason == "TIMESTAMP_IN_FUTURE"


def test_rotation() -> None:
    v = verifier(SECRET, OTHER)
    assert v.verify(signed(SECRET), BODY, NOW)
    assert v.verify(signed(OTHER), BODY, NOW)
    with pytest.raises(SignatureError) as exc:
        v.verify(signed(THIRD), BODY, NOW)
    assert exc.value.reason == "SIGNATURE_MISMATCH"
    # A sender signing with several secrets (its own rotation).
    assert verifier(OTHER).verify(sw.sign(THIRD, BODY, now=NOW, extra_secrets=[OTHER]), BODY, NOW)


def test_an_authentic_body_that_is_not_a_json_object_is_taken_without_a_type() -> None:
    """The id is the signed header's: refused with a 400, the sender sent it again until it gave up, and the
    event was lost."""
    for body in (b"plain", b"[1]", b'"text"', b"\xc3\x28", b'[{"type": "x"}]'):
        verified = verifier().verify(signed(body=body), body, NOW)
        assert (verified.event_id, verified.event_type) == (signed(body=body)["webhook-id"], "")


def test_missing_type_gives_empty_type() -> None:
    body = b'{"data": {}}'
    assert verifier().verify(signed(body=body), body, NOW).event_type == ""


def test_secret_never_in_errors_or_repr() -> None:
    v = verifier(SECRET, OTHER)
    for headers in (signed(THIRD), {}, signed(now=NOW - 999), signed() | {"webhook-signature": "v1,xx"}):
        with pytest.raises(SwitchboardError) as exc:
            v.verify(headers, BODY, NOW)
        for text in (str(exc.value), repr(exc.value), repr(exc.value.metadata)):
            for secret in (SECRET, OTHER):
                assert secret not in text and secret.removeprefix("whsec_") not in text
    assert SECRET.removeprefix("whsec_") not in repr(v)


# --- cross-checks with the reference library ---------------------------------------------------------


def test_reference_library_accepts_ours() -> None:
    now = time.time()
    headers = sw.sign(SECRET, BODY, now=now)
    assert standardwebhooks.Webhook(SECRET).verify(BODY, headers) == json.loads(BODY)


def test_we_accept_the_reference_library() -> None:
    now = int(time.time())
    signature = standardwebhooks.Webhook(SECRET).sign("msg_ref", datetime.fromtimestamp(now, tz=UTC), BODY.decode())
    headers = {"webhook-id": "msg_ref", "webhook-timestamp": str(now), "webhook-signature": signature}
    assert verifier().verify(headers, BODY, now) == Verified("msg_ref", "invoice.paid", float(now))


def test_our_verifier_and_signer_agree_with_the_reference_library_on_the_spec_example() -> None:
    signature = standardwebhooks.Webhook(SPEC_SECRET).sign(
        SPEC_ID, datetime.fromtimestamp(SPEC_TS, tz=UTC), SPEC_BODY.decode()
    )
    headers = {"webhook-id": SPEC_ID, "webhook-timestamp": str(SPEC_TS), "webhook-signature": signature}
    assert verifier(SPEC_SECRET).verify(headers, SPEC_BODY, SPEC_TS) == Verified(SPEC_ID, "", float(SPEC_TS))
    assert sw.sign(SPEC_SECRET, SPEC_BODY, now=SPEC_TS, event_id=SPEC_ID)["webhook-signature"] == signature
