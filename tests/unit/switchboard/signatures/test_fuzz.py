"""Property tests: whatever arrives, ``verify`` returns ``Verified`` or raises SignatureError/InvalidRequest.

Two families: arbitrary headers and bodies (exercising the header parsers and the signature checks), and
correctly signed arbitrary bodies (exercising everything after the signature: JSON and field extraction).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switchboard.errors import InvalidRequest, SignatureError
from switchboard.signatures import github, hmac, shopify, standard_webhooks, stripe
from switchboard.signatures.base import Verified, Verifier, parse_iso8601

WHSEC = "whsec_" + base64.b64encode(b"f" * 32).decode()
NOW = 1_700_000_000.0
HMAC_OPTIONS = {
    "header": "x-sig",
    "encoding": "base64",
    "prefix": "v=",
    "timestamp_header": "x-ts",
    "id_field": "data.0.id",
    "type_field": "type",
}
VERIFIERS: dict[str, Verifier] = {
    "stripe": stripe.build("f", [WHSEC, "second"], {}),
    "github": github.build("f", [WHSEC], {"allow_sha1": True}),
    "github-strict": github.build("f", [WHSEC], {}),
    "shopify": shopify.build("f", [WHSEC], {}),
    "standard_webhooks": standard_webhooks.build("f", [WHSEC], {}),
    "hmac": hmac.build("f", [WHSEC], HMAC_OPTIONS),
    "hmac-plain": hmac.build("f", [WHSEC], {"header": "x-sig", "id_header": "x-id", "type_header": "x-type"}),
}
HEADER_NAMES = [
    "stripe-signature",
    "x-hub-signature-256",
    "x-hub-signature",
    "x-github-delivery",
    "x-github-event",
    "x-shopify-hmac-sha256",
    "x-shopify-webhook-id",
    "x-shopify-topic",
    "x-shopify-triggered-at",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "x-sig",
    "x-ts",
    "x-id",
    "x-type",
]

# Any text, surrogates included.
any_text = st.text(st.characters(exclude_categories=()), max_size=200)
# Text shaped like the real headers, so that the parsers get past their first checks.
shaped = st.one_of(
    any_text,
    st.builds(
        lambda t, sigs: f"t={t}," + ",".join(f"{k}={v}" for k, v in sigs),
        st.one_of(st.integers(-10, 2 * 10**12).map(str), any_text),
        st.lists(
            st.tuples(
                st.sampled_from(["v1", "v0", "t", "", "x"]),
                st.one_of(any_text, st.text("0123456789abcdefABCDEF", min_size=64, max_size=64)),
            ),
            max_size=4,
        ),
    ),
    st.builds(
        lambda items: " ".join(f"{v},{s}" for v, s in items),
        st.lists(
            st.tuples(
                st.sampled_from(["v1", "v1a", "v2", ""]),
                st.one_of(any_text, st.binary(min_size=32, max_size=32).map(lambda b: base64.b64encode(b).decode())),
            ),
            max_size=4,
        ),
    ),
    st.builds(
        lambda p, h: p + h,
        st.sampled_from(["sha256=", "sha1=", "v=", "SHA256=", ""]),
        st.one_of(any_text, st.text("0123456789abcdef", min_size=40, max_size=64)),
    ),
    st.integers(-(10**15), 10**15).map(str),
    st.sampled_from(["2023-03-29T18:00:27.877041743Z", "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59"]),
)
headers_strategy = st.dictionaries(st.sampled_from(HEADER_NAMES), shaped, max_size=8)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(10**40), 10**40),
    st.floats(),  # NaN and infinities included: json.dumps writes them, json.loads reads them
    any_text,
    st.sampled_from(["2023-03-29T18:00:27Z", "2024-02-30T00:00:00Z", "0000-00-00"]),
)
json_keys = st.one_of(
    st.sampled_from(["id", "type", "created", "data", "object", "updated", "updated_at", "0"]), any_text
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(json_keys, children, max_size=5)),
    max_leaves=20,
)


def encode_json(value: Any) -> bytes:
    import json

    return json.dumps(value).encode("utf-8", "surrogatepass")


bodies = st.one_of(st.binary(max_size=300), json_values.map(encode_json))


def outcome(call: Callable[[], Verified]) -> Verified | None:
    try:
        result = call()
    except (SignatureError, InvalidRequest):
        return None
    assert isinstance(result, Verified)
    assert isinstance(result.event_id, str) and result.event_id
    assert isinstance(result.event_type, str)
    assert isinstance(result.entity_id, str)
    # What ingest keys, publishes and stores must encode: json.loads lets lone surrogates through.
    for text in (result.event_id, result.event_type, result.entity_id):
        text.encode()
    assert isinstance(result.entity_version, int) and 0 <= result.entity_version < 2**63
    if result.provider_time is not None:
        assert math.isfinite(result.provider_time)
    return result


@pytest.mark.parametrize("name", sorted(VERIFIERS))
@settings(max_examples=150, deadline=None)
@given(headers=headers_strategy, body=bodies, received_at=st.floats(0, 4e9))
def test_arbitrary_requests_only_raise_our_errors(
    name: str, headers: dict[str, str], body: bytes, received_at: float
) -> None:
    verifier = VERIFIERS[name]
    outcome(lambda: verifier.verify(headers, body, received_at))


@settings(max_examples=150, deadline=None)
@given(value=shaped)
def test_header_parsers_only_raise_signature_errors(value: str) -> None:
    for parse in (stripe.parse_header, standard_webhooks.parse_signatures):
        try:
            parse(value)
        except SignatureError as exc:
            assert exc.reason == "SIGNATURE_HEADER_MALFORMED"


SIGNERS: dict[str, Callable[[bytes, str, float], dict[str, str]]] = {
    "stripe": lambda body, eid, now: stripe.sign(WHSEC, body, now=now),
    "github": lambda body, eid, now: github.sign(WHSEC, body, now=now, event_id=eid),
    "github-strict": lambda body, eid, now: github.sign(WHSEC, body, now=now, event_id=eid),
    "shopify": lambda body, eid, now: shopify.sign(WHSEC, body, now=now, event_id=eid),
    "standard_webhooks": lambda body, eid, now: standard_webhooks.sign(WHSEC, body, now=now, event_id=eid),
    "hmac": lambda body, eid, now: hmac.sign(WHSEC, body, now=now, **HMAC_OPTIONS),
    "hmac-plain": lambda body, eid, now: hmac.sign(
        WHSEC, body, now=now, header="x-sig", id_header="x-id", type_header="x-type", event_id=eid, event_type=eid
    ),
}


@pytest.mark.parametrize("name", sorted(VERIFIERS))
@settings(max_examples=150, deadline=None)
@given(
    body=bodies, event_id=st.text(st.characters(codec="ascii", min_codepoint=33), max_size=40), extra=headers_strategy
)
def test_signed_arbitrary_bodies_only_raise_invalid_request(
    name: str, body: bytes, event_id: str, extra: dict[str, str]
) -> None:
    headers = SIGNERS[name](body, event_id, NOW)
    # Noise in the headers the signature does not cover (trigger time, event type, ...).
    for key, value in extra.items():
        if key in ("x-shopify-triggered-at", "x-github-event", "x-shopify-topic", "x-type"):
            headers[key] = value
    # A correctly signed request always passes the signature checks: SignatureError fails the test.
    try:
        result = VERIFIERS[name].verify(headers, body, NOW)
    except InvalidRequest as exc:
        assert exc.reason in ("BODY_NOT_JSON", "EVENT_ID_MISSING")
        return
    outcome(lambda: result)


@settings(max_examples=500, deadline=None)
@given(value=st.one_of(any_text, json_scalars))
def test_iso8601_parser_never_raises(value: object) -> None:
    result = parse_iso8601(value)
    assert result is None or (math.isfinite(result) and result >= 0)


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("stripe", b'{"id":"\\ud800","type":"x","data":{}}'),
        ("stripe", b'{"id":"\xed\xa0\x80","type":"x"}'),  # the raw bytes of a surrogate: json.loads takes them too
        ("stripe", b'{"id":"evt_1","type":"\\ud800"}'),
        ("stripe", b'{"id":"evt_1","type":"t","data":{"object":{"id":"\\udfff"}}}'),
        ("shopify", b'{"id":"\\udfff"}'),
        ("standard_webhooks", b'{"type":"\\ud800"}'),
        ("hmac-plain", b'{"id":"\\ud800"}'),
        ("hmac", b'{"data":[{"id":"\\ud800"}],"type":"\\udc80"}'),
    ],
)
def test_lone_surrogates_in_a_signed_body_never_reach_an_id_type_or_entity(name: str, body: bytes) -> None:
    """Such a string made ingest's first ``.encode()`` raise: a 500, retried by the provider for ever."""
    outcome(lambda: VERIFIERS[name].verify(SIGNERS[name](body, "evt_1", NOW), body, NOW))
