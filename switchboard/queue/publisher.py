"""A confirming publisher onto one stream's work exchange (ingest, the processors' fan-out, replay, redrive)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import pika
from aio_pika.abc import FieldValue
from pika.adapters.asyncio_connection import AsyncioConnection

from switchboard.errors import BrokerUnavailable
from switchboard.queue.amqp import (
    ConfirmingChannel,
    close_and_wait,
    close_connection,
    declare,
    open_connection,
    reconnect,
)
from switchboard.queue.connection import not_sent, with_backoff
from switchboard.queue.topology import Topology

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/x-protobuf"


class Publisher:
    """Publishes persistent messages and returns only once the broker confirmed them.

    Calls pipeline on one ``ConfirmingChannel`` (``switchboard.queue.amqp``: what returns, what raises, how a
    returned message finds its call). While the connection is down every call fails at once instead of
    queueing up behind a dead socket, and a task reconnects (``CONNECT_BACKOFF``) until the broker answers
    again. While the broker blocks the connection (``connection.blocked``: a memory or disk alarm) every call
    fails at once too: the broker reads nothing from it meanwhile, and each message would wait in this
    process's memory for a confirm that cannot come before the alarm ends.

    The stream's topology is declared through aio-pika (``Topology.declare``, on a connection closed right
    after) at ``start`` and again on every reconnect. Publishing runs on pika's ``AsyncioConnection`` on the
    service's event loop: a confirmed ~5 KB publish costs the publishing process ~35 µs of CPU against ~85 µs
    on aio-pika's underlying aiormq channel, and the broker ~10% less (``python -m bench.amqp_clients``;
    docs/benchmarks.md).
    """

    def __init__(self, url: str, topology: Topology, *, confirm_timeout: float, purpose: str) -> None:
        self.url = url
        self.topology = topology
        self.confirm_timeout = confirm_timeout
        self.purpose = purpose
        self._stop: asyncio.Event | None = None
        self._closing = False
        self._live: AsyncioConnection | None = None  # the one publishing, once open
        self._confirms: ConfirmingChannel | None = None  # open and in confirm mode, or None
        self._reconnecting: asyncio.Task[None] | None = None
        self._blocked = False  # the broker blocked the live connection (a resource alarm)

    async def start(self, stop: asyncio.Event | None = None) -> None:
        """Declares the topology and connects; waits (with back-off) until the broker answers or ``stop`` is
        set (``BrokerUnavailable``)."""
        self._stop = stop
        self._closing = False
        await declare(self.url, self.topology, purpose=self.purpose, stop=stop)
        opened = await with_backoff(
            self._open, purpose=self.purpose, stopped=self._stopped, retry_on=(TimeoutError, BrokerUnavailable)
        )
        if opened is None:
            raise BrokerUnavailable("stopped while waiting for RabbitMQ")
        log.info("connected to RabbitMQ", extra={"purpose": self.purpose, "attempt": opened[1]})

    async def close(self) -> None:
        self._closing = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        if self._live is not None:
            await close_and_wait(self._live)
        self._lost("the publisher closed")

    async def __aenter__(self) -> Publisher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._confirms is not None and self._confirms.is_open

    async def publish(
        self,
        body: bytes,
        *,
        message_id: str,
        headers: Mapping[str, FieldValue],
        timestamp: float,
        type: str,
    ) -> None:
        confirms = self._confirms
        if confirms is None or not confirms.is_open:
            raise not_sent(self.topology.exchange, "message broker is not connected")
        if self._blocked:
            raise not_sent(self.topology.exchange, "the message broker blocks publishers (a memory or disk alarm)")
        properties = pika.BasicProperties(
            content_type=CONTENT_TYPE,
            delivery_mode=2,  # persistent
            headers=dict(headers),
            message_id=message_id,
            type=type,
            timestamp=int(timestamp),
        )
        await confirms.publish_confirmed(
            self.topology.exchange, self.topology.routing_key, body, properties, self.confirm_timeout
        )

    def _lost(self, why: str) -> None:
        """Fails every call waiting for a confirm: its message may or may not be queued."""
        confirms, self._confirms = self._confirms, None
        if confirms is not None:
            confirms.lost(why)

    # -- connecting --------------------------------------------------------------------------------------------
    async def _open(self) -> None:
        """One attempt: a connection, a channel in confirm mode. Raises ``BrokerUnavailable`` or ``TimeoutError``."""
        connection = await open_connection(
            self.url, purpose=self.purpose, on_closed=self._on_closed, on_blocked=self._set_blocked
        )
        try:
            confirms = await ConfirmingChannel.open(connection, self._on_channel_closed)
        except BaseException:
            close_connection(connection)
            raise
        self._confirms = confirms
        self._live = connection
        self._blocked = False

    def _set_blocked(self, blocked: bool) -> None:
        if blocked != self._blocked:
            what = "the broker blocks publishing (a resource alarm)" if blocked else "the broker unblocked publishing"
            log.warning(what, extra={"purpose": self.purpose})
        self._blocked = blocked

    def _on_channel_closed(self, reason: BaseException) -> None:
        """The broker closed the channel (a protocol error; its calls have failed): the connection is closed
        too, so that the reconnect opens both afresh."""
        if self._confirms is None:
            return
        self._confirms = None
        close_connection(self._live)

    def _on_closed(self, connection: AsyncioConnection, reason: BaseException) -> None:
        """A connection closed. Only the live one matters here (an attempt that failed is retried by
        ``start``'s back-off): its calls are lost, and unless the publisher is closing, a task reconnects."""
        if connection is not self._live:
            return
        self._live = None
        self._lost(f"connection closed: {reason.__class__.__name__}")
        if self._closing:
            return
        log.warning("lost the connection to RabbitMQ", extra={"purpose": self.purpose, "error": repr(reason)})
        self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        """After the live connection was lost: declares the topology again and reopens, with back-off, until
        that succeeds or the publisher closes."""
        await reconnect(
            self.url, self.topology, purpose=self.purpose, reopen=self._open, stop=self._stop, stopped=self._stopped
        )

    def _stopped(self) -> bool:
        return self._closing or (self._stop is not None and self._stop.is_set())
