"""The metrics plumbing: the gRPC interceptor's status codes, the worker hook (outcomes, latency with trace-id
exemplars), ingest counters, timed operations, the endpoint and the ``[metrics]`` section."""

from __future__ import annotations

import asyncio
import dataclasses
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics

from switchboard import errors
from switchboard.config import MetricsConfig, parse_config
from switchboard.errors import ConfigError
from switchboard.observability import hooks
from switchboard.observability import metrics as m
from switchboard.observability.rpc import MetricsInterceptor
from switchboard.queue import Ack, DeadLetter, QueueMessage, Retry
from switchboard.rpc.errors import ErrorInterceptor


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# -- gRPC ------------------------------------------------------------------------------------------------------
async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    if request == b"invalid":
        raise errors.InvalidRequest("bad request", reason="BODY_NOT_JSON")
    if request == b"boom":
        raise RuntimeError("a bug")
    if request == b"set-code":
        context.set_code(grpc.StatusCode.NOT_FOUND)
        return b""
    return request


async def _stream(request: bytes, context: grpc.aio.ServicerContext) -> Any:
    yield request
    if request == b"unavailable":
        raise errors.StoreUnavailable("down")


async def test_interceptor_counts_rpcs_by_status_code_and_times_them() -> None:
    handler = grpc.method_handlers_generic_handler(
        "test.v1.Metered",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(_echo),
            "Stream": grpc.unary_stream_rpc_method_handler(_stream),
        },
    )
    server = grpc.aio.server(interceptors=[MetricsInterceptor(), ErrorInterceptor()])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    labels = {"grpc_service": "test.v1.Metered", "grpc_method": "Echo"}
    before = {
        code: value("grpc_server_handled_total", **labels, grpc_code=code)
        for code in ("OK", "INVALID_ARGUMENT", "INTERNAL", "NOT_FOUND")
    }
    count_before = value("grpc_server_handling_seconds_count", **labels)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            echo = channel.unary_unary("/test.v1.Metered/Echo")
            assert await echo(b"hello") == b"hello"
            for request, code in (
                (b"invalid", grpc.StatusCode.INVALID_ARGUMENT),
                (b"boom", grpc.StatusCode.INTERNAL),
                (b"set-code", grpc.StatusCode.NOT_FOUND),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await echo(request)
                assert info.value.code() == code
            stream = channel.unary_stream("/test.v1.Metered/Stream")
            assert [r async for r in stream(b"fine")] == [b"fine"]
            with pytest.raises(grpc.aio.AioRpcError):
                _ = [r async for r in stream(b"unavailable")]
    finally:
        await server.stop(None)
    for code in before:
        assert value("grpc_server_handled_total", **labels, grpc_code=code) == before[code] + 1, code
    assert value("grpc_server_handling_seconds_count", **labels) == count_before + 4
    stream_labels = {"grpc_service": "test.v1.Metered", "grpc_method": "Stream"}
    assert value("grpc_server_handled_total", **stream_labels, grpc_code="OK") >= 1
    assert value("grpc_server_handled_total", **stream_labels, grpc_code="UNAVAILABLE") >= 1


# -- queue workers -----------------------------------------------------------------------------------------------
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def _message(**headers: Any) -> QueueMessage:
    return QueueMessage(body=b"", message_id="demo/evt_1", headers=headers, redelivered=False, queue="q")


def test_worker_hook_counts_outcomes_and_observes_latency_with_the_trace_id_as_exemplar() -> None:
    hook = hooks.WorkerMetrics("processor", m.PROCESSOR_EVENTS, m.E2E_LATENCY, hooks.PROCESSOR_OUTCOMES)
    processed = value("switchboard_processor_events_total", outcome="processed")
    retried = value("switchboard_processor_events_total", outcome="retried")
    failed = value("switchboard_processor_events_total", outcome="failed")
    observed = value("switchboard_processor_e2e_latency_seconds_count")
    hook.settled(_message(traceparent=f"00-{TRACE}-00f067aa0ba902b7-01"), Ack("processed", 42.0))
    hook.settled(_message(), Retry(1, "boom"))
    hook.settled(_message(), DeadLetter(3, "boom", outcome="failed"))
    hook.settled(_message(), Ack("duplicate"))
    assert value("switchboard_processor_events_total", outcome="processed") == processed + 1
    assert value("switchboard_processor_events_total", outcome="retried") == retried + 1
    assert value("switchboard_processor_events_total", outcome="failed") == failed + 1
    assert value("switchboard_processor_e2e_latency_seconds_count") == observed + 1
    exposition = openmetrics(REGISTRY).decode()  # type: ignore[no-untyped-call]
    bucket = next(
        line
        for line in exposition.splitlines()
        if line.startswith('switchboard_processor_e2e_latency_seconds_bucket{le="0.05"}')
    )
    assert f'# {{trace_id="{TRACE}"}} 0.042' in bucket
    assert "switchboard_processor_events_created" not in exposition  # _created series are off


def test_trace_ids_and_dead_letter_reasons() -> None:
    assert hooks.trace_id(f"00-{TRACE}-00f067aa0ba902b7-01") == TRACE
    assert hooks.trace_id(f"00-{TRACE}-00f067aa0ba902b7-01".encode()) == TRACE
    assert hooks.trace_id("00-" + "0" * 32 + "-00f067aa0ba902b7-01") is None
    assert hooks.trace_id("nonsense") is None and hooks.trace_id(None) is None
    # Not sampled (Envoy's 99%): no spans were recorded, so no exemplar names it.
    assert hooks.trace_id(f"00-{TRACE}-00f067aa0ba902b7-00") is None
    assert hooks.dead_reason({"x-dead-reason": "failed"}) == "failed"
    assert hooks.dead_reason({"x-death": [{"reason": "delivery_limit", "queue": "q"}]}) == "delivery_limit"
    assert hooks.dead_reason({"x-dead-reason": "made-up"}) == "other"


def test_dead_letter_hook_counts_by_stream_and_reason() -> None:
    hook = hooks.DeadLetterMetrics("events")
    before = value("switchboard_dead_letters_total", stream="events", reason="undecodable")
    hook.settled(_message(**{"x-dead-reason": "undecodable"}), Ack("recorded"))
    hook.settled(_message(**{"x-dead-reason": "undecodable"}), Ack("duplicate"))  # a copy of one recorded
    # Its channel closed before the ack (not held): the broker hands it out again, and it is counted then (it
    # was counted both times, found in review).
    lost = dataclasses.replace(_message(**{"x-dead-reason": "undecodable"}), raw=SimpleNamespace(held=False))
    hook.settled(lost, Ack("recorded"))
    assert value("switchboard_dead_letters_total", stream="events", reason="undecodable") == before + 1


def test_ingest_counts_by_source_and_reason_with_unknown_sources_folded() -> None:
    ingest = hooks.IngestMetrics(["shop", "demo"], default_source="shop")
    accepted = value("switchboard_ingest_accepted_total", source="shop")
    mismatch = value("switchboard_ingest_rejected_total", source="demo", reason="SIGNATURE_MISMATCH")
    unknown = value("switchboard_ingest_rejected_total", source="unknown", reason="UNKNOWN_SOURCE")
    ingest.accepted("")  # the default source
    ingest.rejected("demo", errors.SignatureError("no", reason="SIGNATURE_MISMATCH"))
    ingest.rejected("no-such-source-" + "x" * 40, errors.UnknownSource("unknown source"))
    assert value("switchboard_ingest_accepted_total", source="shop") == accepted + 1
    assert value("switchboard_ingest_rejected_total", source="demo", reason="SIGNATURE_MISMATCH") == mismatch + 1
    assert value("switchboard_ingest_rejected_total", source="unknown", reason="UNKNOWN_SOURCE") == unknown + 1


class _Skip(Exception):
    pass


async def test_timed_operations_record_their_outcome() -> None:
    async def op(event: object, ctx: object) -> None:
        if event == "skip":
            raise _Skip
        if event == "fail":
            raise ValueError
        if event == "slow":
            await asyncio.sleep(1)

    timed = hooks.timed_operation("unit_op", op, _Skip)
    await timed("ok", None)
    with pytest.raises(_Skip):
        await timed("skip", None)
    with pytest.raises(ValueError):
        await timed("fail", None)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(timed("slow", None), 0.01)
    for outcome in ("ok", "skipped", "failed", "timeout"):
        count = value("switchboard_operation_duration_seconds_count", operation="unit_op", outcome=outcome)
        assert count == 1, outcome


def test_store_and_broker_timers_are_bound_once() -> None:
    class BatchStatement:
        pass

    assert m.statement_timer(BatchStatement()) is m.statement_timer(BatchStatement())
    assert m.statement_timer(object()) is m.statement_timer("SELECT 1")


def test_a_named_statement_keeps_its_label_and_a_later_object_at_its_address_gets_none_of_it() -> None:
    @dataclasses.dataclass
    class Group:
        priors: object

    @dataclasses.dataclass
    class Statements:
        events: Group

    statement = object()
    m.name_statements(Statements(Group(statement)))
    named = m.statement_timer(statement)
    assert named is m.statement_timer(statement) and named is not m.statement_timer(object())
    del statement  # still alive in the registry: its id cannot be taken by another object
    others = {m.statement_timer(object()) for _ in range(1000)}
    assert named not in others
    assert m.confirm_timer("switchboard.events") is m.confirm_timer("switchboard.events")


async def test_endpoint_serves_metrics_on_a_free_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(hooks.PORT_ENV, raising=False)
    async with hooks.metrics_endpoint(MetricsConfig(), "query") as port:
        assert port > 0
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read())
        assert b"process_cpu_seconds_total" in body
        # A second process on the same port refuses to start, as the gRPC server does.
        monkeypatch.setenv(hooks.PORT_ENV, str(port))
        with pytest.raises(ConfigError, match="cannot listen"):
            async with hooks.metrics_endpoint(MetricsConfig(), "query"):
                pass
    async with hooks.metrics_endpoint(MetricsConfig(enabled=False), "query") as port:
        assert port == 0


