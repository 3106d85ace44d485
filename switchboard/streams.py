"""The platform's streams on the broker: their topologies (from the configuration) and what travels on them.

* ``events``: verified inbound events, from ingest (and replays) to the processors, as ``webhooks.v1.Event``;
  partitioned by event key (``source/event_id``, the message id).
"""

from __future__ import annotations

import asyncio

from aio_pika.abc import FieldValue

from switchboard.config import PlatformConfig
from switchboard.model.events import InboundEvent
from switchboard.queue import Publisher, Topology
from switchboard.wire import encode_inbound

EVENTS = "events"
EVENT_MESSAGE_TYPE = "webhooks.v1.Event"


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
        headers: dict[str, FieldValue] = {"traceparent": event.traceparent, "receipt-id": event.receipt_id}
        await self._publisher.publish(
            encode_inbound(event),
            message_id=event.key,
            headers=headers,
            timestamp=event.received_us / 1_000_000,
            type=EVENT_MESSAGE_TYPE,
        )
