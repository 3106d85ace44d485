"""pika on the service's event loop: a connection, channels whose methods are awaited, and a channel in
confirm mode whose publishes return once the broker confirmed them.

The publisher and the queue worker run on pika's ``AsyncioConnection`` rather than aio-pika for their hot
paths: pika writes a message's frames in one go and calls back on a delivery or a confirm, where aiormq passes
every frame through a task. Per ~5 KB message, publishing with confirms costs ~35 µs of CPU against ~85 µs,
consuming ~20 µs against ~75 µs, and the broker ~10% less (``python -m bench.amqp_clients``). Declaring a
topology stays on aio-pika (``Topology.declare``): it runs at start and on reconnect only.

Nothing here reconnects: the owner is told when its connection closes (``on_closed``) and opens a new one.
pika's errors do not leave this module's callers: every failure is ``BrokerUnavailable``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pika
import pika.exceptions
from pika.adapters.asyncio_connection import AsyncioConnection

from switchboard.errors import BrokerUnavailable
from switchboard.queue.connection import confirmed, connect, with_backoff
from switchboard.queue.topology import Topology, refuse_stale_layout

log = logging.getLogger(__name__)

OPEN_TIMEOUT = 5.0  # seconds for opening a connection or a channel, or for a method's reply
PIKA_ERRORS = (pika.exceptions.AMQPError, OSError)

OnClosed = Callable[[AsyncioConnection, BaseException], None]
# A confirming channel refuses a publish while this many bytes of its messages wait for a confirm: pika buffers
# what the socket does not take, without a limit, and a broker that stops reading (a resource alarm, a dead
# path not yet noticed) grew a publisher's memory by every request it answered 503 meanwhile.
MAX_UNCONFIRMED_BYTES = 64 * 2**20
# What a caller (a webhook sender) is told of a publish lost with its channel or connection.
LOST_PUBLIC = "broker refused or lost the message; retry later"


async def open_connection(
    url: str,
    *,
    purpose: str,
    on_closed: OnClosed,
    heartbeat: int | None = None,
    on_blocked: Callable[[bool], None] | None = None,
) -> AsyncioConnection:
    """One attempt to open a connection (``OPEN_TIMEOUT``); raises ``BrokerUnavailable`` or ``TimeoutError``.
    ``on_closed`` is called when it closes, whoever closed it (an attempt that failed included).
    ``heartbeat`` (seconds) bounds how long the broker takes to notice this process frozen or cut off.
    ``on_blocked`` hears ``connection.blocked`` (True) and ``unblocked`` (False): during a resource alarm the
    broker stops reading from connections that publish, so a publisher fails fast instead of buffering.

    An attempt given up while pika is still opening (the timeout, or the caller cancelled: a service stopping
    during a reconnect) is not aborted: pika 1.4 then logs its own errors, with a traceback of an assertion of
    its own, for what is a normal stop. It is left to finish, bounded by pika's own timeouts (the same
    ``OPEN_TIMEOUT``), and closed gracefully if it opens."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[AsyncioConnection] = loop.create_future()
    abandoned = False

    def opened(conn: AsyncioConnection) -> None:
        if abandoned:
            close_connection(conn)
        elif not ready.done():
            ready.set_result(conn)

    def failed(why: str) -> None:
        if not ready.done():
            ready.set_exception(BrokerUnavailable(why))

    def closed(connection: AsyncioConnection, reason: BaseException) -> None:
        failed(f"closed: {reason!r}")
        on_closed(connection, reason)

    params = pika.URLParameters(url)
    params.client_properties = {"connection_name": purpose}
    params.connection_attempts = 1
    params.socket_timeout = OPEN_TIMEOUT
    params.stack_timeout = OPEN_TIMEOUT
    if heartbeat is not None:
        params.heartbeat = heartbeat
    connection = AsyncioConnection(
        params,
        on_open_callback=opened,
        on_open_error_callback=lambda _conn, exc: failed(f"cannot connect: {exc.__class__.__name__}"),
        on_close_callback=closed,
        custom_ioloop=loop,
    )
    if on_blocked is not None:
        connection.add_on_connection_blocked_callback(lambda _conn, _frame: on_blocked(True))
        connection.add_on_connection_unblocked_callback(lambda _conn, _frame: on_blocked(False))
    try:
        async with asyncio.timeout(OPEN_TIMEOUT):
            return await ready
    except BaseException:
        if connection.is_open:  # it opened meanwhile
            close_connection(connection)
        else:
            abandoned = True
        raise