def test_metrics_section(tmp_path: Path) -> None:
    cfg = parse_config({"metrics": {"processor_port": 9620, "ingest_port": 9611}}, tmp_path / "x.toml")
    assert cfg.metrics.port("processor", 2) == 9622 and cfg.metrics.port("ingest") == 9611
    assert cfg.metrics.port("query") == 0  # any free port
    with pytest.raises(ConfigError, match=r"metrics\.query_port"):
        parse_config({"metrics": {"query_port": 70000}}, tmp_path / "x.toml")
    with pytest.raises(ConfigError, match="unknown key"):
        parse_config({"metrics": {"port": 1}}, tmp_path / "x.toml")


async def test_a_publish_refused_before_sending_counts_as_a_publish_failure() -> None:
    """Found in review: with the broker away, ingest answered 503 to every request and
    switchboard_broker_publish_failures_total stayed at 0 (only confirms that failed were counted)."""
    from switchboard.queue import Topology
    from switchboard.queue.publisher import Publisher

    publisher = Publisher("amqp://unused", Topology("t", "events", ()), confirm_timeout=1.0, purpose="unit")
    before = value("switchboard_broker_publish_failures_total", exchange=publisher.topology.exchange)
    with pytest.raises(errors.BrokerUnavailable, match="not connected"):
        await publisher.publish(b"x", message_id="m", headers={}, timestamp=0.0, type="t")
    assert value("switchboard_broker_publish_failures_total", exchange=publisher.topology.exchange) == before + 1


