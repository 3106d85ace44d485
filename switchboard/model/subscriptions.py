"""The outbound side's domain model: subscriptions, deliveries and delivery attempts. Plain dataclasses,
free of gRPC, protobuf and drivers. Times are integer microseconds since the epoch."""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field

from switchboard.model.events import InboundEvent


class SubscriptionStatus(enum.Enum):
    ENABLED = "enabled"
    DISABLED = "disabled"
    AUTO_DISABLED = "auto_disabled"  # by the platform (the endpoint answered 410 Gone)


class Tier(enum.Enum):
    HIGH = "high"
    STANDARD = "standard"
    BULK = "bulk"


class DeliveryStatus(enum.Enum):
    PENDING = "pending"
    DELIVERED = "delivered"
    RETRYING = "retrying"
    FAILED = "failed"
    CANCELLED = "cancelled"  # the subscription was disabled or deleted before it was delivered


FINAL_DELIVERY = frozenset({DeliveryStatus.DELIVERED, DeliveryStatus.FAILED, DeliveryStatus.CANCELLED})


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    """Delays before each retry (ms; the first attempt is immediate) and the total attempts allowed."""

    delays_ms: tuple[int, ...]
    max_attempts: int
    timeout_ms: int


@dataclass(slots=True)
class Subscription:
    id: str
    client_id: str
    callback_url: str
    description: str = ""
    sources: tuple[str, ...] = ()
    event_types: tuple[str, ...] = ("*",)
    trigger_conditions: str = ""
    retry: RetrySchedule | None = None  # None: the platform's default schedule
    rate_limit_per_second: int = 0  # 0: the platform's default
    max_in_flight: int = 0  # requests sent to it at once per delivery worker; 0: the platform's default
    tier: Tier = Tier.STANDARD
    public_key: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    status: SubscriptionStatus = SubscriptionStatus.ENABLED
    status_reason: str = ""
    # Signing secrets (whsec_...): the current one, and the previous one until it expires (rotation).
    secret: str = field(default="", repr=False)
    previous_secret: str = field(default="", repr=False)
    previous_secret_expires_us: int = 0
    created_us: int = 0
    updated_us: int = 0

    def signing_secrets(self, now_us: int) -> list[str]:
        """The secrets a delivery is signed with now: the current one, and the previous one during the overlap."""
        out = [self.secret]
        if self.previous_secret and now_us < self.previous_secret_expires_us:
            out.append(self.previous_secret)
        return out

    @property
    def enabled(self) -> bool:
        return self.status is SubscriptionStatus.ENABLED


@dataclass(slots=True)
class Delivery:
    id: str
    subscription_id: str
    source: str
    event_id: str
    event_type: str
    status: DeliveryStatus
    attempts: int = 0
    last_http_status: int = 0
    last_error: str = ""
    created_us: int = 0
    updated_us: int = 0
    next_attempt_us: int = 0


@dataclass(slots=True)
class Attempt:
    delivery_id: str
    subscription_id: str
    source: str
    event_id: str
    attempt: int
    started_us: int
    duration_us: int
    http_status: int = 0  # 0: no response
    response_headers: dict[str, str] = field(default_factory=dict)
    response_body: bytes = b""  # the first 4 KB
    error_class: str = ""
    error: str = ""
    outcome: DeliveryStatus = DeliveryStatus.RETRYING
    # The attempt's own key in the history (two sends of one attempt number, by two workers, are two rows; one
    # write tried again is one row).
    run_id: str = field(default_factory=lambda: os.urandom(6).hex())


@dataclass(slots=True)
class DeliveryTask:
    """One event to deliver to one subscription (the message of the ``deliveries`` stream)."""

    delivery_id: str
    subscription_id: str
    event: InboundEvent
    created_us: int
    replay_id: str = ""
