"""A confirming publisher onto one stream's work exchange (ingest now; fan-out, replay and redrive next)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime

import aiormq
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection, FieldValue

from switchboard.errors import BrokerUnavailable
from switchboard.queue.connection import confirmed, connect
from switchboard.queue.topology import Topology


class Publisher:
    """Publishes persistent messages and returns only once the broker confirmed them.

    Every call awaits its own confirm, so concurrent requests pipeline on one channel: the broker confirms
    them in batches (``multiple`` acks) instead of one round trip after another. A call that is not
    confirmed within ``confirm_timeout`` raises ``BrokerUnavailable``; while the connection is down every
    call fails at once instead of queueing up behind a dead socket.

    It publishes on aio-pika's underlying aiormq channel with the properties aio-pika would build (aio-pika
    keeps the connection and the channel alive): without an ``aio_pika.Message`` and an exchange object per
    call, a confirmed 5 KB publish cost ~50 µs less of the publishing process's CPU (500-538 against
    519-612 µs per call, gRPC included, three rounds each; README, Benchmark).
    """

    def __init__(self, url: str, topology: Topology, *, confirm_timeout: float, purpose: str) -> None:
        self.url = url
        self.topology = topology
        self.confirm_timeout = confirm_timeout
        self.purpose = purpose
        self._conn: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None

    async def start(self, stop: asyncio.Event | None = None) -> None:
        self._conn = await connect(self.url, purpose=self.purpose, stop=stop)
        self._channel = await self._conn.channel(publisher_confirms=True)
        await self.topology.declare(self._channel)

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
        channel = self._channel
        if channel is None or not self.connected:
            raise BrokerUnavailable("message broker is not connected")
        properties = aiormq.spec.Basic.Properties(
            content_type="application/x-protobuf",
            delivery_mode=2,  # persistent
            headers=dict(headers),
            message_id=message_id,
            message_type=type,
            timestamp=datetime.fromtimestamp(timestamp, tz=UTC),
        )
        await confirmed(self.topology.exchange, self._publish(channel, body, properties), self.confirm_timeout)

    async def _publish(
        self, channel: AbstractRobustChannel, body: bytes, properties: aiormq.spec.Basic.Properties
    ) -> object:
        underlay = await channel.get_underlay_channel()
        return await underlay.basic_publish(
            body,
            exchange=self.topology.exchange,
            routing_key=self.topology.routing_key,
            properties=properties,
            mandatory=True,
        )