async def declare(url: str, topology: Topology, *, purpose: str, stop: asyncio.Event | None = None) -> None:
    """Declares ``topology`` through aio-pika on a connection of its own, closed right after (``connect`` waits
    for the broker, until ``stop`` is set)."""
    declaring = await connect(url, purpose=f"{purpose}-declare", stop=stop)
    try:
        await refuse_stale_layout(declaring, topology)
        await topology.declare(await declaring.channel())
    finally:
        await declaring.close()


async def reconnect(
    url: str,
    topology: Topology,
    *,
    purpose: str,
    reopen: Callable[[], Awaitable[None]],
    stop: asyncio.Event | None,
    stopped: Callable[[], bool],
) -> None:
    """After a live connection was lost: declares ``topology`` again (a broker that lost its definitions would
    refuse every publish and consume) and runs ``reopen``, with back-off, until both succeed or ``stopped()``.
    The publisher's and the worker's reconnect."""

    async def attempt() -> None:
        await declare(url, topology, purpose=purpose, stop=stop)
        await reopen()

    opened = await with_backoff(attempt, purpose=purpose, stopped=stopped)
    if opened is not None:
        log.info("reconnected to RabbitMQ", extra={"purpose": purpose, "attempt": opened[1]})


def close_connection(connection: AsyncioConnection | None) -> None:
    """Starts closing ``connection`` unless it is closed or closing already."""
    if connection is not None and not (connection.is_closed or connection.is_closing):
        connection.close()


async def close_and_wait(connection: AsyncioConnection) -> None:
    """Closes ``connection`` and waits (``OPEN_TIMEOUT`` at most) until the broker confirmed it."""
    if connection.is_closed:
        return
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    connection.add_on_close_callback(lambda _conn, _reason: None if done.done() else done.set_result(None))
    close_connection(connection)
    try:
        await asyncio.wait_for(done, OPEN_TIMEOUT)
    except TimeoutError:
        log.warning("the broker did not confirm closing a connection")


class Channel:
    """A pika channel whose methods are awaited (``call``). When the channel closes (the broker closed it, or
    the connection went), every call still waiting raises ``BrokerUnavailable`` and ``on_close`` runs."""

    def __init__(self, channel: Any, on_close: Callable[[BaseException], None] | None = None) -> None:
        self.channel = channel
        self.on_close = on_close
        self._waiting: set[asyncio.Future[Any]] = set()
        channel.add_on_close_callback(self._closed)

    @classmethod
    async def open(
        cls, connection: AsyncioConnection, on_close: Callable[[BaseException], None] | None = None
    ) -> Channel:
        opened: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        try:
            connection.channel(on_open_callback=lambda ch: None if opened.done() else opened.set_result(ch))
            async with asyncio.timeout(OPEN_TIMEOUT):
                return cls(await opened, on_close)
        except PIKA_ERRORS as exc:
            raise BrokerUnavailable(f"cannot open a channel: {exc.__class__.__name__}") from None
        except TimeoutError:
            raise BrokerUnavailable("the broker did not open a channel in time") from None

    @property
    def is_open(self) -> bool:
        return bool(self.channel.is_open)

    async def call(self, method: Callable[..., None], *args: Any, **kwargs: Any) -> Any:
        """Calls pika's ``method`` of this channel with a ``callback`` and returns the frame the broker answered
        with; ``BrokerUnavailable`` if the channel closes first (a passive declare of a missing queue closes
        it), or no answer comes within ``OPEN_TIMEOUT``."""
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.add(answer)
        try:
            method(*args, callback=lambda frame: None if answer.done() else answer.set_result(frame), **kwargs)
            async with asyncio.timeout(OPEN_TIMEOUT):
                return await answer
        except PIKA_ERRORS as exc:
            raise BrokerUnavailable(f"the broker refused a channel method: {exc.__class__.__name__}") from None
        except TimeoutError:
            raise BrokerUnavailable("the broker did not answer a channel method in time") from None
        finally:
            self._waiting.discard(answer)

    async def close(self) -> None:
        """Closes the channel and waits until it is closed (its unacked deliveries are the broker's again)."""
        if not (self.channel.is_open or self.channel.is_opening):
            return
        gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.add(gone)
        try:
            self.channel.close()
            async with asyncio.timeout(OPEN_TIMEOUT):
                await gone
        except (*PIKA_ERRORS, BrokerUnavailable, TimeoutError):
            pass  # closed by then, or the connection is going: either way the broker takes its messages back
        finally:
            self._waiting.discard(gone)

    def _closed(self, _channel: Any, reason: BaseException) -> None:
        waiting, self._waiting = self._waiting, set()
        for answer in waiting:
            if not answer.done():
                answer.set_exception(BrokerUnavailable(f"channel closed: {reason!r}", public="channel closed"))
        if self.on_close is not None:
            self.on_close(reason)


