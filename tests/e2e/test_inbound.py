"""End to end on real components: HTTPS → Envoy → ingest → RabbitMQ → processor → Cassandra → Query."""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from webhooks.v1 import event_pb2, query_pb2

from switchboard.config import PlatformConfig
from switchboard.signatures import sign
from switchboard_devstack.stack import Stack
from tests.e2e.helpers import (
    EventTap,
    edge_client,
    get_event_code,
    query_stub,
    stripe_event,
    stripe_headers,
    wait_for_event,
)
from tests.stack_fixture import HMAC_SECRET, STRIPE_SECRET

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def new_id() -> str:
    return "evt_" + secrets.token_hex(10)


def assert_json_error(resp: object, status: int, reason: str | None = None) -> dict[str, object]:
    assert resp.status_code == status, resp.text  # type: ignore[attr-defined]
    assert resp.headers["content-type"].startswith("application/json")  # type: ignore[attr-defined]
    assert not any(h.lower().startswith("grpc-") for h in resp.headers)  # type: ignore[attr-defined]
    body = resp.json()  # type: ignore[attr-defined]
    assert isinstance(body.get("code"), int) and body.get("message"), body
    if reason is not None:
        reasons = [d.get("reason") for d in body.get("details", [])]
        assert reason in reasons, body
    return body  # type: ignore[no-any-return]


def test_stripe_event_round_trip_is_byte_identical(stack: Stack, stack_config: PlatformConfig) -> None:
    event_id = new_id()
    # Odd spacing and non-ASCII: any re-serialisation on the way would change these bytes.
    created = int(time.time())
    body = (
        f'{{"id": "{event_id}",  "object":"event", "type":"invoice.paid", "created": {created},'
        ' "data": {"object": {"id": "in_1", "object": "invoice", "memo": "caf\u00e9 \\u00e9"}}}'
    ).encode()
    with edge_client(stack_config) as client:
        resp = client.post("/webhook/shop?utm=1", content=body, headers=stripe_headers(STRIPE_SECRET, body))
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"status": "success", "event_id": event_id}
    assert not any(h.lower().startswith("grpc-") for h in resp.headers)

    event = wait_for_event(stack_config, "shop", event_id)
    assert event.body == body
    assert event.event_type == "invoice.paid"
    assert event.provider == "stripe"
    assert event.content_type == "application/json"
    assert "stripe-signature" not in event.headers  # the signature is never stored with the event
    assert event.entity_id == "in_1"
    assert event.status == event_pb2.EVENT_STATUS_PROCESSED
    ok = event_pb2.OPERATION_OUTCOME_OK
    assert sorted((r.operation, r.outcome, r.attempt) for r in event.results) == [
        ("deliver", ok, 1),
        ("entity", ok, 1),
        ("log", ok, 1),
    ]
    assert event.attempts == 1 and event.last_error == ""
    assert event.received_at.seconds > 0 and event.processed_at.ToMicroseconds() >= event.received_at.ToMicroseconds()
    assert len(event.traceparent.split("-")) == 4


def test_the_stored_event_carries_the_trace_envoy_started(stack: Stack, stack_config: PlatformConfig) -> None:
    event_id = new_id()
    body = stripe_event(event_id)
    callers = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
    with edge_client(stack_config) as client:
        resp = client.post(
            "/webhook/shop",
            content=body,
            headers={**stripe_headers(STRIPE_SECRET, body), "traceparent": callers},
        )
    assert resp.status_code == 200, resp.text
    # The caller's trace context is dropped at the edge: the event is in the trace Envoy started (the test
    # stack samples every request), under ingest's publish span.
    stored = wait_for_event(stack_config, "shop", event_id).traceparent
    version, trace_id, parent, flags = stored.split("-")
    assert (version, len(trace_id), len(parent), flags) == ("00", 32, 16, "01"), stored
    assert trace_id != callers.split("-")[1]


def test_default_source_route(stack: Stack, stack_config: PlatformConfig) -> None:
    event_id = new_id()
    body = stripe_event(event_id)
    with edge_client(stack_config) as client:
        resp = client.post("/webhook", content=body, headers=stripe_headers(STRIPE_SECRET, body))
    assert resp.status_code == 200, resp.text
    assert wait_for_event(stack_config, "shop", event_id).source == "shop"


def test_generic_hmac_source(stack: Stack, stack_config: PlatformConfig) -> None:
    source = stack_config.source("generic")
    assert source is not None
    body = b'{"hello": "world"}'
    headers = sign("hmac", HMAC_SECRET, body, now=time.time(), options=source.options, event_type="thing.happened")
    event_id = headers["x-event-id"]
    with edge_client(stack_config) as client:
        resp = client.post("/webhook/generic", content=body, headers={**headers, "content-type": "application/json"})
    assert resp.status_code == 200, resp.text
    event = wait_for_event(stack_config, "generic", event_id)
    assert (event.body, event.event_type) == (body, "thing.happened")


