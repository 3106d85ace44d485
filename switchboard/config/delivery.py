"""``[delivery]`` (the delivery workers and the rules for callback URLs) and ``[control]`` (the service that
manages subscriptions)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from switchboard.config._table import Table, parse_secret_ref
from switchboard.config.processor import MAX_PARTITIONS, MAX_PREFETCH
from switchboard.delivery.inflight import MIN_HOST_LIMIT
from switchboard.delivery.policy import MAX_DELAY, MAX_TIMEOUT_MS, MIN_TIMEOUT_MS
from switchboard.delivery.signing import MAX_OVERLAP_SECONDS
from switchboard.errors import ConfigError
from switchboard.secrets import SecretBox, SecretRef


@dataclass(frozen=True)
class ControlConfig:
    host: str = "127.0.0.1"
    port: int = 50053
    # Replays: the longest range without `force`, the most events per job, the default pace.
    replay_max_range_hours: float = 168.0
    replay_max_events: int = 100_000
    replay_rate_per_second: float = 100.0
    # A RUNNING replay job its control service has not written for this long is recorded FAILED (interrupted).
    replay_stale_after_seconds: float = 60.0


@dataclass(frozen=True)
class DeliveryConfig:
    count: int = 1
    # With N >= 1 the deliveries stream is hashed by subscription over N partitions, each with one active
    # worker at a time: every task of a subscription is sent by one worker, so its in-flight limit, rate
    # limit, circuit breaker and pacing hold across workers; only as many workers as partitions are active
    # (the others stand by), so give it a few per worker. 0 (the default, for one worker): one queue that any
    # worker takes any task from, each worker keeping its own limits, as before partitions existed. Below
    # saturation, tasks spread over several partitions cost one worker nothing measurable; past it ~10% of its
    # deliveries per second (docs/benchmarks.md, "Partitions by subscription"). Several workers (``count``)
    # need partitions.
    partitions: int = 0
    # Unacked tasks per partition a worker holds.
    prefetch: int = 256
    # Tasks a worker starts together (at most ``batch``; they share the read of their deliveries' states) and
    # how many such batches it runs at once. A batch's tasks are acked when its slowest send is answered, so
    # batches are small and many: a slow endpoint's task holds at most three others' acks and one slot (4 and
    # 64: docs/benchmarks.md).
    batch: int = 4
    concurrency: int = 64
    # At most this many tasks of one subscription send (or wait for their rate-limit token) at once (the worker
    # holding its partition counts them); the next ones are deferred, so that a slow endpoint holds at most
    # this many of the slots.
    subscription_in_flight: int = 32
    # At most this many requests to one host (name and port) at once per worker, the connections the sender
    # opens to it; the last quarter is kept for subscriptions with fewer than 4 out there, the others share
    # the rest (``switchboard.delivery.inflight``). A subscription's max_in_flight cannot go past that share.
    host_in_flight: int = 64
    # A task refused by those limits waits in the worker for its subscription's next free slot when, at the
    # pace its requests end, one should be its within this many ms (each gives up after twice this and is
    # deferred), instead of a trip through a delay queue of 1 s or more (``switchboard.delivery.slots``).
    # 0: always deferred. At most 1000 (the shortest deferral); breaker_cooldown_seconds must be longer than
    # twice this.
    slot_wait_ms: int = 250
    # Per attempt, unless a subscription's retry policy says otherwise (1 to 60 s, as a subscription's own).
    timeout_seconds: float = 10.0
    rate_limit_per_second: int = 1000
    # A Retry-After longer than this is cut down to it.
    max_retry_after_seconds: float = 3600.0
    # Circuit breaker per subscription (kept by the worker holding its partition): this many failures in a
    # row that say the endpoint is unavailable hold its sends back for the cool-down (doubled after each
    # failed probe, up to the max).
    breaker_failures: int = 20
    breaker_cooldown_seconds: float = 30.0
    breaker_max_cooldown_seconds: float = 600.0
    # How long a rotated-out signing secret keeps signing beside the new one, unless the rotation says (at
    # most 30 days, as a rotation's own).
    secret_overlap_seconds: float = 86400.0
    # Callback URLs: plain HTTP is refused except for these hosts; these networks are allowed although not
    # public (for local development only: never allow loopback or private networks in production).
    allow_http_hosts: tuple[str, ...] = ()
    allow_networks: tuple[str, ...] = ()
    # The key that encrypts subscriptions' signing secrets at rest (a Fernet key).
    secrets_key: SecretRef | None = None
    # Extra CA certificates (PEM) trusted for callback URLs, besides the system's (a local CA in development).
    ca_file: Path | None = None

    def secret_box(self) -> SecretBox:
        """The box that seals subscriptions' signing secrets; ``ConfigError`` without a key (services refuse
        to start rather than store signing keys in clear)."""
        if self.secrets_key is None:
            raise ConfigError("delivery.secrets_key is not configured: signing secrets would be stored in clear")
        return SecretBox(self.secrets_key.resolve())

    # The deliveries' User-Agent; empty: ``Switchboard-Webhooks/<version>``. (It was set, and every delivery
    # carried the built-in one anyway: the signing headers replaced it.)
    user_agent: str = ""


def parse_control(raw: Mapping[str, Any]) -> ControlConfig:
    t = Table(raw, "control", ControlConfig)
    return ControlConfig(
        host=t.ip("host"),
        port=t.port("port"),
        replay_max_range_hours=t.pos_float("replay_max_range_hours"),
        replay_max_events=t.pos_int("replay_max_events"),
        replay_rate_per_second=t.pos_float("replay_rate_per_second"),
        replay_stale_after_seconds=t.pos_float("replay_stale_after_seconds"),
    )


def parse_delivery(raw: Mapping[str, Any], base: Path) -> DeliveryConfig:
    t = Table(raw, "delivery", DeliveryConfig)
    networks = t.strings("allow_networks")
    for cidr in networks:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ConfigError(f"delivery.allow_networks: {cidr!r} is not a CIDR") from None
    # Delays wait in the deliveries stream's delay queues, the longest of which is 24 h: a longer one came back
    # after 24 h, its recorded next attempt a lie.
    cooldown = t.pos_float("breaker_cooldown_seconds", at_most=MAX_DELAY)
    max_cooldown = t.pos_float("breaker_max_cooldown_seconds", at_most=MAX_DELAY)
    if cooldown > max_cooldown:
        raise ConfigError("delivery.breaker_cooldown_seconds is above delivery.breaker_max_cooldown_seconds")
    host_in_flight = t.pos_int("host_in_flight")
    if host_in_flight < MIN_HOST_LIMIT:
        raise ConfigError(f"delivery.host_in_flight must be at least {MIN_HOST_LIMIT}")
    key = raw.get("secrets_key")
    delivery = DeliveryConfig(
        count=t.pos_int("count"),
        partitions=t.int_between("partitions", 0, MAX_PARTITIONS),
        prefetch=t.int_between("prefetch", 1, MAX_PREFETCH),
        batch=t.pos_int("batch"),
        concurrency=t.pos_int("concurrency"),
        subscription_in_flight=t.pos_int("subscription_in_flight"),
        host_in_flight=host_in_flight,
        slot_wait_ms=t.int_between("slot_wait_ms", 0, 1000),
        # A subscription without a timeout of its own takes this one, and must be given one in range.
        timeout_seconds=t.float_between("timeout_seconds", MIN_TIMEOUT_MS / 1000, MAX_TIMEOUT_MS / 1000),
        rate_limit_per_second=t.pos_int("rate_limit_per_second"),
        max_retry_after_seconds=t.pos_float("max_retry_after_seconds", at_most=MAX_DELAY),
        breaker_failures=t.pos_int("breaker_failures"),
        breaker_cooldown_seconds=cooldown,
        breaker_max_cooldown_seconds=max_cooldown,
        # A rotation that names no overlap takes this one, and a longer one is refused.
        secret_overlap_seconds=t.pos_float("secret_overlap_seconds", at_most=MAX_OVERLAP_SECONDS),
        allow_http_hosts=t.strings("allow_http_hosts"),
        allow_networks=networks,
        secrets_key=parse_secret_ref(key, "delivery.secrets_key", base) if key is not None else None,
        user_agent=_user_agent(t.string("user_agent")),
        ca_file=t.optional_path("ca_file", base),
    )
    if 2 * delivery.slot_wait_ms / 1000 >= delivery.breaker_cooldown_seconds:
        raise ConfigError(
            "delivery.breaker_cooldown_seconds must be longer than twice delivery.slot_wait_ms (a task waiting for "
            "a slot must not outlast the cool-down of a circuit that opened meanwhile)"
        )
    if delivery.count > 1 and delivery.partitions == 0:
        raise ConfigError(
            "delivery.count is above 1 but delivery.partitions is 0: each worker would keep its own limits per "
            "subscription; set delivery.partitions (a few per worker)"
        )
    return delivery


def _user_agent(value: str) -> str:
    if len(value) > 200 or not (value.isascii() and value.isprintable()):
        raise ConfigError("delivery.user_agent: must be printable ASCII of at most 200 characters")
    return value
