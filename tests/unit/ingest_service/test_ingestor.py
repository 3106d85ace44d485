"""Ingestor decisions against an in-memory publisher (pure logic: verification, source choice, limits)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import pytest

from ingest_service.ingestor import Ingestor, Source, select_headers
from switchboard import errors
from switchboard.config import SourceConfig
from switchboard.model.events import InboundEvent, valid_traceparent
from switchboard.secrets import SecretRef
from switchboard.signatures import build_verifier, sign

SECRET = "whsec_unit_test_secret_value"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@dataclass
class RecordingPublisher:
    """The queue, as the Ingestor sees it: confirms (records) or fails like a broker that is down."""

    published: list[InboundEvent] = field(default_factory=list)
    down: bool = False

    async def publish_event(self, event: InboundEvent) -> None:
        if self.down:
            raise errors.BrokerUnavailable("broker did not confirm within 2 s")
        self.published.append(event)


@pytest.fixture
def publisher() -> RecordingPublisher:
    return RecordingPublisher()


@pytest.fixture
def ingestor(publisher: RecordingPublisher, monkeypatch: pytest.MonkeyPatch) -> Ingestor:
    monkeypatch.setenv("SB_UNIT_SECRET", SECRET)
    cfg = SourceConfig(name="shop", scheme="stripe", secrets=(SecretRef(env="SB_UNIT_SECRET"),), max_body_bytes=4096)
    return Ingestor({"shop": Source(cfg, build_verifier(cfg))}, publisher, default_source="shop")


def stripe_request(event_id: str = "evt_1", pad: int = 0, secret: str = SECRET) -> tuple[bytes, list[tuple[str, str]]]:
    body = json.dumps(
        {
            "id": event_id,
            "type": "invoice.paid",
            "created": 1_700_000_000,
            "data": {"object": {"id": "in_1", "memo": "x" * pad}},
        }
    ).encode()
    headers = sign("stripe", secret, body, now=time.time())
    return body, [(k, v) for k, v in headers.items()]


async def test_a_verified_request_is_published_with_what_the_signature_vouches_for(
    ingestor: Ingestor, publisher: RecordingPublisher
) -> None:
    body, headers = stripe_request("evt_ok")
    metadata = [
        *headers,
        ("traceparent", TRACEPARENT),
        ("authorization", "Bearer x"),
        ("x-request-id", "r1"),
        ("x-multi", "a"),
        ("x-multi", "b"),
    ]
    accepted = await ingestor.receive("shop", metadata, body, "application/json")

    assert [e.event_id for e in publisher.published] == ["evt_ok"]
    event = publisher.published[0]
    assert (accepted.event_id, accepted.receipt_id) == ("evt_ok", event.receipt_id)
    assert (event.source, event.event_type, event.provider, event.body) == ("shop", "invoice.paid", "stripe", body)
    assert (event.entity_id, event.entity_version) == ("in_1", 1_700_000_000_000_000)
    assert event.traceparent == TRACEPARENT
    assert "authorization" not in event.headers and event.headers["x-request-id"] == "r1"
    assert event.headers["x-multi"] == "a, b"  # a repeated header is kept whole (the last one only, before)
    # The signature is not stored: with the body it would be a request to send again (found in review).
    assert "stripe-signature" not in event.headers


async def test_each_receipt_gets_its_own_receipt_id_and_a_trace_when_the_caller_sent_none(
    ingestor: Ingestor, publisher: RecordingPublisher
) -> None:
    body, headers = stripe_request("evt_twice")
    await ingestor.receive("", headers, body, "application/json")  # "" is the default source
    await ingestor.receive("shop", [*headers, ("traceparent", "garbage")], body, "application/json")
    first, second = publisher.published
    assert first.receipt_id != second.receipt_id
    assert valid_traceparent(first.traceparent) and valid_traceparent(second.traceparent)
    assert second.traceparent != "garbage"


@pytest.mark.parametrize(
    ("source", "body_pad", "secret", "error", "reason"),
    [
        ("nope", 0, SECRET, errors.UnknownSource, "UNKNOWN_SOURCE"),
        ("shop", 5000, SECRET, errors.PayloadTooLarge, "PAYLOAD_TOO_LARGE"),
        ("shop", 0, "whsec_someone_else", errors.SignatureError, "SIGNATURE_MISMATCH"),
    ],
)
async def test_refused_requests_are_never_published(
    ingestor: Ingestor,
    publisher: RecordingPublisher,
    source: str,
    body_pad: int,
    secret: str,
    error: type[errors.SwitchboardError],
    reason: str,
) -> None:
    body, headers = stripe_request(pad=body_pad, secret=secret)
    with pytest.raises(error) as raised:
        await ingestor.receive(source, headers, body, "application/json")
    assert raised.value.reason == reason
    assert publisher.published == []


async def test_no_source_and_no_default_is_an_invalid_request(publisher: RecordingPublisher) -> None:
    with pytest.raises(errors.InvalidRequest) as raised:
        await Ingestor({}, publisher, default_source=None).receive("", [], b"{}", "application/json")
    assert raised.value.reason == "SOURCE_MISSING"


async def test_a_broker_that_does_not_confirm_is_unavailable_not_accepted(
    ingestor: Ingestor, publisher: RecordingPublisher
) -> None:
    publisher.down = True
    body, headers = stripe_request()
    with pytest.raises(errors.BrokerUnavailable):
        await ingestor.receive("shop", headers, body, "application/json")


@pytest.mark.parametrize("content_type", ["application/json\r\nx-injected: 1", "text/plain; é", "a" * 256])
async def test_a_content_type_that_cannot_be_sent_on_is_an_invalid_request(
    ingestor: Ingestor, publisher: RecordingPublisher, content_type: str
) -> None:
    """Reachable on ingest's own port only (Envoy refuses such headers); the delivery worker's request raised."""
    body, headers = stripe_request("evt_ct")
    with pytest.raises(errors.InvalidRequest) as caught:
        await ingestor.receive("shop", headers, body, content_type)
    assert caught.value.reason == "CONTENT_TYPE_INVALID" and publisher.published == []


def test_select_headers_drops_transport_and_credentials() -> None:
    kept = select_headers(
        [
            ("Stripe-Signature", "t=1,v1=ab"),
            ("content-type", "application/grpc"),
            ("grpc-timeout", "5S"),
            ("x-envoy-expected-rq-timeout-ms", "1"),
            (":authority", "x"),
            ("authorization", "Bearer s3cret"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-custom", "a"),
            ("x-custom", "b"),
            ("trace-bin", b"\x00"),
            # A sender's own credentials (found in review: stored for the retention, returned by GetEvent).
            ("X-Api-Key", "k-123"),
            ("x-webhook-token", "tok"),
            ("X-Shopify-Hmac-Sha256", "abc="),
            ("x-session-id", "s"),
            ("x-functions-key", "k"),
            ("Ocp-Apim-Subscription-Key", "k"),
            ("x-jwt", "j"),
            ("x-bearer", "b"),
            ("x-passphrase", "p"),
            ("x-accesstoken", "t"),
            ("x-author", "kept: not a credential"),
            # Words run together (found in the review of the word-based check, which kept them).
            ("X-ClientSecret", "s"),
            ("X-SessionId", "s"),
            ("X-OAuth", "o"),
            ("X-Authentication", "a"),
            ("X-WebhookSignature", "s"),
            ("Cookies", "c"),
            ("X-Tokens", "t"),
            ("x-userpassword", "p"),
            ("x-authenticated-userid", "u"),
            ("X-Event-Key", "repo:push"),  # Bitbucket's event type, not a secret
        ]
    )
    assert kept == {
        "x-forwarded-for": "1.2.3.4",
        "x-custom": "a, b",
        "x-author": "kept: not a credential",
        "x-event-key": "repo:push",
    }
    assert select_headers([("X-Custom-Sig", "v")], frozenset({"x-custom-sig"})) == {}  # a source's own signature


@pytest.fixture
def roomy(publisher: RecordingPublisher, monkeypatch: pytest.MonkeyPatch) -> Ingestor:
    """A source that takes bodies of up to 64 KiB (room for the longest entity ids)."""
    monkeypatch.setenv("SB_UNIT_SECRET", SECRET)
    cfg = SourceConfig(name="shop", scheme="stripe", secrets=(SecretRef(env="SB_UNIT_SECRET"),), max_body_bytes=65536)
    return Ingestor({"shop": Source(cfg, build_verifier(cfg))}, publisher, default_source="shop")


@pytest.mark.parametrize(
    ("event_id", "entity_id", "reason"),
    [
        ("e" * 251, "in_1", "EVENT_ID_INVALID"),  # "shop/" and 251 bytes: a key of 256
        ("é" * 126, "in_1", "EVENT_ID_INVALID"),  # 126 characters, 252 bytes
    ],
)
async def test_ids_the_queue_or_the_store_cannot_take_are_invalid_requests(
    roomy: Ingestor, publisher: RecordingPublisher, event_id: str, entity_id: str, reason: str
) -> None:
    body = json.dumps({"id": event_id, "type": "t", "created": 1, "data": {"object": {"id": entity_id}}}).encode()
    headers = sign("stripe", SECRET, body, now=time.time())
    with pytest.raises(errors.InvalidRequest) as raised:
        await roomy.receive("shop", list(headers.items()), body, "application/json")
    assert raised.value.reason == reason and publisher.published == []


@pytest.mark.parametrize("entity_id", ["x" * 4097, "é" * 2049])
async def test_an_authentic_event_whose_entity_id_is_too_long_is_taken_without_its_entity(
    roomy: Ingestor, publisher: RecordingPublisher, entity_id: str
) -> None:
    """It was refused with a 400 (ENTITY_ID_INVALID), which providers retry until they give up: the event was
    lost for a field the platform only uses to order and keep state. Found in review."""
    body = json.dumps({"id": "evt_1", "type": "t", "created": 1, "data": {"object": {"id": entity_id}}}).encode()
    headers = sign("stripe", SECRET, body, now=time.time())
    await roomy.receive("shop", list(headers.items()), body, "application/json")
    (event,) = publisher.published
    assert (event.event_id, event.entity_id, event.entity_version) == ("evt_1", "", 0)


async def test_the_longest_ids_are_taken(roomy: Ingestor, publisher: RecordingPublisher) -> None:
    body = json.dumps({"id": "e" * 250, "type": "t", "created": 1, "data": {"object": {"id": "é" * 2048}}}).encode()
    headers = sign("stripe", SECRET, body, now=time.time())
    await roomy.receive("shop", list(headers.items()), body, "application/json")
    (event,) = publisher.published
    assert len(event.key.encode()) == 255 and len(event.entity_id.encode()) == 4096
