"""The tracing facade with the real OpenTelemetry SDK (spans collected in the SDK's in-memory exporter): spans
are children of the traceparent they are given, recorded only when it is sampled; explicit times; errors;
and the ingest service's and the processor's spans of one event."""

from __future__ import annotations

import json
import time

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import SpanKind, StatusCode

from ingest_service.ingestor import Ingestor, Source
from processor_service.operations import Operation, OperationContext, Registry
from processor_service.processor import Processor
from switchboard.config import SourceConfig, TracingConfig
from switchboard.config.tracing import parse_tracing
from switchboard.errors import ConfigError, SignatureError
from switchboard.model.events import InboundEvent
from switchboard.observability import tracing as tracing_module
from switchboard.observability.tracing import NO_TRACER, Tracer, sampled, setup_tracing
from switchboard.secrets import SecretRef
from switchboard.signatures import build_verifier, sign
from switchboard_devstack.ports import free_port
from tests.unit.factories import event
from tests.unit.processor_service.fakes import MemoryEvents

TRACE = "0af7651916cd43dd8448eb211c80319c"
SAMPLED = f"00-{TRACE}-b7ad6b7169203331-01"
NOT_SAMPLED = f"00-{TRACE}-b7ad6b7169203331-00"


@pytest.fixture
def exported() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer(exported: InMemorySpanExporter) -> Tracer:
    provider = TracerProvider(resource=Resource.create({"service.name": "unit"}), sampler=ParentBased(ALWAYS_OFF))
    provider.add_span_processor(SimpleSpanProcessor(exported))
    return Tracer(provider.get_tracer("unit"))


def parent_id(span: ReadableSpan) -> str:
    return f"{span.parent.span_id:016x}" if span.parent else ""


def span_id(span: ReadableSpan) -> str:
    return f"{span.context.span_id:016x}"


def test_sampled_reads_the_flags() -> None:
    assert sampled(SAMPLED) and sampled(SAMPLED[:-2] + "03")
    assert not sampled(NOT_SAMPLED) and not sampled(SAMPLED[:-2] + "02")
    assert not sampled("") and not sampled("garbage") and not sampled(SAMPLED + "0")


def test_a_span_is_a_child_of_a_sampled_parent(tracer: Tracer, exported: InMemorySpanExporter) -> None:
    with tracer.span("outer", SAMPLED, kind="server", attributes={"a": 1}) as outer:
        assert outer is not None and outer.traceparent[3:35] == TRACE
        with tracer.span("inner", outer.traceparent) as inner:
            assert inner is not None
    inner_span, outer_span = exported.get_finished_spans()
    assert (outer_span.name, outer_span.kind, parent_id(outer_span)) == ("outer", SpanKind.SERVER, "b7ad6b7169203331")
    assert f"{outer_span.context.trace_id:032x}" == TRACE
    assert parent_id(inner_span) == span_id(outer_span)
    assert outer_span.attributes == {"a": 1}


def test_nothing_is_recorded_under_a_parent_that_is_not_sampled(tracer: Tracer, exported: InMemorySpanExporter) -> None:
    for parent in (NOT_SAMPLED, "", "garbage"):
        with tracer.span("x", parent) as span:
            assert span is None
        assert tracer.record("y", parent, 1, 2) == parent
    assert exported.get_finished_spans() == ()
    with NO_TRACER.span("x", SAMPLED) as span:
        assert span is None
    assert NO_TRACER.record("y", SAMPLED, 1, 2) == SAMPLED and not NO_TRACER.enabled


def test_an_exception_marks_the_span_and_propagates(tracer: Tracer, exported: InMemorySpanExporter) -> None:
    with pytest.raises(ValueError, match="boom"), tracer.span("x", SAMPLED):
        raise ValueError("boom")
    (span,) = exported.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR and span.status.description == "ValueError: boom"


def test_record_takes_explicit_times_and_returns_the_childs_parent(
    tracer: Tracer, exported: InMemorySpanExporter
) -> None:
    tp = tracer.record("done", SAMPLED, 1_000, 5_000, kind="consumer", error="it failed")
    child = tracer.record("part", tp, 2_000, 3_000)
    done, part = exported.get_finished_spans()  # in the order they ended
    assert (done.start_time, done.end_time, done.kind) == (1_000, 5_000, SpanKind.CONSUMER)
    assert done.status.status_code is StatusCode.ERROR and done.status.description == "it failed"
    assert tp == f"00-{TRACE}-{span_id(done)}-01" and child == f"00-{TRACE}-{span_id(part)}-01"
    assert parent_id(part) == span_id(done) and (part.start_time, part.end_time) == (2_000, 3_000)


def test_tracing_off_loads_nothing_and_bad_endpoints_are_refused() -> None:
    tracer, shutdown = setup_tracing("x", TracingConfig(endpoint="off"))
    assert tracer is NO_TRACER
    shutdown()
    assert parse_tracing({}).target() == "127.0.0.1:4317"
    assert parse_tracing({"endpoint": "http://collector:4317"}).target() == "collector:4317"
    for bad in ({"endpoint": "collector"}, {"endpoint": "https://c:1"}, {"sample_percent": 101}, {"nope": 1}):
        with pytest.raises(ConfigError):
            parse_tracing(bad)


