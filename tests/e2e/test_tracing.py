"""Traces through the real stack: Envoy starts the trace (the caller's own trace context is dropped), ingest,
the processor and the delivery worker add their spans, all exported over OTLP/gRPC to the stack's local
receiver; the stored event keeps the trace id and ``switchboard trace`` prints the tree. The test stack traces
every request (``sample_percent = 100``)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
from webhooks.v1 import event_pb2

from switchboard.config import PlatformConfig
from switchboard.delivery.ids import delivery_id
from switchboard.observability.tracing import sampled
from switchboard_devstack.stack import Stack
from switchboard_devstack.traces import SpanRecord, read_trace
from tests.e2e.helpers import edge_client, stripe_event, stripe_headers
from tests.e2e.receivers import Receiver
from tests.e2e.test_delivery import subscribe
from tests.e2e.test_processing import invoice_event, wait_for_status
from tests.stack_fixture import STRIPE_SECRET

pytestmark = pytest.mark.integration

SERVER, CLIENT, PRODUCER, CONSUMER = 2, 3, 4, 5  # OTLP span kinds
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def post(cfg: PlatformConfig, body: bytes, **headers: str) -> None:
    with edge_client(cfg) as client:
        resp = client.post("/webhook/shop", content=body, headers={**stripe_headers(STRIPE_SECRET, body), **headers})
    assert resp.status_code == 200, resp.text


def wait_for_spans(
    cfg: PlatformConfig, trace_id: str, done: Callable[[list[SpanRecord]], bool], timeout: float = 30.0
) -> list[SpanRecord]:
    deadline = time.monotonic() + timeout
    while True:
        spans = read_trace(cfg.traces_db, trace_id)
        if done(spans):
            return spans
        if time.monotonic() > deadline:
            names = sorted(f"{s.service}: {s.name}" for s in spans)
            raise AssertionError(f"trace {trace_id} incomplete after {timeout:g} s: {names}")
        time.sleep(0.3)


def one(spans: list[SpanRecord], service: str, name: str) -> SpanRecord:
    found = [s for s in spans if s.service == service and s.name == name]
    assert len(found) == 1, f"{service}: {name}: {len(found)} spans in {[(s.service, s.name) for s in spans]}"
    return found[0]


def children(spans: list[SpanRecord], parent: SpanRecord) -> list[SpanRecord]:
    return [s for s in spans if s.parent_span_id == parent.span_id]


def test_one_trace_from_envoy_to_cassandra_and_the_delivery(stack: Stack, stack_config: PlatformConfig) -> None:
    cfg = stack_config
    with Receiver(cfg.tls_dir) as rx:
        sub, _secret = subscribe(cfg, rx.url("/traced"), event_types=["invoice.*"])
        event_id = "evt_trace_" + secrets.token_hex(6)
        # A caller asking not to be traced (-00), with its own trace id: neither is followed.
        post(
            cfg,
            stripe_event(event_id),
            traceparent=f"00-{CALLER_TRACE}-00f067aa0ba902b7-00",
            tracestate="vendor=opaque",
        )
        rx.wait("/traced", 1)
        stored = wait_for_status(cfg, event_id, event_pb2.EVENT_STATUS_PROCESSED)
    traceparent = stored.traceparent
    assert sampled(traceparent), traceparent
    trace_id = traceparent[3:35]
    assert trace_id != CALLER_TRACE

    wanted = delivery_id("shop", event_id, sub.id)

    def mine(spans: list[SpanRecord]) -> SpanRecord | None:
        """This subscription's delivery (the session's stack has other subscriptions matching ``invoice.*``)."""
        found = [s for s in spans if s.name == "deliver" and s.attributes.get("switchboard.delivery_id") == wanted]
        return found[0] if found else None

    def complete(spans: list[SpanRecord]) -> bool:
        names = {(s.service, s.name) for s in spans}
        deliver = mine(spans)
        return (
            {
                ("switchboard-edge", "ingress"),
                ("switchboard-ingest", "webhooks.v1.Ingest/Receive"),  # each service exports on its own
                ("switchboard-processor", "cassandra commit"),
            }
            <= names
            and deliver is not None
            and len(children(spans, deliver)) == 2
        )

    spans = wait_for_spans(cfg, trace_id, complete)
    assert {s.trace_id for s in spans} == {trace_id}

    # Envoy: the request (server) and the call to ingest (client), the trace's root.
    ingress = one(spans, "switchboard-edge", "ingress")
    assert ingress.kind == SERVER and ingress.parent_span_id == ""
    (egress,) = [s for s in children(spans, ingress) if s.service == "switchboard-edge"]
    assert egress.kind == CLIENT
    # Ingest: its server span under Envoy's, verify and publish under it.
    receive = one(spans, "switchboard-ingest", "webhooks.v1.Ingest/Receive")
    assert receive.kind == SERVER and receive.parent_span_id == egress.span_id
    assert receive.attributes["switchboard.event_id"] == event_id
    verify = one(spans, "switchboard-ingest", "verify stripe")
    publish = one(spans, "switchboard-ingest", "publish events")
    assert verify.parent_span_id == receive.span_id and publish.parent_span_id == receive.span_id
    assert publish.kind == PRODUCER
    # The stored event carries the publish span's context: what the processor and delivery continue.
    assert traceparent[36:52] == publish.span_id
    # Processor: one pass (consumer) under publish, with the Cassandra read, each operation and the commit.
    process = one(spans, "switchboard-processor", "process invoice.paid")
    assert process.kind == CONSUMER and process.parent_span_id == publish.span_id
    assert process.attributes["switchboard.attempt"] == 1
    assert process.attributes["switchboard.disposition"] == "processed"
    under = sorted(s.name for s in children(spans, process))
    assert under == [
        "cassandra commit",
        "cassandra read",
        "cassandra read versions",
        "operation deliver",
        "operation entity",
        "operation log",
    ]
    for s in children(spans, process):
        assert process.start_ns <= s.start_ns <= s.end_ns <= process.end_ns, s.name
    # Delivery: the attempt under publish too, the POST and the Cassandra record under it.
    deliver = mine(spans)
    assert deliver is not None and deliver.service == "switchboard-delivery"
    assert deliver.parent_span_id == publish.span_id
    assert deliver.attributes["switchboard.outcome"] == "delivered"
    post_span, record = sorted(children(spans, deliver), key=lambda s: s.start_ns)
    assert (post_span.name, post_span.kind, record.name) == ("POST", CLIENT, "cassandra record")
    assert post_span.attributes["http.response.status_code"] == 200
    assert post_span.attributes["server.address"] == "127.0.0.1"
    assert "/traced" not in str(post_span.attributes)  # never the callback's path (it may hold a token)
    # Time flows down the tree: Envoy's request began first and ingest answered within it.
    assert ingress.start_ns <= receive.start_ns <= receive.end_ns <= ingress.end_ns

    # The command line prints the same tree.
    out = subprocess.run(
        [sys.executable, "-m", "switchboard_cli.main", "--config", str(cfg.path), "trace", event_id],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"trace {trace_id}: ")

    def column(label: str) -> int:
        """Where ``label`` starts on its line: the deeper the span, the further right."""
        (line,) = [x for x in lines[1:] if label in x]
        return line.index(label)

    depth = [
        column(label)
        for label in (
            "switchboard-edge: ingress",
            "switchboard-ingest: webhooks.v1.Ingest/Receive",
            "switchboard-ingest: publish events",
            "switchboard-processor: process invoice.paid",
            "switchboard-processor: operation entity",
        )
    ]
    assert depth == sorted(depth) and len(set(depth)) == len(depth), depth


def test_retries_of_an_event_are_spans_of_its_trace(stack: Stack, stack_config: PlatformConfig) -> None:
    """``test.flaky`` fails its first two attempts: three passes of the processor, all in the event's trace."""
    cfg = stack_config
    event_id = "evt_trace_flaky_" + secrets.token_hex(6)
    post(cfg, invoice_event(event_id, "test.flaky", "in_trfl_" + event_id[-12:], int(time.time())))
    stored = wait_for_status(cfg, event_id, event_pb2.EVENT_STATUS_PROCESSED)
    trace_id = stored.traceparent[3:35]

    def three(spans: list[SpanRecord]) -> bool:
        return sum(1 for s in spans if s.name == "process test.flaky") == 3

    spans = wait_for_spans(cfg, trace_id, three)
    passes = sorted((s for s in spans if s.name == "process test.flaky"), key=lambda s: s.start_ns)
    assert [p.attributes["switchboard.attempt"] for p in passes] == [1, 2, 3]
    assert [p.attributes["switchboard.disposition"] for p in passes] == ["retry", "retry", "processed"]
    assert [p.status_code for p in passes] == [2, 2, 0]  # ERROR, ERROR, UNSET
    flaky = [s for s in spans if s.name == "operation flaky"]
    assert sorted(s.attributes["switchboard.outcome"] for s in flaky) == ["failed", "failed", "ok"]
    # The operations that succeeded on the first pass are not run again: one span each.
    assert sum(1 for s in spans if s.name == "operation entity") == 1
