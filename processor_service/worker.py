"""Glue between the queue and the Processor: decode, handle, forward retries and dead letters, and ack only
after everything the message led to is committed (Cassandra) or confirmed (RabbitMQ)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aio_pika.abc import AbstractIncomingMessage

from processor_service.processor import Disposition, Handled, Processor
from switchboard.codec import decode_inbound
from switchboard.config import RetryConfig
from switchboard.errors import BrokerUnavailable, InvalidRequest, StoreUnavailable
from switchboard.events import InboundEvent, now_us
from switchboard.queue import Forwarder

log = logging.getLogger(__name__)

STORE_BACKOFF_MAX = 5.0


def retry_delay_ms(retry: RetryConfig, attempt: int, rng: random.Random) -> tuple[int, int]:
    """(delay queue level, jittered delay) after failed attempt ``attempt``: the delay is drawn between half
    and all of the level, so retries of events that failed together spread out."""
    level = retry.level_for(attempt)
    return level, rng.randint(max(1, level // 2), level)


@dataclass
class Stats:
    """Counters and end-to-end latencies (arrival → committed) for the periodic log line."""

    processed: int = 0
    stale: int = 0
    retried: int = 0
    failed: int = 0
    duplicates: int = 0
    redelivered: int = 0
    operations_applied: int = 0
    undecodable: int = 0
    store_retries: int = 0
    broker_retries: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    def snapshot(self) -> dict[str, float | int]:
        lat = sorted(self.latencies_ms)
        out: dict[str, float | int] = {
            k: v for k, v in self.__dict__.items() if isinstance(v, int) and not isinstance(v, bool)
        }
        if lat:
            out["e2e_p50_ms"] = round(lat[len(lat) // 2], 2)
            out["e2e_p99_ms"] = round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 2)
            out["e2e_max_ms"] = round(lat[-1], 2)
        return out


QueueDepths = Callable[[], Awaitable[dict[str, int]]]


class Worker:
    def __init__(
        self,
        processor: Processor,
        forwarder: Forwarder,
        retry: RetryConfig,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.processor = processor
        self.forwarder = forwarder
        self.retry = retry
        self.rng = rng or random.Random()
        self.stats = Stats()
        self.stopping = asyncio.Event()
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        self.in_flight += 1
        self._idle.clear()
        try:
            await self._handle(message)
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()

    def _abandoned(self, message: AbstractIncomingMessage) -> bool:
        """True once the message can no longer be acked here: the broker hands it to another consumer."""
        return self.stopping.is_set() or message.channel.is_closed

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        try:
            event = decode_inbound(message.body)
        except InvalidRequest as exc:
            # Not ours to fix by retrying: park it in the dead-letter queue for a human.
            log.error(
                "undecodable message dead-lettered",
                extra={"message_id": message.message_id, "error": exc.message},
            )
            self.stats.undecodable += 1
            await message.reject(requeue=False)
            return
        handled = await self._process(message, event)
        if handled is None:
            return  # left unacked: redelivered
        if not await self._forward(message, event, handled):
            return
        try:
            await message.ack()
        except Exception as exc:  # channel lost: the broker redelivers; the claim makes that harmless
            log.warning("ack failed", extra={"event": event.key, "error": repr(exc)})
            return
        self._count(event, handled)

    async def _process(self, message: AbstractIncomingMessage, event: InboundEvent) -> Handled | None:
        delay = 0.2
        while True:
            try:
                return await self.processor.handle(event)
            except StoreUnavailable as exc:
                # Never ack before the write: keep the message, back off, try again.
                self.stats.store_retries += 1
                log.warning(
                    "store unavailable, retrying",
                    extra={"event": event.key, "error": exc.message, "retry_in": delay},
                )
                if self._abandoned(message):
                    return None
                await asyncio.sleep(delay)
                delay = min(delay * 2, STORE_BACKOFF_MAX)
                if self._abandoned(message):
                    return None

    async def _forward(self, message: AbstractIncomingMessage, event: InboundEvent, handled: Handled) -> bool:
        """Schedules the retry or dead-letters the message; False if it could not (left for redelivery)."""
        try:
            if handled.disposition is Disposition.RETRY:
                level, delay_ms = retry_delay_ms(self.retry, handled.attempt, self.rng)
                await self.forwarder.retry(message, level_ms=level, delay_ms=delay_ms, attempt=handled.attempt)
                log.info(
                    "operation failed, retry scheduled",
                    extra={
                        "event": event.key,
                        "attempt": handled.attempt,
                        "retry_in_ms": delay_ms,
                        "error": handled.last_error[:300],
                    },
                )
            elif handled.disposition is Disposition.FAILED:
                await self.forwarder.dead_letter(message, attempt=handled.attempt, error=handled.last_error)
                log.error(
                    "event failed after its last attempt, dead-lettered",
                    extra={"event": event.key, "attempts": handled.attempt, "error": handled.last_error[:300]},
                )
            return True
        except BrokerUnavailable as exc:
            # The outcome is committed; redelivery resumes from it (the next attempt) once the broker is back.
            self.stats.broker_retries += 1
            log.warning("could not forward, leaving for redelivery", extra={"event": event.key, "error": exc.message})
            if not message.channel.is_closed:
                await asyncio.sleep(1.0)
                try:
                    await message.nack(requeue=True)
                except Exception as nack_exc:
                    log.info("nack failed", extra={"event": event.key, "error": repr(nack_exc)})
            return False

    def _count(self, event: InboundEvent, handled: Handled) -> None:
        s = self.stats
        s.operations_applied += handled.applied
        match handled.disposition:
            case Disposition.DUPLICATE:
                s.duplicates += 1
                return
            case Disposition.DONE:
                s.redelivered += 1
                return
            case Disposition.RETRY:
                s.retried += 1
                return
            case Disposition.STALE:
                s.stale += 1
            case Disposition.FAILED:
                s.failed += 1
            case Disposition.PROCESSED:
                s.processed += 1
        s.latencies_ms.append((now_us() - event.received_us) / 1000)

    async def drain(self, within: float) -> bool:
        """Waits for in-flight messages; True if none is left."""
        try:
            await asyncio.wait_for(self._idle.wait(), within)
            return True
        except TimeoutError:
            return False

    async def report_forever(self, depths: QueueDepths, interval: float = 60.0) -> None:
        """One structured line per interval: counts, end-to-end latency, queue depths."""
        while True:
            await asyncio.sleep(interval)
            stats, self.stats = self.stats, Stats()
            try:
                queues = await depths()
            except Exception as exc:  # the broker may be down; the line is still worth logging
                queues = {}
                log.debug("queue depths unavailable", extra={"error": repr(exc)})
            log.info(
                "processor stats",
                extra={"interval_s": interval, "in_flight": self.in_flight, **stats.snapshot(), "queues": queues},
            )