def test_bad_signature_is_401_and_nothing_is_queued(stack: Stack, stack_config: PlatformConfig) -> None:
    bad_id, good_id = new_id(), new_id()
    bad = stripe_event(bad_id)
    good = stripe_event(good_id)
    with EventTap(stack_config) as tap, edge_client(stack_config) as client:
        resp = client.post("/webhook/shop", content=bad, headers=stripe_headers("whsec_wrong", bad))
        assert_json_error(resp, 401, "SIGNATURE_MISMATCH")
        tampered = client.post("/webhook/shop", content=bad + b" ", headers=stripe_headers(STRIPE_SECRET, bad))
        assert_json_error(tampered, 401, "SIGNATURE_MISMATCH")
        missing = client.post("/webhook/shop", content=bad, headers={"content-type": "application/json"})
        assert_json_error(missing, 401, "SIGNATURE_HEADER_MISSING")
        expired = client.post(
            "/webhook/shop", content=bad, headers=stripe_headers(STRIPE_SECRET, bad, now=time.time() - 3600)
        )
        assert_json_error(expired, 401, "TIMESTAMP_EXPIRED")
        ok = client.post("/webhook/shop", content=good, headers=stripe_headers(STRIPE_SECRET, good))
        assert ok.status_code == 200, ok.text
        # At the broker: everything published since the tap was bound, up to the good event, which was sent
        # after every rejected request.
        queued = tap.message_ids_until(f"shop/{good_id}")
    assert f"shop/{bad_id}" not in queued
    assert get_event_code(stack_config, "shop", bad_id) == grpc.StatusCode.NOT_FOUND


def test_unknown_source_is_404_json(stack: Stack, stack_config: PlatformConfig) -> None:
    body = stripe_event(new_id())
    with edge_client(stack_config) as client:
        resp = client.post("/webhook/nope", content=body, headers=stripe_headers(STRIPE_SECRET, body))
        assert_json_error(resp, 404)
        other = client.post("/not-a-webhook", content=body)
        assert_json_error(other, 404)


def test_body_over_the_source_limit_is_413_json(stack: Stack, stack_config: PlatformConfig) -> None:
    body = stripe_event(new_id(), pad=70_000)  # the "shop" source allows 64 KiB
    with edge_client(stack_config) as client:
        resp = client.post("/webhook/shop", content=body, headers=stripe_headers(STRIPE_SECRET, body))
    assert_json_error(resp, 413)


def test_malformed_body_is_400_json(stack: Stack, stack_config: PlatformConfig) -> None:
    body = b"this is not json"
    with edge_client(stack_config) as client:
        resp = client.post("/webhook/shop", content=body, headers=stripe_headers(STRIPE_SECRET, body))
    assert_json_error(resp, 400, "BODY_NOT_JSON")


