"""RabbitMQ adapter: the topology, a confirming publisher and a consumer.

Topology (all durable; queues are quorum queues):

* exchange ``<prefix>.events`` (direct) → queue ``<prefix>.events`` (routing key ``event``): the work queue.
* exchange ``<prefix>.dead`` (direct) → queue ``<prefix>.events.dead``: messages that exhausted their
  attempts or could not be decoded. Dead-lettering is at-least-once (``x-dead-letter-strategy`` with
  ``x-overflow: reject-publish``, which RabbitMQ requires for it to be honoured).
* ``x-delivery-limit`` on the work queue stops a message that crashes its consumer every time from
  looping forever: after that many redeliveries it is dead-lettered, never dropped.
* exchange ``<prefix>.retry`` (direct) → one delay queue per backoff level, ``<prefix>.events.retry.<ms>ms``
  (routing key ``<ms>``), each with that TTL (``x-message-ttl``) and dead-lettering back to the work
  exchange, as dramatiq's delay queues do. A retried message also carries a jittered ``expiration`` between
  half and all of its level; messages expire from the head of a queue, so none waits longer than its level.

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
    retry_levels_ms: tuple[int, ...] = ()

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

    @property
    def retry_exchange(self) -> str:
        return f"{self.prefix}.retry"

    def retry_queue(self, level_ms: int) -> str:
        return f"{self.prefix}.events.retry.{level_ms}ms"

    def retry_queue_arguments(self, level_ms: int) -> dict[str, Any]:
        return {
            "x-queue-type": "quorum",
            "x-message-ttl": level_ms,
            "x-dead-letter-exchange": self.exchange,
            "x-dead-letter-routing-key": ROUTING_KEY,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }

    def queues(self) -> list[str]:
        """Every queue of the topology (work, delay and dead-letter queues)."""
        return [self.work_queue, *(self.retry_queue(ms) for ms in self.retry_levels_ms), self.dead_queue]

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
        if self.retry_levels_ms:
            retry_x = await channel.declare_exchange(self.retry_exchange, aio_pika.ExchangeType.DIRECT, durable=True)
            for ms in self.retry_levels_ms:
                q = await channel.declare_queue(
                    self.retry_queue(ms), durable=True, arguments=self.retry_queue_arguments(ms)
                )
                await q.bind(retry_x, str(ms))
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


async def publish_confirmed(
    exchange: aio_pika.abc.AbstractExchange, routing_key: str, message: aio_pika.Message, confirm_timeout: float
) -> None:
    """Publishes ``message`` (mandatory) and returns once the broker confirmed it; ``BrokerUnavailable`` if it
    did not within ``confirm_timeout``, refused it, or the connection failed."""
    try:
        confirmation = await asyncio.wait_for(exchange.publish(message, routing_key, mandatory=True), confirm_timeout)
    except TimeoutError:
        raise BrokerUnavailable(f"broker did not confirm within {confirm_timeout:g} s") from None
    except (aiormq.exceptions.AMQPError, aio_pika.exceptions.AMQPError, OSError, RuntimeError) as exc:
        raise BrokerUnavailable(f"broker refused or lost the message: {type(exc).__name__}") from None
    if not isinstance(confirmation, aiormq.spec.Basic.Ack):
        raise BrokerUnavailable(f"broker did not accept the message: {type(confirmation).__name__}")


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
        await publish_confirmed(self._exchange, ROUTING_KEY, message, self.confirm_timeout)

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


def _forward_headers(message: AbstractIncomingMessage, extra: dict[str, FieldValue]) -> dict[str, FieldValue]:
    """The message's headers without the broker's dead-letter history, plus ``extra``."""
    headers = {k: v for k, v in (message.headers or {}).items() if not k.startswith(("x-death", "x-first-death-"))}
    headers.update(extra)
    return headers


class Forwarder:
    """Republishes a consumed message, with publisher confirms, to a delay queue (a retry) or to the
    dead-letter queue. The caller acks the original only after this returned: a crash in between leaves two
    copies, which the processor's claim and committed state make harmless."""

    def __init__(self, topology: Topology, *, confirm_timeout: float = 5.0) -> None:
        self.topology = topology
        self.confirm_timeout = confirm_timeout
        self._channel: aio_pika.abc.AbstractChannel | None = None

    async def start(self, conn: AbstractRobustConnection) -> None:
        self._channel = await conn.channel(publisher_confirms=True)

    async def _publish(self, exchange: str, routing_key: str, message: aio_pika.Message) -> None:
        if self._channel is None or self._channel.is_closed:
            raise BrokerUnavailable("message broker is not connected")
        x = await self._channel.get_exchange(exchange, ensure=False)
        await publish_confirmed(x, routing_key, message, self.confirm_timeout)

    def _copy(self, message: AbstractIncomingMessage, headers: dict[str, FieldValue], **kw: Any) -> aio_pika.Message:
        return aio_pika.Message(
            message.body,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message.message_id,
            headers=headers,
            content_type=message.content_type,
            type=message.type,
            timestamp=message.timestamp,
            **kw,
        )

    async def retry(self, message: AbstractIncomingMessage, *, level_ms: int, delay_ms: int, attempt: int) -> None:
        """Parks ``message`` in the delay queue of ``level_ms`` for ``delay_ms`` (<= level_ms)."""
        headers = _forward_headers(message, {"x-attempt": attempt, "x-retry-delay-ms": delay_ms})
        copy = self._copy(message, headers, expiration=delay_ms / 1000)
        await self._publish(self.topology.retry_exchange, str(level_ms), copy)

    async def dead_letter(self, message: AbstractIncomingMessage, *, attempt: int, error: str) -> None:
        headers = _forward_headers(message, {"x-attempt": attempt, "x-last-error": error[:1000]})
        await self._publish(self.topology.dead_exchange, ROUTING_KEY, self._copy(message, headers))


class Consumer:
    """Consumes the work queue with manual acks and a prefetch window; ``handler`` acks or nacks."""

    def __init__(self, url: str, topology: Topology, *, prefetch: int) -> None:
        self.url = url
        self.topology = topology
        self.prefetch = prefetch
        self._conn: AbstractRobustConnection | None = None
        self._queue: aio_pika.abc.AbstractQueue | None = None
        self._tag: str | None = None
        self.forwarder = Forwarder(topology)

    async def start(self, handler: Handler, stop: asyncio.Event | None = None) -> None:
        self._conn = await connect(self.url, purpose="processor-consumer", stop=stop)
        channel = await self._conn.channel()
        await channel.set_qos(prefetch_count=self.prefetch)
        self._queue = await self.topology.declare(channel)
        await self.forwarder.start(self._conn)
        self._tag = await self._queue.consume(handler, no_ack=False)
        log.info("consuming", extra={"queue": self.topology.work_queue, "prefetch": self.prefetch})

    async def depths(self) -> dict[str, int]:
        """Messages ready in each queue of the topology (for the stats line)."""
        if self._conn is None:
            return {}
        channel = await self._conn.channel()
        try:
            out: dict[str, int] = {}
            for name in self.topology.queues():
                q = await channel.declare_queue(name, passive=True)
                out[name] = int(q.declaration_result.message_count or 0)
            return out
        finally:
            await channel.close()

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
