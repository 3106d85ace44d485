"""Stripe signature verification, cross-checked against the official ``stripe`` library."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
import stripe as stripe_lib

from switchboard.errors import ConfigError, InvalidRequest, SignatureError, SwitchboardError
from switchboard.signatures import stripe
from switchboard.signatures.base import Verified

SECRET = "whsec_test_4eC39HqLyjWDarjtT1zdp7dc"
OTHER = "whsec_other_9f8e7d6c5b4a"
THIRD = "whsec_third_0000000000000"
NOW = 1_700_000_000.0


def event(**overrides: object) -> bytes:
    obj: dict[str, object] = {
        "id": "evt_1NG8Du2eZvKYlo2CUI79vXWy",
        "object": "event",
        "created": 1_699_999_990,
        "type": "invoice.paid",
        "data": {"object": {"id": "in_1NG8Du2eZvKYlo2C", "object": "invoice", "created": 1_699_000_000}},
    }
    obj.update(overrides)
    return json.dumps(obj, indent=2).encode()


BODY = event()


def verifier(*secrets: str, **options: object) -> stripe.StripeVerifier:
    return stripe.build("pay", list(secrets or (SECRET,)), options)


def reason_of(exc_info: pytest.ExceptionInfo[SwitchboardError]) -> str:
    return exc_info.value.reason


def test_valid_signature_extracts_fields() -> None:
    headers = stripe.sign(SECRET, BODY, now=NOW)
    assert verifier().verify(headers, BODY, NOW) == Verified(
        event_id="evt_1NG8Du2eZvKYlo2CUI79vXWy",
        event_type="invoice.paid",
        provider_time=1_699_999_990.0,
        entity_id="in_1NG8Du2eZvKYlo2C",
        # No data.object.updated: the event's created, in microseconds (not the object's created).
        entity_version=1_699_999_990_000_000,
    )


def test_entity_version_prefers_object_updated() -> None:
    body = event(data={"object": {"id": "sub_1", "created": 1, "updated": 1_699_999_995}})
    result = verifier().verify(stripe.sign(SECRET, body, now=NOW), body, NOW)
    assert (result.entity_id, result.entity_version) == ("sub_1", 1_699_999_995_000_000)


def test_fields_absent_give_defaults() -> None:
    body = json.dumps({"id": "evt_1"}).encode()
    result = verifier().verify(stripe.sign(SECRET, body, now=NOW), body, NOW)
    assert result == Verified("evt_1", "", None, "", 0)


@pytest.mark.parametrize("created", [True, "1700000000", 1e400, -5, 10**30, None])
def test_odd_created_values_are_ignored(created: object) -> None:
    body = event(created=created)
    result = verifier().verify(stripe.sign(SECRET, body, now=NOW), body, NOW)
    assert result.provider_time is None
    assert result.entity_version == 0


def test_tampered_body_is_a_mismatch() -> None:
    headers = stripe.sign(SECRET, BODY, now=NOW)
    with pytest.raises(SignatureError) as exc:
        verifier().verify(headers, BODY.replace(b"invoice.paid", b"invoice.void"), NOW)
    assert exc.value.reason == "SIGNATURE_MISMATCH"
    assert exc.value.metadata == {"header": "stripe-signature"}


def test_wrong_secret_is_a_mismatch() -> None:
    with pytest.raises(SignatureError) as exc:
        verifier().verify(stripe.sign(OTHER, BODY, now=NOW), BODY, NOW)
    assert exc.value.reason == "SIGNATURE_MISMATCH"


def test_tampered_timestamp_is_a_mismatch() -> None:
    header = stripe.sign(SECRET, BODY, now=NOW)["stripe-signature"]
    forged = header.replace(f"t={int(NOW)}", f"t={int(NOW) + 1}")
    with pytest.raises(SignatureError) as exc:
        verifier().verify({"stripe-signature": forged}, BODY, NOW)
    assert exc.value.reason == "SIGNATURE_MISMATCH"


@pytest.mark.parametrize("headers", [{}, {"stripe-signature": ""}, {"stripe-signature": "   "}])
def test_missing_header(headers: dict[str, str]) -> None:
    with pytest.raises(SignatureError) as exc:
        verifier().verify(headers, BODY, NOW)
    assert exc.value.reason == "SIGNATURE_HEADER_MISSING"
    assert exc.value.metadata == {"header": "stripe-signature"}


GOOD_HEX = "a" * 64


@pytest.mark.parametrize(
    "value",
    [
        "garbage",
        f"v1={GOOD_HEX}",  # no t
        "t=1700000000",  # no v1
        f"t=1700000000,v0={GOOD_HEX}",  # only other schemes
        f"t=abc,v1={GOOD_HEX}",
        f"t=-1700000000,v1={GOOD_HEX}",
        f"t=1700000000.5,v1={GOOD_HEX}",
        f"t=1700000000,t=1700000001,v1={GOOD_HEX}",
        "t=1700000000,v1=zz",
        f"t=1700000000,v1={GOOD_HEX[:-2]}",
        f"t=1700000000,v1={GOOD_HEX}00",
        "t=1700000000,v1=" + "é" * 64,
    ],
)
def test_malformed_header(value: str) -> None:
    with pytest.raises(SignatureError) as exc:
        verifier().verify({"stripe-signature": value}, BODY, NOW)
    assert exc.value.reason == "SIGNATURE_HEADER_MALFORMED"
    assert exc.value.metadata == {"header": "stripe-signature"}


def test_other_schemes_and_spaces_are_ignored() -> None:
    header = stripe.sign(SECRET, BODY, now=NOW)["stripe-signature"]
    t, v1 = header.split(",")
    value = f"{t}, v0={'0' * 64}, {v1}, extra"
    assert verifier().verify({"stripe-signature": value}, BODY, NOW).event_id.startswith("evt_")


def test_uppercase_hex_is_accepted() -> None:
    header = stripe.sign(SECRET, BODY, now=NOW)["stripe-signature"]
    t, v1 = header.split(",v1=")
    assert verifier().verify({"stripe-signature": f"{t},v1={v1.upper()}"}, BODY, NOW)


def test_expired_timestamp() -> None:
    headers = stripe.sign(SECRET, BODY, now=NOW - 301)
    with pytest.raises(SignatureError) as exc:
        verifier().verify(headers, BODY, NOW)
    assert exc.value.reason == "TIMESTAMP_EXPIRED"
    assert exc.value.metadata == {"header": "stripe-signature"}


def test_future_timestamp() -> None:
    headers = stripe.sign(SECRET, BODY, now=NOW + 301)
    with pytest.raises(SignatureError) as exc:
        verifier().verify(headers, BODY, NOW)
    assert exc.value.reason == "TIMESTAMP_IN_FUTURE"


@pytest.mark.parametrize("skew", [-300, -299, 0, 299, 300])
def test_within_tolerance(skew: int) -> None:
    assert verifier().verify(stripe.sign(SECRET, BODY, now=NOW + skew), BODY, NOW)


def test_tolerance_option() -> None:
    v = verifier(SECRET, tolerance_seconds=10)
    assert v.verify(stripe.sign(SECRET, BODY, now=NOW - 10), BODY, NOW)
    with pytest.raises(SignatureError) as exc:
        v.verify(stripe.sign(SECRET, BODY, now=NOW - 11), BODY, NOW)
    assert exc.value.reason == "TIMESTAMP_EXPIRED"


def test_timestamp_checked_against_arrival_not_now() -> None:
    # Verification after a queue delay still uses the arrival time.
    headers = stripe.sign(SECRET, BODY, now=NOW)
    assert verifier().verify(headers, BODY, received_at=NOW + 100)


def test_rotation_accepts_either_secret_not_a_third() -> None:
    v = verifier(SECRET, OTHER)
    assert v.verify(stripe.sign(SECRET, BODY, now=NOW), BODY, NOW)
    assert v.verify(stripe.sign(OTHER, BODY, now=NOW), BODY, NOW)
    with pytest.raises(SignatureError) as exc:
        v.verify(stripe.sign(THIRD, BODY, now=NOW), BODY, NOW)
    assert exc.value.reason == "SIGNATURE_MISMATCH"


def test_several_v1_entries_while_stripe_rolls() -> None:
    headers = stripe.sign(THIRD, BODY, now=NOW, extra_secrets=[SECRET])
    assert headers["stripe-signature"].count("v1=") == 2
    assert verifier().verify(headers, BODY, NOW)


def test_body_not_json() -> None:
    for body in (b"not json", b"[1, 2]", b"\xff\xfe", b"[" * 100_000):
        with pytest.raises(InvalidRequest) as exc:
            verifier().verify(stripe.sign(SECRET, body, now=NOW), body, NOW)
        assert exc.value.reason == "BODY_NOT_JSON"


@pytest.mark.parametrize("event_id", [None, "", True, 1.5, {"x": 1}])
def test_event_id_missing(event_id: object) -> None:
    body = event(id=event_id)
    with pytest.raises(InvalidRequest) as exc:
        verifier().verify(stripe.sign(SECRET, body, now=NOW), body, NOW)
    assert exc.value.reason == "EVENT_ID_MISSING"


def test_signature_checked_before_the_body() -> None:
    with pytest.raises(SignatureError):
        verifier().verify(stripe.sign(OTHER, b"not json", now=NOW), b"not json", NOW)


def test_unknown_and_invalid_options() -> None:
    with pytest.raises(ConfigError, match=r"'pay'.*'allow_sha1'"):
        verifier(SECRET, allow_sha1=True)
    for bad in (0, -1, "300", True, float("nan")):
        with pytest.raises(ConfigError, match=r"'pay'.*'tolerance_seconds'"):
            verifier(SECRET, tolerance_seconds=bad)


def test_secret_never_in_errors_or_repr() -> None:
    v = verifier(SECRET, OTHER)
    errors: list[SwitchboardError] = []
    for headers, body in [
        (stripe.sign(THIRD, BODY, now=NOW), BODY),
        (stripe.sign(SECRET, BODY, now=NOW - 1000), BODY),
        ({"stripe-signature": "t=1"}, BODY),
        ({}, BODY),
        (stripe.sign(SECRET, b"x", now=NOW), b"x"),
    ]:
        with pytest.raises(SwitchboardError) as exc:
            v.verify(headers, body, NOW)
        errors.append(exc.value)
    for err in errors:
        for text in (str(err), repr(err), repr(err.metadata), err.message):
            assert SECRET not in text and OTHER not in text
    assert SECRET not in repr(v) and OTHER not in repr(v)


# --- cross-checks with the official library --------------------------------------------------------


def test_stripe_library_accepts_our_signature() -> None:
    import time

    now = time.time()
    headers = stripe.sign(SECRET, BODY, now=now)
    assert stripe_lib.WebhookSignature.verify_header(BODY, headers["stripe-signature"], SECRET, tolerance=300)
    constructed = stripe_lib.Webhook.construct_event(BODY, headers["stripe-signature"], SECRET)
    assert constructed.id == "evt_1NG8Du2eZvKYlo2CUI79vXWy"
    assert constructed.type == "invoice.paid"


def test_stripe_library_accepts_our_rolling_header() -> None:
    import time

    headers = stripe.sign(OTHER, BODY, now=time.time(), extra_secrets=[SECRET])
    assert stripe_lib.WebhookSignature.verify_header(BODY, headers["stripe-signature"], SECRET)


def test_we_accept_the_stripe_library_signature() -> None:
    payload = BODY.decode()
    header = stripe_lib.WebhookSignature.generate_signature_header(payload, SECRET, timestamp=int(NOW))
    assert verifier().verify({"stripe-signature": header}, BODY, NOW).event_type == "invoice.paid"


def test_we_accept_the_documented_compute_signature() -> None:
    payload = BODY.decode()
    t = int(NOW)
    compute = stripe_lib.WebhookSignature._compute_signature
    signature = compute(f"{t}.{payload}", SECRET)
    manual = hmac.new(SECRET.encode(), f"{t}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert signature == manual
    assert verifier().verify({"stripe-signature": f"t={t},v1={signature}"}, BODY, NOW)