def test_the_longest_event_id_is_stored_and_a_byte_more_is_400_json_never_503(
    stack: Stack, stack_config: PlatformConfig
) -> None:
    """The event's key (``shop/<id>``) is the queue message's id, an AMQP short string of at most 255 bytes: an
    id that makes it exactly 255 is taken and stored; one byte more, or fewer characters that take more bytes
    in UTF-8, is refused with 400 EVENT_ID_INVALID (it used to fail to publish, a 503 for ever); so is an entity
    id over 4 KB (one over 64 KB could never be stored: its partition stalled)."""
    base = new_id()
    longest = base + "x" * (255 - len("shop/") - len(base))
    too_long = [longest + "y", base + "é" * ((256 - len("shop/") - len(base)) // 2 + 1)]
    body = stripe_event(longest)
    with edge_client(stack_config) as client:
        resp = client.post("/webhook/shop", content=body, headers=stripe_headers(STRIPE_SECRET, body))
        assert resp.status_code == 200, resp.text
        for event_id in too_long:
            body = stripe_event(event_id)
            assert_json_error(
                client.post("/webhook/shop", content=body, headers=stripe_headers(STRIPE_SECRET, body)),
                400,
                "EVENT_ID_INVALID",
            )
        payload = json.loads(stripe_event(unguarded := new_id()))
        payload["data"]["object"]["id"] = "in_" + "z" * 5000  # over 4 KB: taken without its entity
        body = json.dumps(payload).encode()
        resp = client.post("/webhook/shop", content=body, headers=stripe_headers(STRIPE_SECRET, body))
        assert resp.status_code == 200, resp.text
    stored = wait_for_event(stack_config, "shop", longest)
    assert stored.event_id == longest and len(f"shop/{stored.event_id}".encode()) == 255
    assert wait_for_event(stack_config, "shop", unguarded).entity_id == ""


def test_duplicate_delivery_is_stored_once(stack: Stack, stack_config: PlatformConfig) -> None:
    event_id = new_id()
    body = stripe_event(event_id)
    start = Timestamp()
    start.FromMicroseconds(int(time.time() * 1e6) - 1_000_000)
    with edge_client(stack_config) as client:
        first = client.post("/webhook/shop", content=body, headers=stripe_headers(STRIPE_SECRET, body))
        assert first.status_code == 200, first.text
        first_event = wait_for_event(stack_config, "shop", event_id)
        again = client.post("/webhook/shop", content=body, headers=stripe_headers(STRIPE_SECRET, body))
        assert again.status_code == 200, again.text  # a duplicate is a success for the provider
    deadline = time.monotonic() + 20
    while (event := wait_for_event(stack_config, "shop", event_id)).duplicates < 1:
        assert time.monotonic() < deadline, "duplicate delivery was never recorded"
        time.sleep(0.1)
    assert event.duplicates == 1
    assert event.receipt_id == first_event.receipt_id  # the first delivery stays the stored one
    channel, stub = query_stub(stack_config)
    with channel:
        listed = stub.ListEvents(query_pb2.ListEventsRequest(source="shop", start_time=start, page_size=1000))
    assert [e.event_id for e in listed.events].count(event_id) == 1


def test_list_events_pages_through_a_time_range(stack: Stack, stack_config: PlatformConfig) -> None:
    start = Timestamp()
    start.FromMicroseconds(int(time.time() * 1e6))
    sent = []
    with edge_client(stack_config) as client:
        for _ in range(7):
            event_id = new_id()
            body = stripe_event(event_id)
            resp = client.post("/webhook/shop", content=body, headers=stripe_headers(STRIPE_SECRET, body))
            assert resp.status_code == 200, resp.text
            sent.append(event_id)
    for event_id in sent:
        wait_for_event(stack_config, "shop", event_id)
    end = Timestamp()
    end.FromMicroseconds(int(time.time() * 1e6) + 1000)
    channel, stub = query_stub(stack_config)
    seen: list[str] = []
    pages = 0
    token = ""
    with channel:
        while True:
            page = stub.ListEvents(
                query_pb2.ListEventsRequest(
                    source="shop", start_time=start, end_time=end, page_size=3, page_token=token
                )
            )
            pages += 1
            assert len(page.events) <= 3
            seen.extend(e.event_id for e in page.events)
            times = [e.received_at.ToMicroseconds() for e in page.events]
            assert times == sorted(times)
            token = page.next_page_token
            if not token:
                break
            assert pages < 20
        with pytest.raises(grpc.RpcError) as bad_token:
            stub.ListEvents(query_pb2.ListEventsRequest(source="shop", page_token="garbage"))
        assert bad_token.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [i for i in seen if i in sent] == sent  # every event once, in arrival order
    assert pages >= 3


def test_get_unknown_event_is_not_found(stack: Stack, stack_config: PlatformConfig) -> None:
    assert get_event_code(stack_config, "shop", "evt_never_sent") == grpc.StatusCode.NOT_FOUND


def test_services_report_health(stack: Stack, stack_config: PlatformConfig) -> None:
    for port, service in (
        (stack_config.ingest.port, "webhooks.v1.Ingest"),
        (stack_config.query.port, "webhooks.v1.Query"),
    ):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_buf_curl_reads_an_event_through_reflection(stack: Stack, stack_config: PlatformConfig) -> None:
    buf = REPO / ".tools" / "node" / "node_modules" / ".bin" / "buf"
    event_id = new_id()
    body = stripe_event(event_id)
    with edge_client(stack_config) as client:
        assert (
            client.post("/webhook/shop", content=body, headers=stripe_headers(STRIPE_SECRET, body)).status_code == 200
        )
    wait_for_event(stack_config, "shop", event_id)
    out = subprocess.run(
        [
            str(buf),
            "curl",
            "--protocol",
            "grpc",
            "--http2-prior-knowledge",
            "--data",
            json.dumps({"source": "shop", "event_id": event_id}),
            f"http://127.0.0.1:{stack_config.query.port}/webhooks.v1.Query/GetEvent",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    event = json.loads(out.stdout)["event"]
    assert event["eventId"] == event_id and event["status"] == "EVENT_STATUS_PROCESSED"
