from __future__ import annotations

import random

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from ingest_service.ingestor import select_headers
from processor_service.operations import Operation, OperationContext, SkipOperation, load_operation
from processor_service.worker import retry_delay_ms
from query_service.queries import decode_token, encode_token
from switchboard import errors
from switchboard.codec import decode_inbound, encode_inbound
from switchboard.config import OperationConfig, RetryConfig
from switchboard.events import EntitySnapshot, InboundEvent, Outcome, new_traceparent, valid_traceparent
from switchboard.grpc_server import status_code_for, status_details
from switchboard.store import _compaction


def event(**over: object) -> InboundEvent:
    e = InboundEvent(
        source="shop",
        event_id="evt_1",
        event_type="invoice.paid",
        provider="stripe",
        received_us=1_700_000_000_123_456,
        body=b"\x00\xff{}",
        content_type="application/json",
        headers={"stripe-signature": "t=1,v1=ab"},
        receipt_id="r1",
        provider_time_us=1_700_000_000_000_000,
        entity_id="in_1",
        entity_version=7,
        traceparent=new_traceparent(),
    )
    for k, v in over.items():
        setattr(e, k, v)
    return e


def test_queue_codec_round_trips_every_field() -> None:
    e = event()
    assert decode_inbound(encode_inbound(e)) == e


def test_undecodable_queue_message_is_an_invalid_request() -> None:
    with pytest.raises(errors.InvalidRequest) as exc:
        decode_inbound(b"\xff\xff\xff not protobuf")
    assert exc.value.reason == "UNDECODABLE_MESSAGE"


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
        ]
    )
    assert kept == {"stripe-signature": "t=1,v1=ab", "x-forwarded-for": "1.2.3.4", "x-custom": "a, b"}


def test_traceparent_validation() -> None:
    assert valid_traceparent(new_traceparent())
    assert not valid_traceparent("00-" + "0" * 32 + "-" + "1" * 16 + "-01")
    assert not valid_traceparent("garbage")
    assert not valid_traceparent("00-XYZ")


def test_page_tokens_round_trip_and_reject_garbage() -> None:
    token = encode_token("shop", 1, 2, (5, 123, "evt_9"))
    assert decode_token(token) == ("shop", 1, 2, (5, 123, "evt_9"), "")
    assert decode_token(encode_token("shop", 1, 2, (5, 1, "e"), "failed"))[4] == "failed"
    for bad in ("garbage", "", "e30"):
        with pytest.raises(errors.InvalidRequest):
            decode_token(bad)


def test_error_tree_maps_to_grpc_codes() -> None:
    assert status_code_for(errors.SignatureError("x")) == grpc.StatusCode.UNAUTHENTICATED
    assert status_code_for(errors.UnknownSource("x")) == grpc.StatusCode.NOT_FOUND
    assert status_code_for(errors.PayloadTooLarge("x")) == grpc.StatusCode.INVALID_ARGUMENT
    assert status_code_for(errors.BrokerUnavailable("x")) == grpc.StatusCode.UNAVAILABLE
    assert status_code_for(errors.SwitchboardError("x")) == grpc.StatusCode.INTERNAL
    raw = status_details(grpc.StatusCode.UNAUTHENTICATED, "bad", "SIGNATURE_MISMATCH", {"header": "stripe-signature"})
    status = status_pb2.Status.FromString(raw)
    info = error_details_pb2.ErrorInfo()
    assert status.code == 16 and status.details[0].Unpack(info)
    assert (info.reason, dict(info.metadata)) == ("SIGNATURE_MISMATCH", {"header": "stripe-signature"})


def test_compaction_follows_the_server_version() -> None:
    assert "SizeTiered" in _compaction("2.1.0")
    assert "TimeWindow" in _compaction("4.1.3")


async def test_operations_match_globs_and_record_outcomes() -> None:
    async def ok(e: InboundEvent) -> None:
        return None

    async def skip(e: InboundEvent) -> None:
        raise SkipOperation("not interesting")

    async def boom(e: InboundEvent) -> None:
        raise ValueError("nope")

    async def slow(e: InboundEvent) -> None:
        import asyncio

        await asyncio.sleep(5)

    op = Operation("ok", ok, event_types=("invoice.*",), sources=("shop",))
    assert op.matches(event()) and not op.matches(event(event_type="charge.succeeded"))
    assert not op.matches(event(source="other"))
    assert (await op.run(event(), attempt=1))[0].outcome is Outcome.OK
    skipped, _ = await Operation("s", skip).run(event(), attempt=2)
    assert (skipped.outcome, skipped.error, skipped.attempt) == (Outcome.SKIPPED, "not interesting", 2)
    failed, _ = await Operation("b", boom).run(event(), attempt=1)
    assert (failed.outcome, failed.error) == (Outcome.FAILED, "ValueError: nope")
    timed_out, _ = await Operation("t", slow, timeout_seconds=0.05).run(event(), attempt=1)
    assert timed_out.outcome is Outcome.FAILED and "timed out" in timed_out.error
    first, again = (await op.run(event(), attempt=1))[0], (await op.run(event(), attempt=1))[0]
    assert first.run_id != again.run_id  # two runs are two records, never one overwritten row


async def test_operation_context_stages_effects_only_when_the_operation_succeeds() -> None:
    async def snapshot_then_fail(e: InboundEvent, ctx: OperationContext) -> None:
        ctx.save_entity_state(e)
        if ctx.attempt == 1:
            raise RuntimeError("downstream down")

    op = load_operation(OperationConfig("snap", "processor_service.builtin:record_entity"))
    assert op.takes_context
    result, effects = await op.run(event(), attempt=3)
    assert result.outcome is Outcome.OK
    assert effects == [EntitySnapshot("shop", "in_1", 7, "evt_1", "invoice.paid", "application/json", b"\x00\xff{}")]
    no_entity, effects = await op.run(event(entity_id=""), attempt=1)
    assert (no_entity.outcome, effects) == (Outcome.SKIPPED, [])
    flaky = Operation("flaky", snapshot_then_fail, takes_context=True)
    failed, effects = await flaky.run(event(), attempt=1)
    assert (failed.outcome, effects) == (Outcome.FAILED, [])  # a failed run's staged effects are dropped
    ok, effects = await flaky.run(event(), attempt=2)
    assert ok.outcome is Outcome.OK and len(effects) == 1


def test_operations_are_loaded_from_config_and_checked() -> None:
    assert not load_operation(OperationConfig("log", "processor_service.builtin:log_event")).takes_context
    with pytest.raises(errors.ConfigError, match="cannot load"):
        load_operation(OperationConfig("x", "processor_service.builtin:nope"))
    with pytest.raises(errors.ConfigError, match="async function"):
        load_operation(OperationConfig("x", "switchboard.events:now_us"))


def test_retry_levels_double_up_to_the_cap_and_jitter_stays_within_the_level() -> None:
    retry = RetryConfig(max_attempts=10, min_backoff_seconds=1, max_backoff_seconds=20)
    assert retry.levels_ms() == (1000, 2000, 4000, 8000, 16000, 20000)
    assert [retry.level_for(a) for a in (1, 2, 5, 6, 9)] == [1000, 2000, 16000, 20000, 20000]
    assert RetryConfig(min_backoff_seconds=0.25, max_backoff_seconds=0.25).levels_ms() == (250,)
    rng = random.Random(7)
    delays = [retry_delay_ms(retry, 3, rng) for _ in range(200)]
    assert all(level == 4000 and 2000 <= d <= 4000 for level, d in delays)
    assert len({d for _, d in delays}) > 50  # jittered, not one fixed delay
