"""Subscriptions API conversions between ``webhooks.v1`` messages and the domain model."""

from __future__ import annotations

from google.protobuf.duration_pb2 import Duration
from webhooks.v1 import subscriptions_pb2 as pb

from control_service.subscriptions import Draft
from switchboard.errors import InvalidRequest
from switchboard.model.subscriptions import Attempt, Delivery, DeliveryStatus, Subscription, SubscriptionStatus, Tier
from switchboard.wire import request_us, ts

_STATUS = {
    SubscriptionStatus.ENABLED: pb.SUBSCRIPTION_STATUS_ENABLED,
    SubscriptionStatus.DISABLED: pb.SUBSCRIPTION_STATUS_DISABLED,
    SubscriptionStatus.AUTO_DISABLED: pb.SUBSCRIPTION_STATUS_AUTO_DISABLED,
}
_STATUS_OF_PB = {v: k for k, v in _STATUS.items()}
_TIER = {Tier.HIGH: pb.TIER_HIGH, Tier.STANDARD: pb.TIER_STANDARD, Tier.BULK: pb.TIER_BULK}
_TIER_OF_PB = {v: k for k, v in _TIER.items()}
_DELIVERY = {
    DeliveryStatus.PENDING: pb.DELIVERY_STATUS_PENDING,
    DeliveryStatus.DELIVERED: pb.DELIVERY_STATUS_DELIVERED,
    DeliveryStatus.RETRYING: pb.DELIVERY_STATUS_RETRYING,
    DeliveryStatus.FAILED: pb.DELIVERY_STATUS_FAILED,
    DeliveryStatus.CANCELLED: pb.DELIVERY_STATUS_CANCELLED,
}
_DELIVERY_OF_PB = {v: k for k, v in _DELIVERY.items()}


def duration(us: int) -> Duration:
    return Duration(seconds=us // 1_000_000, nanos=(us % 1_000_000) * 1000)


def duration_us(d: Duration) -> int:
    return int(d.seconds) * 1_000_000 + int(d.nanos) // 1000


def subscription_pb(s: Subscription) -> pb.Subscription:
    msg = pb.Subscription(
        id=s.id,
        callback_url=s.callback_url,
        description=s.description,
        sources=list(s.sources),
        event_types=list(s.event_types),
        trigger_conditions=s.trigger_conditions,
        rate_limit_per_second=s.rate_limit_per_second,
        max_in_flight=s.max_in_flight,
        tier=_TIER[s.tier],
        public_key=s.public_key,
        metadata=s.metadata,
        status=_STATUS[s.status],
        status_reason=s.status_reason,
        client_id=s.client_id,
        created_at=ts(s.created_us),
        updated_at=ts(s.updated_us),
    )
    if s.retry is not None:
        msg.retry_policy.max_attempts = s.retry.max_attempts
        msg.retry_policy.schedule.extend(duration(ms * 1000) for ms in s.retry.delays_ms)
        msg.retry_policy.timeout.CopyFrom(duration(s.retry.timeout_ms * 1000))
    if s.previous_secret_expires_us:
        msg.previous_secret_expires_at.CopyFrom(ts(s.previous_secret_expires_us))
    return msg


def draft_of(msg: pb.Subscription, client_id: str = "") -> Draft:
    """What the request asks for. Scalars left at their default read as "not given" (None)."""
    retry_set = msg.HasField("retry_policy")
    policy = msg.retry_policy
    if msg.tier not in (pb.TIER_UNSPECIFIED, *_TIER_OF_PB):
        raise InvalidRequest(f"tier: unknown value {msg.tier}", reason="FIELD_INVALID", metadata={"field": "tier"})
    if msg.status not in (pb.SUBSCRIPTION_STATUS_UNSPECIFIED, *_STATUS_OF_PB):
        raise InvalidRequest(
            f"status: unknown value {msg.status}", reason="FIELD_INVALID", metadata={"field": "status"}
        )
    return Draft(
        callback_url=msg.callback_url or None,
        description=msg.description or None,
        sources=tuple(msg.sources) or None,
        event_types=tuple(msg.event_types) or None,
        trigger_conditions=msg.trigger_conditions or None,
        retry_schedule_s=tuple(duration_us(d) / 1_000_000 for d in policy.schedule) or None,
        max_attempts=policy.max_attempts or None,
        timeout_ms=duration_us(policy.timeout) // 1000 or None,
        retry_set=retry_set,
        rate_limit_per_second=msg.rate_limit_per_second or None,
        max_in_flight=msg.max_in_flight or None,
        tier=_TIER_OF_PB[msg.tier].value if msg.tier else None,
        public_key=msg.public_key or None,
        metadata=dict(msg.metadata) or None,
        status=_STATUS_OF_PB.get(msg.status),
        client_id=client_id or msg.client_id or None,
    )


def delivery_status_of(value: int) -> DeliveryStatus | None:
    if value == pb.DELIVERY_STATUS_UNSPECIFIED:
        return None
    try:
        return _DELIVERY_OF_PB[value]
    except KeyError:
        raise InvalidRequest(f"unknown delivery status {value}", reason="STATUS_INVALID") from None


def delivery_pb(d: Delivery) -> pb.Delivery:
    msg = pb.Delivery(
        id=d.id,
        subscription_id=d.subscription_id,
        source=d.source,
        event_id=d.event_id,
        event_type=d.event_type,
        status=_DELIVERY[d.status],
        attempts=d.attempts,
        last_http_status=d.last_http_status,
        last_error=d.last_error,
        created_at=ts(d.created_us),
        updated_at=ts(d.updated_us),
    )
    if d.next_attempt_us:
        msg.next_attempt_at.CopyFrom(ts(d.next_attempt_us))
    return msg


def attempt_pb(a: Attempt) -> pb.DeliveryAttempt:
    return pb.DeliveryAttempt(
        delivery_id=a.delivery_id,
        subscription_id=a.subscription_id,
        source=a.source,
        event_id=a.event_id,
        attempt=a.attempt,
        started_at=ts(a.started_us),
        duration=duration(a.duration_us),
        http_status=a.http_status,
        response_headers=a.response_headers,
        response_body=a.response_body,
        error_class=a.error_class,
        error=a.error,
        outcome=_DELIVERY[a.outcome],
    )


def optional_us(msg: object, field: str) -> int | None:
    return request_us(msg, field)
