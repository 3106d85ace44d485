"""The worker's stats line: one structured log line per interval with the count of each outcome, store and
broker retries, end-to-end latency percentiles, messages held and the depth of every queue of the stream."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field

from switchboard.errors import BrokerUnavailable, Unavailable
from switchboard.queue.message import Ack, QueueMessage, Verdict
from switchboard.queue.worker import QueueWorker, WorkerHooks

log = logging.getLogger(__name__)


@dataclass
class Interval:
    outcomes: Counter[str] = field(default_factory=Counter)
    store_retries: int = 0
    broker_retries: int = 0
    batches: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    def snapshot(self) -> dict[str, object]:
        out: dict[str, object] = {
            **dict(self.outcomes),
            "store_retries": self.store_retries,
            "broker_retries": self.broker_retries,
            "batches": self.batches,
        }
        lat = sorted(self.latencies_ms)
        if lat:
            out["e2e_p50_ms"] = round(lat[len(lat) // 2], 2)
            out["e2e_p99_ms"] = round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 2)
            out["e2e_max_ms"] = round(lat[-1], 2)
        return out


class StatsHook(WorkerHooks):
    def __init__(self) -> None:
        self.current = Interval()

    def settled(self, message: QueueMessage, verdict: Verdict) -> None:
        self.current.outcomes[verdict.outcome] += 1
        if isinstance(verdict, Ack) and verdict.latency_ms is not None:
            self.current.latencies_ms.append(verdict.latency_ms)

    def batch_done(self, size: int, seconds: float) -> None:
        self.current.batches += 1

    def store_retry(self, error: Unavailable) -> None:
        self.current.store_retries += 1

    def forward_failed(self, message: QueueMessage, error: BrokerUnavailable) -> None:
        self.current.broker_retries += 1

    async def report_forever(self, worker: QueueWorker, name: str, interval: float = 60.0) -> None:
        while True:
            await asyncio.sleep(interval)
            stats, self.current = self.current, Interval()
            try:
                queues = await worker.depths()
            except Exception as exc:  # the broker may be down; the line is still worth logging
                queues = {}
                log.debug("queue depths unavailable", extra={"error": repr(exc)})
            log.info(
                f"{name} stats",
                extra={"interval_s": interval, "in_flight": worker.in_flight, **stats.snapshot(), "queues": queues},
            )