def test_stopping_with_the_collector_away_waits_seconds_not_the_sdks_thirty() -> None:
    """Found in review: the SDK's shutdown waits up to 30 s for its export thread while the exporter retries
    a collector that is not there, so every service took 30 s to stop (and was killed past its deadline)."""
    tracer, shutdown = setup_tracing("x", parse_tracing({"endpoint": f"http://127.0.0.1:{free_port()}"}))
    for i in range(2_000):
        tracer.record(f"span {i}", SAMPLED, 1_000, 2_000)
    started = time.monotonic()
    shutdown()
    assert time.monotonic() - started < tracing_module.SHUTDOWN_SECONDS + 2  # the SDK alone: 10-30 s


# -- the services' spans ------------------------------------------------------------------------------------
class Published:
    def __init__(self) -> None:
        self.events: list[InboundEvent] = []

    async def publish_event(self, e: InboundEvent) -> None:
        self.events.append(e)


def stripe_ingestor(tracer: Tracer, monkeypatch: pytest.MonkeyPatch) -> tuple[Ingestor, Published]:
    monkeypatch.setenv("SB_TRACE_SECRET", "whsec_trace_unit_test_secret")
    cfg = SourceConfig(name="shop", scheme="stripe", secrets=(SecretRef(env="SB_TRACE_SECRET"),))
    out = Published()
    return Ingestor({"shop": Source(cfg, build_verifier(cfg))}, out, default_source="shop", tracer=tracer), out


def stripe_request(event_id: str) -> tuple[bytes, list[tuple[str, str]]]:
    body = json.dumps({"id": event_id, "type": "invoice.paid", "created": 1, "data": {"object": {}}}).encode()
    return body, list(sign("stripe", "whsec_trace_unit_test_secret", body, now=time.time()).items())


async def test_ingest_traces_receive_verify_publish_and_hands_on_the_publish_span(
    tracer: Tracer, exported: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingestor, out = stripe_ingestor(tracer, monkeypatch)
    body, headers = stripe_request("evt_traced")
    await ingestor.receive("shop", [*headers, ("traceparent", SAMPLED)], body, "application/json")
    verify, publish, receive = exported.get_finished_spans()
    assert [s.name for s in (receive, verify, publish)] == [
        "webhooks.v1.Ingest/Receive",
        "verify stripe",
        "publish events",
    ]
    assert parent_id(receive) == "b7ad6b7169203331"
    assert parent_id(verify) == parent_id(publish) == span_id(receive)
    assert receive.attributes is not None and receive.attributes["switchboard.event_id"] == "evt_traced"
    assert out.events[0].traceparent == f"00-{TRACE}-{span_id(publish)}-01"

    # A request Envoy did not sample: no span, and the event keeps Envoy's context as is.
    exported.clear()
    body, headers = stripe_request("evt_untraced")
    await ingestor.receive("shop", [*headers, ("traceparent", NOT_SAMPLED)], body, "application/json")
    assert exported.get_finished_spans() == ()
    assert out.events[1].traceparent == NOT_SAMPLED

    # A refused request: the server span and the verify span say why.
    body, headers = stripe_request("evt_forged")
    with pytest.raises(SignatureError):
        await ingestor.receive(
            "shop", [*headers[:-1], ("stripe-signature", "t=1,v1=00"), ("traceparent", SAMPLED)], body, ""
        )
    assert {s.name: s.status.status_code for s in exported.get_finished_spans()} == {
        "verify stripe": StatusCode.ERROR,
        "webhooks.v1.Ingest/Receive": StatusCode.ERROR,
    }


async def test_the_processor_records_a_pass_with_its_read_operations_and_commit(
    tracer: Tracer, exported: InMemorySpanExporter
) -> None:
    async def fails(e: InboundEvent, ctx: OperationContext) -> None:
        if ctx.attempt == 1:
            raise ConnectionError("refused")

    async def fine(e: InboundEvent) -> None:
        return None

    store = MemoryEvents()
    p = Processor(
        store, store, Registry([Operation("fine", fine), Operation("fails", fails, takes_context=True)]),
        max_attempts=3, tracer=tracer,
    )  # fmt: skip
    traced = event(event_id="evt_t", traceparent=SAMPLED)
    untraced = event(event_id="evt_u", traceparent=NOT_SAMPLED, entity_id="in_u")
    await p.handle([traced, untraced])
    spans = {s.name: s for s in exported.get_finished_spans()}
    assert set(spans) == {
        "process invoice.paid",
        "cassandra read",
        "cassandra read versions",  # the event has an entity (in_1, version 7): the out-of-order guard read it
        "operation fine",
        "operation fails",
        "cassandra commit",
    }
    process = spans["process invoice.paid"]
    assert parent_id(process) == "b7ad6b7169203331"
    assert process.attributes is not None
    assert (process.attributes["switchboard.attempt"], process.attributes["switchboard.disposition"]) == (1, "retry")
    assert process.attributes["messaging.batch.message_count"] == 2
    assert process.status.status_code is StatusCode.ERROR
    for name in ("cassandra read", "cassandra read versions", "operation fine", "operation fails", "cassandra commit"):
        child = spans[name]
        assert parent_id(child) == span_id(process), name
        assert child.start_time is not None and child.end_time is not None and process.start_time is not None
        assert process.start_time <= child.start_time <= child.end_time, name
    assert spans["operation fails"].status.status_code is StatusCode.ERROR
    assert spans["operation fine"].status.status_code is StatusCode.UNSET

    # The retry is another pass in the same trace, running only what is not done.
    exported.clear()
    await p.handle([traced])
    names = sorted(s.name for s in exported.get_finished_spans())
    assert names == [
        "cassandra commit",
        "cassandra read",
        "cassandra read versions",
        "operation fails",
        "process invoice.paid",
    ]
