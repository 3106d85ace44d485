"""Conversion between the domain model and the webhooks.v1 protobuf messages (the queue's wire format
and the Query API). The only module outside the servicers that imports generated code."""

from __future__ import annotations

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from webhooks.v1 import event_pb2, query_pb2

from switchboard.errors import InvalidRequest
from switchboard.events import Entity, EventStatus, EventSummary, InboundEvent, Outcome, StoredEvent

_STATUS = {
    EventStatus.RECEIVED: event_pb2.EVENT_STATUS_RECEIVED,
    EventStatus.PROCESSED: event_pb2.EVENT_STATUS_PROCESSED,
    EventStatus.RETRYING: event_pb2.EVENT_STATUS_RETRYING,
    EventStatus.FAILED: event_pb2.EVENT_STATUS_FAILED,
    EventStatus.STALE: event_pb2.EVENT_STATUS_STALE,
}
_STATUS_OF_PB = {v: k for k, v in _STATUS.items()}
_OUTCOME = {
    Outcome.OK: event_pb2.OPERATION_OUTCOME_OK,
    Outcome.SKIPPED: event_pb2.OPERATION_OUTCOME_SKIPPED,
    Outcome.FAILED: event_pb2.OPERATION_OUTCOME_FAILED,
}


def ts(us: int) -> Timestamp:
    return Timestamp(seconds=us // 1_000_000, nanos=(us % 1_000_000) * 1000)


def us_of(t: Timestamp) -> int:
    return int(t.seconds) * 1_000_000 + int(t.nanos) // 1000


def _inbound_pb(e: InboundEvent, status: int) -> event_pb2.Event:
    msg = event_pb2.Event(
        source=e.source,
        event_id=e.event_id,
        event_type=e.event_type,
        provider=e.provider,
        received_at=ts(e.received_us),
        content_type=e.content_type,
        body=e.body,
        headers=e.headers,
        receipt_id=e.receipt_id,
        entity_id=e.entity_id,
        entity_version=e.entity_version,
        traceparent=e.traceparent,
        replay=e.replay,
        status=status,
    )
    if e.provider_time_us:
        msg.provider_time.CopyFrom(ts(e.provider_time_us))
    return msg


def encode_inbound(e: InboundEvent) -> bytes:
    return bytes(_inbound_pb(e, event_pb2.EVENT_STATUS_RECEIVED).SerializeToString())


def decode_inbound(data: bytes) -> InboundEvent:
    msg = event_pb2.Event()
    try:
        msg.ParseFromString(data)
    except Exception as exc:  # protobuf raises DecodeError and, on some inputs, others
        raise InvalidRequest(
            f"queued message is not a webhooks.v1.Event: {exc}", reason="UNDECODABLE_MESSAGE"
        ) from None
    if not msg.source or not msg.event_id:
        raise InvalidRequest("queued message has no source or event id", reason="UNDECODABLE_MESSAGE")
    return InboundEvent(
        source=msg.source,
        event_id=msg.event_id,
        event_type=msg.event_type,
        provider=msg.provider,
        received_us=us_of(msg.received_at),
        body=msg.body,
        content_type=msg.content_type,
        headers=dict(msg.headers),
        receipt_id=msg.receipt_id,
        provider_time_us=us_of(msg.provider_time) if msg.HasField("provider_time") else 0,
        entity_id=msg.entity_id,
        entity_version=msg.entity_version,
        traceparent=msg.traceparent,
        replay=msg.replay,
    )


def stored_to_pb(s: StoredEvent) -> event_pb2.Event:
    msg = _inbound_pb(s.event, _STATUS[s.status])
    msg.attempts = s.attempts
    msg.last_error = s.last_error
    msg.duplicates = s.duplicates
    if s.processed_us:
        msg.processed_at.CopyFrom(ts(s.processed_us))
    for r in s.results:
        msg.results.append(
            event_pb2.OperationResult(
                operation=r.operation,
                outcome=_OUTCOME[r.outcome],
                attempt=r.attempt,
                duration=Duration(seconds=r.duration_us // 1_000_000, nanos=(r.duration_us % 1_000_000) * 1000),
                finished_at=ts(r.finished_us),
                error=r.error,
            )
        )
    return msg


def summary_to_pb(s: EventSummary) -> query_pb2.EventSummary:
    return query_pb2.EventSummary(
        source=s.source,
        event_id=s.event_id,
        event_type=s.event_type,
        received_at=ts(s.received_us),
        status=_STATUS[s.status],
        receipt_id=s.receipt_id,
    )


def status_from_pb(value: int) -> EventStatus | None:
    """A requested status filter; None for UNSPECIFIED."""
    if value == event_pb2.EVENT_STATUS_UNSPECIFIED:
        return None
    try:
        return _STATUS_OF_PB[value]
    except KeyError:
        raise InvalidRequest(f"unknown event status {value}", reason="STATUS_INVALID") from None


def entity_to_pb(e: Entity) -> query_pb2.Entity:
    return query_pb2.Entity(
        source=e.source,
        entity_id=e.entity_id,
        version=e.version,
        event_id=e.event_id,
        event_type=e.event_type,
        updated_at=ts(e.updated_us),
        state=e.state,
        content_type=e.content_type,
        state_event_id=e.state_event_id,
    )
