"""The platform's streams on the broker: their topologies (from the configuration) and what travels on them.

* ``events``: verified inbound events, from ingest (and replays) to the processors, as ``webhooks.v1.Event``;
  partitioned by event key (``source/event_id``, the message id).
* ``deliveries``: one event to deliver to one subscription, from the processors' fan-out to the delivery
  workers, as ``webhooks.v1.DeliveryTask`` (message id: the delivery id); with ``delivery.partitions`` set,
  partitioned by subscription (the ``subscription-id`` header every task carries), one active worker per
  partition: every task of a subscription, its retries and deferrals included, is sent by one worker at a
  time, so the limits a worker keeps per subscription (in flight, rate, circuit breaker, pacing) hold across
  workers; else one queue for one worker. Its delay queues cover delivery schedules (1 s to 24 h).
* ``<prefix>.subscriptions.changed`` (fanout exchange, no queue of its own): the id of a subscription that was
  created, changed or deleted; every process holding a subscription cache binds a queue of its own to it.
"""

from __future__ import annotations

import asyncio

from aio_pika.abc import AbstractIncomingMessage, FieldValue

from switchboard.config import PlatformConfig
from switchboard.errors import InvalidRequest
from switchboard.model.events import InboundEvent
from switchboard.model.subscriptions import DeliveryTask
from switchboard.queue import Publisher, Topology
from switchboard.queue.message import RECEIPT_HEADER
from switchboard.queue.retire import retire_unpartitioned
from switchboard.wire import decode_task, encode_inbound, encode_task

EVENTS = "events"
EVENT_MESSAGE_TYPE = "webhooks.v1.Event"
DELIVERIES = "deliveries"
DELIVERY_MESSAGE_TYPE = "webhooks.v1.DeliveryTask"
# The header the deliveries stream is partitioned on; every delivery task carries it.
SUBSCRIPTION_HEADER = "subscription-id"
# Delay levels of the deliveries stream: a delay (a schedule's, a Retry-After, a deferral) waits in the
# shortest level that holds it, with its own per-message TTL. RabbitMQ expires messages only at the head of a
# queue, so a delay can wait behind a longer one of its level, up to the level's TTL: no level is more than
# 2.5 times the one below it, so no delay of 1 s or more waits more than 2.5 times itself (with 9 levels,
# 1 s to 24 h, a 60 s Retry-After could wait 5 minutes behind the schedule's 5-minute retries, and a 600 s
# circuit cool-down 30 minutes). The default schedule's delays (5 s, 5 min, 30 min, 2 h, 5 h, 10 h) are levels.
DELIVERY_LEVELS_MS = tuple(
    s * 1000 for s in (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 18_000, 36_000, 86_400)
)


def events_topology(cfg: PlatformConfig) -> Topology:
    """Partitioned by event key, one active processor per partition: the receipts of one event are handled
    one after the other, never concurrently (see docs/processing.md)."""
    return Topology(
        cfg.rabbitmq.queue_prefix,
        EVENTS,
        cfg.processor.retry.levels_ms(),
        partitions=cfg.processor.partitions,
        single_active=True,
    )


def deliveries_topology(cfg: PlatformConfig) -> Topology:
    """Partitioned by subscription, one active delivery worker per partition; with ``delivery.partitions`` 0,
    one queue that every worker consumes."""
    prefix = cfg.rabbitmq.queue_prefix
    if cfg.delivery.partitions == 0:
        return Topology(prefix, DELIVERIES, DELIVERY_LEVELS_MS)
    return Topology(
        prefix,
        DELIVERIES,
        DELIVERY_LEVELS_MS,
        partitions=cfg.delivery.partitions,
        single_active=True,
        hash_header=SUBSCRIPTION_HEADER,
    )


async def retire_unpartitioned_deliveries(cfg: PlatformConfig, *, purpose: str, stop: asyncio.Event) -> int:
    """Moves the tasks still waiting in the deliveries queue of a release before the stream was partitioned
    into the partitions, each with its ``subscription-id`` header (``switchboard.queue.retire``); returns how
    many. The delivery workers run it on start."""
    return await retire_unpartitioned(
        cfg.rabbitmq.amqp_url, deliveries_topology(cfg), _subscription_header, purpose=purpose, stop=stop
    )


def _subscription_header(message: AbstractIncomingMessage) -> dict[str, FieldValue]:
    try:
        return {SUBSCRIPTION_HEADER: decode_task(message.body).subscription_id}
    except InvalidRequest:  # the worker that gets it dead-letters it as undecodable
        return {SUBSCRIPTION_HEADER: ""}


def changes_exchange(cfg: PlatformConfig) -> str:
    return f"{cfg.rabbitmq.queue_prefix}.subscriptions.changed"


class EventPublisher:
    """Queues events on the ``events`` stream; returns only once the broker confirmed them."""

    def __init__(self, cfg: PlatformConfig, *, purpose: str, confirm_timeout: float) -> None:
        self._publisher = Publisher(
            cfg.rabbitmq.amqp_url, events_topology(cfg), confirm_timeout=confirm_timeout, purpose=purpose
        )

    async def start(self, stop: asyncio.Event | None = None) -> None:
        await self._publisher.start(stop)

    async def close(self) -> None:
        await self._publisher.close()

    async def __aenter__(self) -> EventPublisher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def publish_event(self, event: InboundEvent) -> None:
        """Queues ``event`` with its key as message id and its trace context in the headers."""
        headers: dict[str, FieldValue] = {"traceparent": event.traceparent, RECEIPT_HEADER: event.receipt_id}
        await self._publisher.publish(
            encode_inbound(event),
            message_id=event.key,
            headers=headers,
            timestamp=event.received_us / 1_000_000,
            type=EVENT_MESSAGE_TYPE,
        )


class DeliveryPublisher:
    """Queues delivery tasks on the ``deliveries`` stream; returns only once the broker confirmed them."""

    def __init__(self, cfg: PlatformConfig, *, purpose: str, confirm_timeout: float = 5.0) -> None:
        self._publisher = Publisher(
            cfg.rabbitmq.amqp_url, deliveries_topology(cfg), confirm_timeout=confirm_timeout, purpose=purpose
        )

    async def start(self, stop: asyncio.Event | None = None) -> None:
        await self._publisher.start(stop)

    async def close(self) -> None:
        await self._publisher.close()

    async def publish_task(self, task: DeliveryTask) -> None:
        headers: dict[str, FieldValue] = {
            "traceparent": task.event.traceparent,
            SUBSCRIPTION_HEADER: task.subscription_id,
        }
        await self._publisher.publish(
            encode_task(task),
            message_id=task.delivery_id,
            headers=headers,
            timestamp=task.created_us / 1_000_000,
            type=DELIVERY_MESSAGE_TYPE,
        )
