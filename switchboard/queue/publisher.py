"""A confirming publisher onto one stream's work exchange (ingest, the processors' fan-out, replay, redrive)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import pika
import pika.exceptions
from aio_pika.abc import FieldValue
from pika.adapters.asyncio_connection import AsyncioConnection

from switchboard.errors import BrokerUnavailable
from switchboard.queue.connection import CONNECT_BACKOFF, confirmed, connect
from switchboard.queue.topology import Topology

log = logging.getLogger(__name__)

OPEN_TIMEOUT = 5.0  # seconds for one attempt to open the connection and its channel
CONTENT_TYPE = "application/x-protobuf"


class Publisher:
    """Publishes persistent messages and returns only once the broker confirmed them.

    Every call awaits its own confirm, so concurrent requests pipeline on one channel: the broker confirms
    them in batches (``multiple`` acks) instead of one round trip after another. Only a ``basic.ack`` returns;
    a call raises ``BrokerUnavailable`` if the broker refused the message (``basic.nack``), returned it
    (``mandatory``: nothing is bound to take it), did not confirm it within ``confirm_timeout``, or the
    connection or channel failed while it waited. While the connection is down every call fails at once
    instead of queueing up behind a dead socket, and a task reconnects (``CONNECT_BACKOFF``) until the broker
    answers again.

    The stream's topology is declared through aio-pika (``Topology.declare``, on a connection closed right
    after) at ``start`` and again on every reconnect. Publishing runs on pika's ``AsyncioConnection`` on the
    service's event loop: a confirmed ~5 KB publish costs the publishing process ~35 µs of CPU against ~85 µs
    on aio-pika's underlying aiormq channel, and the broker ~10% less, because pika writes a message's frames
    in one go and resolves the confirm in a callback, where aiormq passes every frame through a writer task
    (``python -m bench.amqp_clients``; README, Benchmark).

    A returned message is matched to its call by message id: the broker sends ``basic.return`` before the
    ``basic.ack`` of the same message, so the oldest call still waiting with that id is the one returned.
    """

    def __init__(self, url: str, topology: Topology, *, confirm_timeout: float, purpose: str) -> None:
        self.url = url
        self.topology = topology
        self.confirm_timeout = confirm_timeout
        self.purpose = purpose
        self._stop: asyncio.Event | None = None
        self._closing = False
        self._connection: AsyncioConnection | None = None  # the last one opened (or being opened)
        self._live: AsyncioConnection | None = None  # the one publishing, once open
        self._channel: Any = None  # pika's channel, open and in confirm mode, or None
        self._tag = 0  # the delivery tag of the channel's last publish
        self._waiting: dict[int, tuple[asyncio.Future[None], str]] = {}  # tag -> (call's future, message id)
        self._returned: set[int] = set()
        self._reconnecting: asyncio.Task[None] | None = None

    async def start(self, stop: asyncio.Event | None = None) -> None:
        """Declares the topology and connects; waits (with back-off) until the broker answers or ``stop`` is
        set (``BrokerUnavailable``)."""
        self._stop = stop
        self._closing = False
        await self._declare()
        await self._open_with_backoff()

    async def close(self) -> None:
        self._closing = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        connection = self._connection
        if connection is not None and not (connection.is_closed or connection.is_closing):
            closed = self._closed_future(connection)
            connection.close()
            try:
                await asyncio.wait_for(closed, OPEN_TIMEOUT)
            except TimeoutError:
                log.warning("the broker did not confirm closing the connection", extra={"purpose": self.purpose})
        self._lost("the publisher closed")

    async def __aenter__(self) -> Publisher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._channel is not None and self._channel.is_open

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
        if channel is None or not channel.is_open:
            raise BrokerUnavailable("message broker is not connected")
        properties = pika.BasicProperties(
            content_type=CONTENT_TYPE,
            delivery_mode=2,  # persistent
            headers=dict(headers),
            message_id=message_id,
            type=type,
            timestamp=int(timestamp),
        )
        confirm: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            channel.basic_publish(self.topology.exchange, self.topology.routing_key, body, properties, mandatory=True)
        except (pika.exceptions.AMQPError, OSError) as exc:  # closed under us between the check and the call
            confirm.set_exception(BrokerUnavailable(f"broker refused or lost the message: {exc.__class__.__name__}"))
        else:
            self._tag += 1
            self._waiting[self._tag] = (confirm, message_id)
        await confirmed(self.topology.exchange, confirm, self.confirm_timeout)

    # -- the broker's answers (pika's callbacks, on the event loop) -----------------------------------------
    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        acked = isinstance(method, pika.spec.Basic.Ack)
        last = method.delivery_tag
        if method.multiple:
            tags = []
            for tag in self._waiting:  # in publishing order
                if tag > last:
                    break
                tags.append(tag)
        else:
            tags = [last]
        for tag in tags:
            entry = self._waiting.pop(tag, None)
            if entry is None or entry[0].done():  # timed out, or an unknown tag
                self._returned.discard(tag)
                continue
            if tag in self._returned:
                self._returned.discard(tag)
                entry[0].set_exception(BrokerUnavailable("broker did not accept the message: returned, unroutable"))
            elif acked:
                entry[0].set_result(None)
            else:
                entry[0].set_exception(BrokerUnavailable("broker did not accept the message: Nack"))

    def _on_return(self, _channel: Any, _method: Any, properties: Any, _body: bytes) -> None:
        for tag, (_confirm, message_id) in self._waiting.items():
            if message_id == properties.message_id and tag not in self._returned:
                self._returned.add(tag)
                return
        log.warning("the broker returned a message no call waits for", extra={"message_id": properties.message_id})

    def _lost(self, why: str) -> None:
        """Fails every call waiting for a confirm: its message may or may not be queued."""
        self._channel = None
        waiting, self._waiting = self._waiting, {}
        self._returned.clear()
        for confirm, _message_id in waiting.values():
            if not confirm.done():
                confirm.set_exception(BrokerUnavailable(f"broker refused or lost the message: {why}"))

    # -- connecting --------------------------------------------------------------------------------------------
    async def _open_with_backoff(self) -> None:
        for attempt, delay in enumerate(CONNECT_BACKOFF.delays(), start=1):
            try:
                await self._open()
                log.info("connected to RabbitMQ", extra={"purpose": self.purpose, "attempt": attempt})
                return
            except (TimeoutError, BrokerUnavailable) as exc:
                log.warning(
                    "waiting for RabbitMQ",
                    extra={"purpose": self.purpose, "attempt": attempt, "error": str(exc), "retry_in": delay},
                )
            if self._closing or (self._stop is not None and self._stop.is_set()):
                raise BrokerUnavailable("stopped while waiting for RabbitMQ")
            await asyncio.sleep(delay)

    async def _open(self) -> None:
        """One attempt: a connection, a channel in confirm mode. Raises ``BrokerUnavailable`` or ``TimeoutError``."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[Any] = loop.create_future()

        def failed(why: str) -> None:
            if not ready.done():
                ready.set_exception(BrokerUnavailable(why))

        def on_channel(channel: Any) -> None:
            channel.add_on_return_callback(self._on_return)
            channel.add_on_close_callback(lambda _ch, reason: self._on_channel_closed(reason))
            channel.confirm_delivery(
                self._on_confirm, callback=lambda _frame: None if ready.done() else ready.set_result(channel)
            )

        def on_closed(conn: AsyncioConnection, reason: Exception) -> None:
            failed(f"closed: {reason!r}")
            self._on_closed(conn, reason)

        params = pika.URLParameters(self.url)
        params.client_properties = {"connection_name": self.purpose}
        params.connection_attempts = 1
        params.socket_timeout = OPEN_TIMEOUT
        connection = AsyncioConnection(
            params,
            on_open_callback=lambda conn: conn.channel(on_open_callback=on_channel),
            on_open_error_callback=lambda _conn, exc: failed(f"cannot connect: {exc.__class__.__name__}"),
            on_close_callback=on_closed,
            custom_ioloop=loop,
        )
        self._connection = connection
        try:
            async with asyncio.timeout(OPEN_TIMEOUT):
                channel = await ready
        except BaseException:
            if not (connection.is_closed or connection.is_closing):
                connection.close()
            raise
        self._tag = 0
        self._channel = channel
        self._live = connection

    def _closed_future(self, connection: AsyncioConnection) -> asyncio.Future[None]:
        closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        connection.add_on_close_callback(lambda _conn, _reason: None if closed.done() else closed.set_result(None))
        return closed

    def _on_channel_closed(self, reason: Exception) -> None:
        """The broker closed the channel (a protocol error): the calls waiting on it are lost; the connection is
        closed too, so that the reconnect opens both afresh."""
        if self._channel is None:
            return
        self._lost(f"channel closed: {reason!r}")
        connection = self._connection
        if connection is not None and not (connection.is_closed or connection.is_closing):
            connection.close()

    def _on_closed(self, connection: AsyncioConnection, reason: Exception) -> None:
        """A connection closed. Only the live one matters here (an attempt that failed is retried by
        ``_open_with_backoff``): its calls are lost, and unless the publisher is closing, a task reconnects."""
        if connection is not self._live:
            return
        self._live = None
        self._lost(f"connection closed: {reason.__class__.__name__}")
        if self._closing:
            return
        log.warning("lost the connection to RabbitMQ", extra={"purpose": self.purpose, "error": repr(reason)})
        self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        """After the live connection was lost: declares the topology again (a broker that lost its definitions
        would refuse every publish) and reopens, with back-off, until that succeeds or the publisher closes."""
        for attempt, delay in enumerate(CONNECT_BACKOFF.delays(), start=1):
            if self._closing or (self._stop is not None and self._stop.is_set()):
                return
            try:
                await self._declare()
                await self._open()
                log.info("reconnected to RabbitMQ", extra={"purpose": self.purpose, "attempt": attempt})
                return
            except Exception as exc:  # every failure is retried, and logged
                log.warning(
                    "waiting for RabbitMQ",
                    extra={
                        "purpose": self.purpose,
                        "attempt": attempt,
                        "error": f"{exc.__class__.__name__}: {exc}",
                        "retry_in": delay,
                    },
                )
            await asyncio.sleep(delay)

    async def _declare(self) -> None:
        """Declares the stream's topology on a connection of its own (``connect`` waits for the broker)."""
        declaring = await connect(self.url, purpose=f"{self.purpose}-declare", stop=self._stop)
        try:
            await self.topology.declare(await declaring.channel())
        finally:
            await declaring.close()