def test_an_outage_logs_one_rpc_failure_per_method_and_reason_every_ten_seconds(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """During a broker outage every webhook failed and logged a WARN line (~1,500 a second on a degraded box);
    the metrics count each failure (found in review). The next line says how many were left out."""
    from switchboard import errors
    from switchboard.rpc.errors import FailureLog

    clock = [1000.0]
    monkeypatch.setattr("switchboard.rpc.errors.time.monotonic", lambda: clock[0])
    failures = FailureLog(every=10.0)
    outage = errors.BrokerUnavailable("confirm timed out")
    with caplog.at_level("WARNING", logger="switchboard.rpc.errors"):
        for _ in range(1500):
            failures.failed("/webhooks.v1.Ingest/Receive", outage)
        failures.failed("/webhooks.v1.Query/GetEvent", outage)  # another method: its own line
        clock[0] += 10.0
        failures.failed("/webhooks.v1.Ingest/Receive", outage)
    lines = [(r.__dict__["method"], r.__dict__["left_out"]) for r in caplog.records if r.getMessage() == "rpc failed"]
    assert lines == [
        ("/webhooks.v1.Ingest/Receive", 0),
        ("/webhooks.v1.Query/GetEvent", 0),
        ("/webhooks.v1.Ingest/Receive", 1499),
    ]
