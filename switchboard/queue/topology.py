"""The RabbitMQ topology of one stream (``events`` from ingest to the processors; ``deliveries`` next), all
names derived from the stream's, the way dramatiq derives ``.DQ``/``.XQ`` from a queue name:

* exchange ``<prefix>.<stream>`` (direct): where publishers publish (routing key ``<stream>``).
* work queue ``<prefix>.<stream>``, or, for a partitioned stream, ``partitions`` queues
  ``<prefix>.<stream>.p00`` ... behind a consistent-hash exchange ``<prefix>.<stream>.hash`` (bound to the
  first) that hashes on the ``message_id`` property (every message with the same id, every receipt of one
  event, lands in the same partition) or, with ``hash_header``, on that header (the deliveries stream hashes
  on ``subscription-id``: every task of one subscription lands in the same partition). Every publisher of
  such a stream must set the header: RabbitMQ 3.10 hashes a missing one as one fixed value, later versions
  refuse the message. A stream hashed on a header has this layout even with one partition. Partitions are
  bound in name order, because the broker rebuilds the
  hash ring from the bindings sorted by queue name after a restart (bound in another order, ids move).
  With ``single_active`` each work queue has one active consumer at a time (``x-single-active-consumer``);
  the others wait and take over, with the unacked messages, when it goes. ``<prefix>.<stream>.members``
  carries no message: every consumer consumes it, so its consumer count is the number of live consumers.
* exchange ``<prefix>.<stream>.retry`` (direct) → one delay queue per level, ``<prefix>.<stream>.retry.<ms>ms``
  (routing key ``<ms>``), each with that TTL (``x-message-ttl``) and dead-lettering back to the stream's
  exchange, so a retried message returns to its own partition. A retried message also carries a jittered
  ``expiration`` up to its level; messages expire from the head of a queue, so none waits longer than its
  level.
* exchange ``<prefix>.<stream>.dead`` (direct) → queue ``<prefix>.<stream>.dead``: messages that exhausted
  their attempts or could not be decoded, republished with ``x-attempt`` and ``x-last-error`` headers.

Every queue is a quorum queue; every exchange durable. Dead-lettering is at-least-once
(``x-dead-letter-strategy`` with ``x-overflow: reject-publish``, without which RabbitMQ silently falls back to
at-most-once). ``x-delivery-limit`` on the work queues stops a message that crashes its consumer every time
from looping for ever: after that many deliveries the broker dead-letters it, never drops it.

Declaring a queue or exchange that exists with other arguments (an older layout) fails: ``ConfigError``
says which, and what to do.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection

from switchboard.errors import ConfigError

DELIVERY_LIMIT = 20
HASH_EXCHANGE_TYPE = "x-consistent-hash"

_AT_LEAST_ONCE = {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}


@dataclass(frozen=True)
class Topology:
    prefix: str
    stream: str = "events"
    retry_levels_ms: tuple[int, ...] = ()
    partitions: int = 1
    single_active: bool = False
    # The header a partitioned stream hashes on; None: the ``message_id`` property.
    hash_header: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.partitions <= 100:
            raise ConfigError(f"stream {self.stream}: partitions must be between 1 and 100, not {self.partitions}")

    @property
    def name(self) -> str:
        return f"{self.prefix}.{self.stream}"

    @property
    def partitioned(self) -> bool:
        """The hash layout (``.pNN`` queues behind the hash exchange): more than one partition, or any number
        for a stream hashed on a header, so that its partition count can change without renaming its queue."""
        return self.partitions > 1 or self.hash_header is not None

    @property
    def hash_exchange(self) -> str:
        return f"{self.name}.hash"

    def hash_exchange_arguments(self) -> dict[str, Any]:
        if self.hash_header is not None:
            return {"hash-header": self.hash_header}
        return {"hash-property": "message_id"}

    @property
    def work_queues(self) -> list[str]:
        """The queues consumers consume, in name order."""
        if not self.partitioned:
            return [self.name]
        return [f"{self.name}.p{i:02d}" for i in range(self.partitions)]

    @property
    def exchange(self) -> str:
        return self.name

    @property
    def routing_key(self) -> str:
        return self.stream

    @property
    def members_queue(self) -> str:
        """A queue nobody publishes to: every consumer of a partitioned stream consumes it too, so its consumer
        count is the number of live consumers (a single-active-consumer queue counts only the active one)."""
        return f"{self.name}.members"

    @property
    def retry_exchange(self) -> str:
        return f"{self.name}.retry"

    def retry_queue(self, level_ms: int) -> str:
        return f"{self.name}.retry.{level_ms}ms"

    @property
    def dead_exchange(self) -> str:
        return f"{self.name}.dead"

    @property
    def dead_queue(self) -> str:
        return f"{self.name}.dead"

    def queues(self) -> list[str]:
        """Every queue of the stream (work, delay and dead-letter queues)."""
        return [*self.work_queues, *(self.retry_queue(ms) for ms in self.retry_levels_ms), self.dead_queue]

    def level_for_attempt(self, attempt: int) -> int:
        """The delay queue a message waits in after failed attempt ``attempt`` (1-based): level ``attempt``,
        or the longest once the ladder is exhausted."""
        if not self.retry_levels_ms:
            raise ValueError(f"stream {self.name} has no delay queues")
        return self.retry_levels_ms[min(max(attempt, 1), len(self.retry_levels_ms)) - 1]

    def level_for_delay(self, delay_ms: int) -> int:
        """The delay queue a message waiting ``delay_ms`` goes to: the shortest level at least that long (the
        message's own ``expiration`` then shortens the wait), else the longest."""
        if not self.retry_levels_ms:
            raise ValueError(f"stream {self.name} has no delay queues")
        i = bisect.bisect_left(self.retry_levels_ms, delay_ms)
        return self.retry_levels_ms[min(i, len(self.retry_levels_ms) - 1)]

    # -- arguments ---------------------------------------------------------------------------------------
    def work_queue_arguments(self) -> dict[str, Any]:
        args: dict[str, Any] = {
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": self.dead_exchange,
            "x-dead-letter-routing-key": self.routing_key,
            "x-delivery-limit": DELIVERY_LIMIT,
            **_AT_LEAST_ONCE,
        }
        if self.single_active:
            args["x-single-active-consumer"] = True
        return args

    def retry_queue_arguments(self, level_ms: int) -> dict[str, Any]:
        return {
            "x-queue-type": "quorum",
            "x-message-ttl": level_ms,
            "x-dead-letter-exchange": self.exchange,
            "x-dead-letter-routing-key": self.routing_key,
            **_AT_LEAST_ONCE,
        }

    async def declare(self, channel: AbstractChannel) -> None:
        """Declares every exchange, queue and binding (idempotent). The partitions are bound before any delay
        queue exists: a message expiring into a hash exchange without bindings stays stuck for minutes."""
        try:
            await self._declare(channel)
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise ConfigError(
                f"the broker holds part of stream {self.name} with other arguments ({exc}): an older layout? "
                "Drain and delete it (for the local stack: stop it and `make clean`)"
            ) from None
        except aiormq.exceptions.ConnectionCommandInvalid as exc:
            raise ConfigError(
                f"the broker refused stream {self.name}'s layout ({exc}); a partitioned stream needs the "
                "rabbitmq_consistent_hash_exchange plugin enabled"
            ) from None

    async def _declare(self, channel: AbstractChannel) -> None:
        direct = aio_pika.ExchangeType.DIRECT
        dead_x = await channel.declare_exchange(self.dead_exchange, direct, durable=True)
        dead_q = await channel.declare_queue(self.dead_queue, durable=True, arguments={"x-queue-type": "quorum"})
        await dead_q.bind(dead_x, self.routing_key)
        front = await channel.declare_exchange(self.exchange, direct, durable=True)
        if self.partitioned:
            ring = await channel.declare_exchange(
                self.hash_exchange, HASH_EXCHANGE_TYPE, durable=True, arguments=self.hash_exchange_arguments()
            )
            await ring.bind(front, self.routing_key)
            target = ring
            binding = "1"  # each partition's weight on the ring
        else:
            target, binding = front, self.routing_key
        for name in self.work_queues:  # in name order
            q = await channel.declare_queue(name, durable=True, arguments=self.work_queue_arguments())
            await q.bind(target, binding)
        if self.partitioned:
            await channel.declare_queue(self.members_queue, durable=True, arguments={"x-queue-type": "classic"})
        if self.retry_levels_ms:
            retry_x = await channel.declare_exchange(self.retry_exchange, direct, durable=True)
            for ms in self.retry_levels_ms:
                q = await channel.declare_queue(
                    self.retry_queue(ms), durable=True, arguments=self.retry_queue_arguments(ms)
                )
                await q.bind(retry_x, str(ms))


async def exists(connection: AbstractConnection, name: str, *, exchange: bool = False) -> bool:
    """Whether the broker holds queue (or, with ``exchange``, exchange) ``name``: a passive declare on a channel
    of its own, since the broker closes the channel of a passive declare that finds nothing."""
    probe = await connection.channel()
    try:
        if exchange:
            await probe.declare_exchange(name, passive=True)
        else:
            await probe.declare_queue(name, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return False
    await probe.close()
    return True


async def refuse_stale_layout(connection: AbstractConnection, topology: Topology) -> None:
    """``ConfigError`` when the broker holds the stream laid out with more partitions than ``topology``: its hash
    exchange while ``topology`` is not partitioned, or a partition past its last one. The extra partitions,
    still bound, would get their share of every message and nobody would consume them. The other way, a
    stream partitioned that was not or given more partitions, is safe (the deliveries stream's workers move
    its old queue on start: ``queue.retire``; the events stream's old queue is left to the operator)."""
    if topology.partitioned:
        extra = f"{topology.name}.p{topology.partitions:02d}"
        stale = await exists(connection, extra)
    else:
        extra = topology.hash_exchange
        stale = await exists(connection, extra, exchange=True)
    if stale:
        raise ConfigError(
            f"the broker holds stream {topology.name} with more partitions than configured ({extra} exists): "
            "set its partitions back, or drain the stream and delete its partitions and hash exchange first"
        )
