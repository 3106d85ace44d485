"""A stream that became partitioned: moving what waits in its old work queue into the partitions.

Before a stream is partitioned its one work queue is ``<prefix>.<stream>``, bound to the stream's exchange.
Once the topology is partitioned, its declare binds the hash exchange to that exchange as well, so a broker
that still holds the old queue would route every new message to both. ``retire_unpartitioned`` ends that:

1. it unbinds the old queue from the exchange (nothing new lands there; a message published between a
   declare and this step is in both places, hence moved twice: handlers are idempotent per message id);
2. it takes as many messages from the old queue as it held then, one by one, and republishes each straight
   to the stream's hash exchange (not to the stream's exchange: a process of the older release that declares
   its layout meanwhile binds the old queue there again, and a copy would land in it too, for ever), with the
   headers ``extra_headers`` gives it (the header a stream hashes on, which older messages lack); it waits
   for the broker's confirm, then acks the original. A crash in between leaves a second copy, never none;
3. it deletes the old queue if it is then empty and has no consumer (a worker of the older release may still
   hold tasks from it, which would go back to it if that worker stopped); otherwise the next run moves what
   is left. Quorum queues refuse delete's if-empty and if-unused flags, so it looks first: a consumer that
   attaches in between is a case this does not cover, and so is a second mover's message taken but not yet
   republished (hence one mover: the delivery worker that is member 0, or every one started without a
   member index).

It runs on a plain connection of its own: a broker failure ends it with ``BrokerUnavailable`` (what was not
moved stays where it was), instead of a reconnect that would wait for ever.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aio_pika
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage, FieldValue

from switchboard.errors import BrokerUnavailable
from switchboard.queue.connection import DRIVER_ERRORS, publish_confirmed
from switchboard.queue.topology import Topology, exists

log = logging.getLogger(__name__)

CONFIRM_TIMEOUT = 5.0
CONNECT_TIMEOUT = 5.0
BROKER_COUNT = "x-delivery-count"  # the old queue's count of deliveries; the partition keeps its own

ExtraHeaders = Callable[[AbstractIncomingMessage], dict[str, FieldValue]]


async def retire_unpartitioned(
    url: str, topology: Topology, extra_headers: ExtraHeaders, *, purpose: str, stop: asyncio.Event | None = None
) -> int:
    """Moves the messages of ``topology``'s unpartitioned work queue, if the broker still has it, into the
    partitions and deletes it; returns how many were moved (0: no such queue, or not partitioned). Stops
    between two messages once ``stop`` is set. ``BrokerUnavailable`` if the broker fails meanwhile."""
    if not topology.partitioned:
        return 0
    try:
        connection = await aio_pika.connect(
            url, client_properties={"connection_name": purpose}, timeout=CONNECT_TIMEOUT
        )
    except (*DRIVER_ERRORS, TimeoutError) as exc:
        raise BrokerUnavailable(f"could not connect to move {topology.name}: {type(exc).__name__}") from None
    try:
        return await _retire(connection, topology, extra_headers, stop or asyncio.Event())
    except DRIVER_ERRORS as exc:
        raise BrokerUnavailable(f"moving {topology.name}'s old work queue failed: {type(exc).__name__}") from None
    finally:
        await connection.close()


async def _retire(connection: AbstractConnection, topology: Topology, extra: ExtraHeaders, stop: asyncio.Event) -> int:
    if not await exists(connection, topology.name):
        return 0  # the usual case: never there, or retired already
    channel = await connection.channel()  # publisher confirms: aio-pika's default
    ring = await channel.get_exchange(topology.hash_exchange, ensure=False)
    old = await channel.get_queue(topology.name, ensure=False)
    await old.unbind(topology.exchange, topology.routing_key)
    waiting = (await channel.declare_queue(topology.name, passive=True)).declaration_result.message_count or 0
    moved = 0
    while moved < waiting and not stop.is_set():
        message = await old.get(no_ack=False, fail=False)
        if message is None:
            break
        copy = aio_pika.Message(
            message.body,
            headers={**{k: v for k, v in message.headers.items() if k != BROKER_COUNT}, **extra(message)},
            content_type=message.content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message.message_id,
            timestamp=message.timestamp,
            type=message.type,
        )
        await publish_confirmed(ring, topology.routing_key, copy, CONFIRM_TIMEOUT)
        await message.ack()
        moved += 1
    # Quorum queues refuse queue.delete's if-empty and if-unused flags: look, then delete. A consumer there is
    # a worker of the older release (its unacked tasks would go back to the queue, and be lost with it).
    left = (await channel.declare_queue(topology.name, passive=True)).declaration_result
    if left.message_count or left.consumer_count or stop.is_set():
        log.warning(
            "the old work queue still has messages or consumers; the next start moves what is left",
            extra={"queue": topology.name, "moved": moved, "consumers": left.consumer_count},
        )
        return moved
    await old.delete(if_unused=False, if_empty=False)
    log.warning(
        "moved the old work queue's messages into the partitions and deleted it",
        extra={"queue": topology.name, "moved": moved},
    )
    return moved
