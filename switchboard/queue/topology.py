"""The RabbitMQ topology of one stream (``events`` from ingest to the processors; ``deliveries`` next), all
names derived from the stream's, the way dramatiq derives ``.DQ``/``.XQ`` from a queue name:

* exchange ``<prefix>.<stream>`` (direct) → work queue ``<prefix>.<stream>`` (routing key ``<stream>``).
* exchange ``<prefix>.<stream>.retry`` (direct) → one delay queue per level, ``<prefix>.<stream>.retry.<ms>ms``
  (routing key ``<ms>``), each with that TTL (``x-message-ttl``) and dead-lettering back to the work
  exchange. A retried message also carries a jittered ``expiration`` up to its level; messages expire from
  the head of a queue, so none waits longer than its level.
* exchange ``<prefix>.<stream>.dead`` (direct) → queue ``<prefix>.<stream>.dead``: messages that exhausted
  their attempts or could not be decoded, republished with ``x-attempt`` and ``x-last-error`` headers.

Every queue is a quorum queue; every exchange durable. Dead-lettering is at-least-once
(``x-dead-letter-strategy`` with ``x-overflow: reject-publish``, without which RabbitMQ silently falls back to
at-most-once). ``x-delivery-limit`` on the work queue stops a message that crashes its consumer every time
from looping for ever: after that many deliveries the broker dead-letters it, never drops it.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractQueue

DELIVERY_LIMIT = 20

_AT_LEAST_ONCE = {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}


@dataclass(frozen=True)
class Topology:
    prefix: str
    stream: str = "events"
    retry_levels_ms: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.prefix}.{self.stream}"

    @property
    def exchange(self) -> str:
        return self.name

    @property
    def routing_key(self) -> str:
        return self.stream

    @property
    def work_queue(self) -> str:
        return self.name

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
        return [self.work_queue, *(self.retry_queue(ms) for ms in self.retry_levels_ms), self.dead_queue]

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
        return {
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": self.dead_exchange,
            "x-dead-letter-routing-key": self.routing_key,
            "x-delivery-limit": DELIVERY_LIMIT,
            **_AT_LEAST_ONCE,
        }

    def retry_queue_arguments(self, level_ms: int) -> dict[str, Any]:
        return {
            "x-queue-type": "quorum",
            "x-message-ttl": level_ms,
            "x-dead-letter-exchange": self.exchange,
            "x-dead-letter-routing-key": self.routing_key,
            **_AT_LEAST_ONCE,
        }

    async def declare(self, channel: AbstractChannel) -> AbstractQueue:
        """Declares every exchange, queue and binding (idempotent); returns the work queue."""
        direct = aio_pika.ExchangeType.DIRECT
        dead_x = await channel.declare_exchange(self.dead_exchange, direct, durable=True)
        dead_q = await channel.declare_queue(self.dead_queue, durable=True, arguments={"x-queue-type": "quorum"})
        await dead_q.bind(dead_x, self.routing_key)
        work_x = await channel.declare_exchange(self.exchange, direct, durable=True)
        work_q = await channel.declare_queue(self.work_queue, durable=True, arguments=self.work_queue_arguments())
        await work_q.bind(work_x, self.routing_key)
        if self.retry_levels_ms:
            retry_x = await channel.declare_exchange(self.retry_exchange, direct, durable=True)
            for ms in self.retry_levels_ms:
                q = await channel.declare_queue(
                    self.retry_queue(ms), durable=True, arguments=self.retry_queue_arguments(ms)
                )
                await q.bind(retry_x, str(ms))
        return work_q
