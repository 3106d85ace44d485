"""A confirming publisher onto one stream's work exchange (ingest now; fan-out, replay and redrive next)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import aio_pika
from aio_pika.abc import AbstractExchange, AbstractRobustChannel, AbstractRobustConnection, FieldValue

from switchboard.errors import BrokerUnavailable
from switchboard.queue.connection import connect, publish_confirmed
from switchboard.queue.topology import Topology


class Publisher:
    """Publishes persistent messages and returns only once the broker confirmed them.

    Every call awaits its own confirm, so concurrent requests pipeline on one channel: the broker confirms
    them in batches (``multiple`` acks) instead of one round trip after another. A call that is not
    confirmed within ``confirm_timeout`` raises ``BrokerUnavailable``; while the connection is down every
    call fails at once instead of queueing up behind a dead socket.
    """

    def __init__(self, url: str, topology: Topology, *, confirm_timeout: float, purpose: str) -> None:
        self.url = url
        self.topology = topology
        self.confirm_timeout = confirm_timeout
        self.purpose = purpose
        self._conn: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._exchange: AbstractExchange | None = None

    async def start(self, stop: asyncio.Event | None = None) -> None:
        self._conn = await connect(self.url, purpose=self.purpose, stop=stop)
        self._channel = await self._conn.channel(publisher_confirms=True)
        await self.topology.declare(self._channel)
        self._exchange = await self._channel.get_exchange(self.topology.exchange)

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()

    async def __aenter__(self) -> Publisher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return (
            self._conn is not None
            and not self._conn.is_closed
            and self._channel is not None
            and not self._channel.is_closed
        )

    async def publish(
        self,
        body: bytes,
        *,
        message_id: str,
        headers: Mapping[str, FieldValue],
        timestamp: float,
        type: str,
    ) -> None:
        if self._exchange is None or not self.connected:
            raise BrokerUnavailable("message broker is not connected")
        message = aio_pika.Message(
            body,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message_id,
            headers=dict(headers),
            content_type="application/x-protobuf",
            type=type,
            timestamp=timestamp,
        )
        await publish_confirmed(self._exchange, self.topology.routing_key, message, self.confirm_timeout)