class ConfirmingChannel:
    """A channel in confirm mode: ``publish`` returns once the broker confirmed the message.

    Every call awaits its own confirm, so concurrent calls pipeline on one channel: the broker confirms them
    in batches (``multiple`` acks) instead of one round trip after another. Only a ``basic.ack`` returns; a
    call raises ``BrokerUnavailable`` if the broker refused the message (``basic.nack``), returned it
    (``mandatory``: nothing bound to take it), did not confirm it within the call's timeout, or the channel
    closed while it waited (``lost``). A returned message is matched to its calls by message id: the broker
    sends ``basic.return`` before the ``basic.ack`` of the same message, so the returned one is among the calls
    waiting with that id, and every one of them fails. Two receipts of one event share the id (the event's
    key), and marking only the oldest answered 200 for the returned second receipt while its slow-confirmed,
    queued first one failed; failing both costs the sender a retry, which is deduplicated.
    """

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self._tag = 0  # the delivery tag of the channel's last publish
        # tag -> (call's future, message id, body bytes); a call that timed out stays until the broker answers
        self._waiting: dict[int, tuple[asyncio.Future[None], str, int]] = {}
        self._unconfirmed = 0  # body bytes in _waiting (MAX_UNCONFIRMED_BYTES)
        self._returned: set[int] = set()

    @classmethod
    async def open(
        cls, connection: AsyncioConnection, on_close: Callable[[BaseException], None] | None = None
    ) -> ConfirmingChannel:
        """A new channel put in confirm mode. ``on_close`` runs after the calls waiting were failed."""
        confirming: ConfirmingChannel | None = None

        def closed(reason: BaseException) -> None:
            if confirming is not None:
                confirming.lost(f"channel closed: {reason!r}")
            if on_close is not None:
                on_close(reason)

        channel = await Channel.open(connection, closed)
        confirming = cls(channel)
        channel.channel.add_on_return_callback(confirming._on_return)
        await channel.call(channel.channel.confirm_delivery, confirming._on_confirm)
        return confirming

    @property
    def is_open(self) -> bool:
        return self.channel.is_open

    def publish(
        self, exchange: str, routing_key: str, body: bytes, properties: pika.BasicProperties
    ) -> Awaitable[None]:
        """Publishes ``body`` (mandatory); the awaitable returned completes once the broker confirmed it (see the
        class). ``properties.message_id`` matches a return to its call."""
        confirm: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._waiting and self._unconfirmed + len(body) > MAX_UNCONFIRMED_BYTES:
            confirm.set_exception(
                BrokerUnavailable(f"over {MAX_UNCONFIRMED_BYTES >> 20} MiB wait for the broker's confirm: not sent")
            )
            return confirm
        try:
            self.channel.channel.basic_publish(exchange, routing_key, body, properties, mandatory=True)
        except PIKA_ERRORS as exc:  # closed under us
            confirm.set_exception(BrokerUnavailable(f"broker refused or lost the message: {exc.__class__.__name__}"))
        else:
            self._tag += 1
            self._waiting[self._tag] = (confirm, properties.message_id or "", len(body))
            self._unconfirmed += len(body)
        return confirm

    async def publish_confirmed(
        self, exchange: str, routing_key: str, body: bytes, properties: pika.BasicProperties, confirm_timeout: float
    ) -> None:
        """``publish`` and await its confirm through ``queue.connection.confirmed`` (counted, timed, bounded)."""
        await confirmed(exchange, self.publish(exchange, routing_key, body, properties), confirm_timeout)

    def lost(self, why: str) -> None:
        """Fails every call waiting for a confirm: its message may or may not be queued."""
        waiting, self._waiting = self._waiting, {}
        self._unconfirmed = 0
        self._returned.clear()
        for confirm, _message_id, _size in waiting.values():
            if not confirm.done():
                # The broker's reason names its exchanges and queues: the log's, not the sender's
                confirm.set_exception(
                    BrokerUnavailable(f"broker refused or lost the message: {why}", public=LOST_PUBLIC)
                )

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
            if entry is not None:
                self._unconfirmed -= entry[2]
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
        matched = {tag for tag, (_, message_id, _) in self._waiting.items() if message_id == properties.message_id}
        if not matched:
            log.warning("the broker returned a message no call waits for", extra={"message_id": properties.message_id})
        self._returned |= matched
