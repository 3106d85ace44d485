"""The queue's wire format: an ``InboundEvent`` as a protobuf ``webhooks.v1.Event`` (the same message the
Query API returns, with the processing fields unset), and the timestamp conversions the services share.

With the servicers' conversions, the only place that imports generated code."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp
from webhooks.v1 import delivery_pb2, event_pb2

from switchboard.errors import InvalidRequest
from switchboard.model.events import InboundEvent
from switchboard.model.subscriptions import DeliveryTask


def ts(us: int) -> Timestamp:
    return Timestamp(seconds=us // 1_000_000, nanos=(us % 1_000_000) * 1000)


def us_of(t: Timestamp) -> int:
    return int(t.seconds) * 1_000_000 + int(t.nanos) // 1000


# The times a request may name: from the epoch to the end of 9999 (what a stored time can be).
MAX_REQUEST_SECONDS = 253_402_300_799


def request_us(msg: object, field: str) -> int | None:
    """The request's timestamp ``field`` in microseconds, None when it is not set; ``TIME_INVALID`` (field
    named) for one before 1970 or after 9999, or with nanos out of range."""
    if not msg.HasField(field):  # type: ignore[attr-defined]
        return None
    t: Timestamp = getattr(msg, field)
    if not 0 <= t.seconds <= MAX_REQUEST_SECONDS or not 0 <= t.nanos <= 999_999_999:
        raise InvalidRequest(
            f"{field} must be a time between 1970-01-01 and 9999-12-31",
            reason="TIME_INVALID",
            metadata={"field": field},
        )
    return us_of(t)


def event_pb(e: InboundEvent, status: int = event_pb2.EVENT_STATUS_RECEIVED) -> event_pb2.Event:
    """``e`` as a ``webhooks.v1.Event`` (without processing fields)."""
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
        replay_id=e.replay_id,
        status=status,
    )
    if e.provider_time_us:
        msg.provider_time.CopyFrom(ts(e.provider_time_us))
    return msg


def encode_inbound(e: InboundEvent) -> bytes:
    return bytes(event_pb(e).SerializeToString())


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
    return _inbound(msg)


def _inbound(msg: event_pb2.Event) -> InboundEvent:
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
        replay_id=msg.replay_id,
    )


def encode_task(task: DeliveryTask) -> bytes:
    msg = delivery_pb2.DeliveryTask(
        delivery_id=task.delivery_id,
        subscription_id=task.subscription_id,
        event=event_pb(task.event),
        created_at=ts(task.created_us),
        replay_id=task.replay_id,
    )
    return bytes(msg.SerializeToString())


def decode_task(data: bytes) -> DeliveryTask:
    msg = delivery_pb2.DeliveryTask()
    try:
        msg.ParseFromString(data)
    except Exception as exc:  # protobuf raises DecodeError and, on some inputs, others
        raise InvalidRequest(
            f"queued message is not a webhooks.v1.DeliveryTask: {exc}", reason="UNDECODABLE_MESSAGE"
        ) from None
    if not msg.delivery_id or not msg.subscription_id or not msg.HasField("event"):
        raise InvalidRequest("queued delivery task lacks its id, subscription or event", reason="UNDECODABLE_MESSAGE")
    return DeliveryTask(
        delivery_id=msg.delivery_id,
        subscription_id=msg.subscription_id,
        event=_inbound(msg.event),
        created_us=us_of(msg.created_at),
        replay_id=msg.replay_id,
    )
