"""Query API conversions: stored events, summaries and entities as ``webhooks.v1`` messages."""

from __future__ import annotations

from google.protobuf.duration_pb2 import Duration
from webhooks.v1 import event_pb2, query_pb2

from switchboard.errors import InvalidRequest
from switchboard.model.events import Entity, EventStatus, EventSummary, Outcome, StoredEvent
from switchboard.wire import event_pb, ts

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


def stored_to_pb(s: StoredEvent) -> event_pb2.Event:
    msg = event_pb(s.event, _STATUS[s.status])
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
    if value == event_pb2.EVENT_STATUS_RECEIVED:
        # Only the queue holds RECEIVED events; the store records an event once a processor decided on it.
        raise InvalidRequest(
            "RECEIVED is not a stored status: list PROCESSED, RETRYING, FAILED or STALE", reason="STATUS_INVALID"
        )
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
