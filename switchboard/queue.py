"""RabbitMQ adapter: the topology, a confirming publisher and a consumer.

Topology (all durable; queues are quorum queues):

* exchange ``<prefix>.events`` (direct) → queue ``<prefix>.events`` (routing key ``event``): the work queue.
* exchange ``<prefix>.dead`` (direct) → queue ``<prefix>.events.dead``: messages that exhausted their
  attempts or could not be decoded. Dead-lettering is at-least-once (``x-dead-letter-strategy`` with
  ``x-overflow: reject-publish``, which RabbitMQ requires for it to be honoured).
* ``x-delivery-limit`` on the work queue stops a message that crashes its consumer every time from
  looping forever: after that many redeliveries it is dead-lettered, never dropped.

aio-pika/aiormq exceptions never leave this module: they become ``BrokerUnavailable``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection, FieldValue

from switchboard.codec import encode_inbound
from switchboard.errors import BrokerUnavailable
from switchboard.events import InboundEvent

log = logging.getLogger(__name__)

ROUTING_KEY = "event"
DELIVERY_LIMIT = 20


@dataclass(frozen=True)
class Topology:
    prefix: str

    @property
    def exchange(self) -> str:
        return f"{self.prefix}.events"

    @property
    def work_queue(self) -> str:
        return f"{self.prefix}.events"

    @property
    def dead_exchange(self) -> str:
        return f"{self.prefix}.dead"

    @property
    def dead_queue(self) -> str:
        return f"{self.prefix}.events.dead"

    def work_queue_arguments(self) -> dict[str, Any]:
        return {
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": self.dead_exchange,
            "x-dead-letter-routing-key": ROUTING_KEY,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
            "x-delivery-limit": DELIVERY_LIMIT,
        }

    async def declare(self, channel: aio_pika.abc.AbstractChannel) -> aio_pika.abc.AbstractQueue:
        dead_x = await channel.declare_exchange(self.dead_exchange, aio_pika.ExchangeType.DIRECT, durable=True)
        dead_q = await channel.declare_queue(self.dead_queue, durable=True, arguments={"x-queue-type": "quorum"})
        await dead_q.bind(dead_x, ROUTING_KEY)
        work_x = await channel.declare_exchange(self.exchange, aio_pika.ExchangeType.DIRECT, durable=True)
        work_q = await channel.declare_queue(self.work_queue, durable=True, arguments=self.work_queue_arguments())
        await work_q.bind(work_x, ROUTING_KEY)
        return work_q


async def connect(url: str, *, purpose: str, stop: asyncio.Event | None = None) -> AbstractRobustConnection:
    """Connect with retries, logging each failed attempt; returns a robust (self-reconnecting) connection."""
    attempt = 0
    delay = 0.5
    while True:
        attempt += 1
        try:
            conn = await aio_pika.connect_robust(url, client_properties={"connection_name": purpose}, timeout=5)
            log.info("connected to RabbitMQ", extra={"purpose": purpose, "attempt": attempt})
            return conn
        except (TimeoutError, OSError, aiormq.exceptions.AMQPError) as exc:
            log.warning(
                "waiting for RabbitMQ",
                extra={
                    "purpose": purpose,
                    "attempt": attempt,
                    "error": f"{type(exc).__name__}: {exc}",
                    "retry_in": delay,
                },
            )
            if stop is not None and stop.is_set():
                raise BrokerUnavailable("stopped while waiting for RabbitMQ") from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


class Publisher:
    """Publishes persistent messages and returns only once the broker confirmed them.

    Every call awaits its own confirm, so concurrent requests pipeline on one channel: the broker confirms
    them in batches (``multiple`` acks) instead of one round trip after another. A call that is not
    confirmed within ``confirm_timeout`` raises ``BrokerUnavailable``; while the connection is down every
    call fails at once instead of queueing up behind a dead socket.
    """

    def __init__(self, url: str, topology: Topology, *, confirm_timeout: float) -> None:
        self.url = url
        self.topology = topology
        self.confirm_timeout = confirm_timeout
        self._conn: AbstractRobustConnection | None = None
        self._channel: aio_pika.abc.AbstractRobustChannel | None = None
        self._exchange: aio_pika.abc.AbstractExchange | None = None

    async def start(self, stop: asyncio.Event | None = None) -> None:
        self._conn = await connect(self.url, purpose="ingest-publisher", stop=stop)
        self._channel = await self._conn.channel(publisher_confirms=True)
        assert self._channel is not None
        await self.topology.declare(self._channel)
        self._exchange = await self._channel.get_exchange(self.topology.exchange)

    @property
    def connected(self) -> bool:
        return (
            self._conn is not None
            and not self._conn.is_closed
            and self._channel is not None
            and not self._channel.is_closed
        )

    async def publish(self, body: bytes, *, message_id: str, headers: dict[str, FieldValue], timestamp: float) -> None:
        if self._exchange is None or not self.connected:
            raise BrokerUnavailable("message broker is not connected")
        message = aio_pika.Message(
            body,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message_id,
            headers=headers,
            content_type="application/x-protobuf",
            type="webhooks.v1.Event",
            timestamp=timestamp,
        )
        try:
            confirmation = await asyncio.wait_for(
                self._exchange.publish(message, ROUTING_KEY, mandatory=True), self.confirm_timeout
            )
        except TimeoutError:
            raise BrokerUnavailable(f"broker did not confirm within {self.confirm_timeout:g} s") from None
        except (aiormq.exceptions.AMQPError, aio_pika.exceptions.AMQPError, OSError, RuntimeError) as exc:
            raise BrokerUnavailable(f"broker refused or lost the message: {type(exc).__name__}") from None
        if not isinstance(confirmation, aiormq.spec.Basic.Ack):
            raise BrokerUnavailable(f"broker did not accept the message: {type(confirmation).__name__}")

    async def publish_event(self, event: InboundEvent) -> None:
        """Queues ``event`` (protobuf ``webhooks.v1.Event``), its trace context in the message headers."""
        headers: dict[str, FieldValue] = {"traceparent": event.traceparent, "receipt-id": event.receipt_id}
        await self.publish(
            encode_inbound(event),
            message_id=event.key,
            headers=headers,
            timestamp=event.received_us / 1_000_000,
        )

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()


Handler = Callable[[AbstractIncomingMessage], Awaitable[None]]


class Consumer:
    """Consumes the work queue with manual acks and a prefetch window; ``handler`` acks or nacks."""

    def __init__(self, url: str, topology: Topology, *, prefetch: int) -> None:
        self.url = url
        self.topology = topology
        self.prefetch = prefetch
        self._conn: AbstractRobustConnection | None = None
        self._queue: aio_pika.abc.AbstractQueue | None = None
        self._tag: str | None = None

    async def start(self, handler: Handler, stop: asyncio.Event | None = None) -> None:
        self._conn = await connect(self.url, purpose="processor-consumer", stop=stop)
        channel = await self._conn.channel()
        await channel.set_qos(prefetch_count=self.prefetch)
        self._queue = await self.topology.declare(channel)
        self._tag = await self._queue.consume(handler, no_ack=False)
        log.info("consuming", extra={"queue": self.topology.work_queue, "prefetch": self.prefetch})

    async def stop_consuming(self) -> None:
        if self._queue is not None and self._tag is not None:
            try:
                await self._queue.cancel(self._tag)
            except Exception as exc:  # the channel may already be gone; unacked messages return anyway
                log.info("cancel failed", extra={"error": repr(exc)})
            self._tag = None

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
