"""The local trace receiver, as the stack runs it (``python -m switchboard_devstack.traces``), fed by the real
OpenTelemetry OTLP exporter; and the tree ``switchboard trace`` prints."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased

from switchboard.config import load_config
from switchboard.observability.tracing import Tracer
from switchboard_devstack.ports import free_port
from switchboard_devstack.stack import grpc_serving
from switchboard_devstack.traces import SERVICE, SpanRecord, SpanStore, read_trace, render_tree

ROOT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACE = "0af7651916cd43dd8448eb211c80319c"


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    root = tmp_path_factory.mktemp("traces")
    port = free_port()
    (root / "switchboard.toml").write_text(f'[platform]\ndata_dir = "var"\n\n[tracing]\nlocal_port = {port}\n')
    cfg = load_config(root / "switchboard.toml")
    with open(root / "receiver.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "switchboard_devstack.traces", "--config", str(cfg.path)], stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + 30
        while not grpc_serving("127.0.0.1", port, SERVICE):
            assert proc.poll() is None, (root / "receiver.log").read_text()
            assert time.monotonic() < deadline, "the trace receiver did not start"
            time.sleep(0.1)
        yield port, cfg.traces_db
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def tracer_for(service: str, port: int) -> tuple[Tracer, TracerProvider]:
    provider = TracerProvider(resource=Resource.create({"service.name": service}), sampler=ParentBased(ALWAYS_OFF))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"127.0.0.1:{port}", insecure=True)))
    return Tracer(provider.get_tracer("test")), provider


def test_spans_of_two_services_come_back_as_one_tree(receiver: tuple[int, Path]) -> None:
    port, db = receiver
    a, pa = tracer_for("svc-a", port)
    b, pb = tracer_for("svc-b", port)
    with a.span("request", ROOT, kind="server", attributes={"switchboard.attempt": 1}) as req:
        assert req is not None
        with a.span("verify", req.traceparent):
            pass
        sent = a.record("publish", req.traceparent, time.time_ns(), time.time_ns() + 1_000_000, kind="producer")
    got = b.record("process", sent, time.time_ns(), time.time_ns() + 2_000_000, kind="consumer", error="boom")
    b.record("operation log", got, time.time_ns(), time.time_ns() + 500_000)
    pa.shutdown()
    pb.shutdown()

    spans = read_trace(db, TRACE)
    assert sorted((s.service, s.name) for s in spans) == [
        ("svc-a", "publish"),
        ("svc-a", "request"),
        ("svc-a", "verify"),
        ("svc-b", "operation log"),
        ("svc-b", "process"),
    ]
    by = {s.name: s for s in spans}
    assert by["request"].parent_span_id == "b7ad6b7169203331"  # Envoy's, not exported here
    assert by["verify"].parent_span_id == by["publish"].parent_span_id == by["request"].span_id
    assert by["process"].parent_span_id == by["publish"].span_id
    assert by["operation log"].parent_span_id == by["process"].span_id
    assert (by["request"].kind, by["process"].kind) == (2, 5)
    assert (by["process"].status_code, by["process"].status_message) == (2, "boom")
    assert by["request"].attributes == {"switchboard.attempt": 1}

    lines = render_tree(spans)
    assert lines[0].startswith(f"trace {TRACE}: 5 spans, ") and lines[0].endswith("services: svc-a, svc-b")
    body = [line[20:] for line in lines[1:]]  # after the offset and duration columns
    assert body == [
        "svc-a: request switchboard.attempt=1 (parent b7ad6b7169203331 not received)",
        "  svc-a: verify",
        "  svc-a: publish",
        "    svc-b: process [ERROR: boom]",
        "      svc-b: operation log",
    ]
    assert float(lines[4].split()[1]) == pytest.approx(2.0, abs=0.01)  # the duration column, ms


def test_a_malformed_span_is_refused_and_the_rest_stored(receiver: tuple[int, Path]) -> None:
    port, db = receiver
    good = trace_pb2.Span(trace_id=bytes.fromhex("11" * 16), span_id=bytes.fromhex("22" * 8), name="good")
    bad = trace_pb2.Span(trace_id=b"short", span_id=bytes.fromhex("33" * 8), name="bad")
    request = trace_service_pb2.ExportTraceServiceRequest(
        resource_spans=[trace_pb2.ResourceSpans(scope_spans=[trace_pb2.ScopeSpans(spans=[good, bad])])]
    )
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = trace_service_pb2_grpc.TraceServiceStub(channel).Export(request, timeout=10)  # type: ignore[no-untyped-call]
    assert reply.partial_success.rejected_spans == 1 and "16 bytes" in reply.partial_success.error_message
    assert [s.name for s in read_trace(db, "11" * 16)] == ["good"]


def test_old_spans_are_pruned(tmp_path: Path) -> None:
    store = SpanStore(tmp_path / "spans.db", keep_hours=1.0, max_spans=2)
    row = ("aa" * 16, "", "", "n", "svc", 1, 1, 2, 0, "", "{}", "[]")
    now = time.time()
    store.write([(*row[:1], "01" * 8, *row[2:], now - 7200)], now - 7200)  # two hours old
    store.write([(*row[:1], f"{i:016x}", *row[2:], now) for i in range(2, 5)], now)
    store.prune(now)
    kept = read_trace(tmp_path / "spans.db", "aa" * 16)
    assert len(kept) == 2 and all(isinstance(s, SpanRecord) for s in kept)
    assert "01" * 8 not in {s.span_id for s in kept}
    store.close()
    assert read_trace(tmp_path / "missing.db", "aa" * 16) == []
