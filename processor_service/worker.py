"""Glue between the queue and the Processor: decode, handle, ack only after the write succeeded."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from aio_pika.abc import AbstractIncomingMessage

from processor_service.processor import Disposition, Processor
from switchboard.codec import decode_inbound
from switchboard.errors import InvalidRequest, StoreUnavailable
from switchboard.events import now_us

log = logging.getLogger(__name__)


@dataclass
class Stats:
    """Counters and end-to-end latencies (arrival → stored) for the periodic log line."""

    processed: int = 0
    failed: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    store_retries: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    def snapshot(self) -> dict[str, float | int]:
        lat = sorted(self.latencies_ms)
        out: dict[str, float | int] = {
            "processed": self.processed,
            "failed": self.failed,
            "duplicates": self.duplicates,
            "dead_lettered": self.dead_lettered,
            "store_retries": self.store_retries,
        }
        if lat:
            out["e2e_p50_ms"] = round(lat[len(lat) // 2], 2)
            out["e2e_p99_ms"] = round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 2)
        return out


class Worker:
    def __init__(self, processor: Processor) -> None:
        self.processor = processor
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

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        try:
            event = decode_inbound(message.body)
        except InvalidRequest as exc:
            # Not ours to fix by retrying: park it in the dead-letter queue for a human.
            log.error(
                "undecodable message dead-lettered",
                extra={"message_id": message.message_id, "error": exc.message},
            )
            self.stats.dead_lettered += 1
            await message.reject(requeue=False)
            return
        delay = 0.2
        while True:
            try:
                disposition, _ = await self.processor.handle(event)
                break
            except StoreUnavailable as exc:
                # Never ack before the write: keep the message, back off, try again.
                self.stats.store_retries += 1
                log.warning(
                    "store unavailable, retrying",
                    extra={"event": event.key, "error": exc.message, "retry_in": delay},
                )
                if self.stopping.is_set():
                    return  # unacked: the broker redelivers it to another consumer
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        try:
            await message.ack()
        except Exception as exc:  # channel lost: the broker redelivers; the rewrite is idempotent
            log.warning("ack failed", extra={"event": event.key, "error": repr(exc)})
            return
        if disposition is Disposition.DUPLICATE:
            self.stats.duplicates += 1
        else:
            self.stats.processed += 1
            if disposition is Disposition.FAILED:
                self.stats.failed += 1
            self.stats.latencies_ms.append((now_us() - event.received_us) / 1000)

    async def drain(self, within: float) -> bool:
        """Waits for in-flight messages; True if none is left."""
        try:
            await asyncio.wait_for(self._idle.wait(), within)
            return True
        except TimeoutError:
            return False

    async def report_forever(self, interval: float = 60.0) -> None:
        while True:
            await asyncio.sleep(interval)
            stats, self.stats = self.stats, Stats()
            log.info("processor stats", extra={"interval_s": interval, **stats.snapshot()})
