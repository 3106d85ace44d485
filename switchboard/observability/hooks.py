"""What the services plug in to export metrics (the families are in ``switchboard.observability.metrics``):

* ``metrics_endpoint(cfg, service, index)``: the process's ``/metrics`` endpoint, entered in ``serve()``;
* ``WorkerMetrics``: a ``WorkerHooks`` counting every settled message by outcome, observing the end-to-end
  latency a verdict reports (with the message's trace id as exemplar), batch times, store and broker retries;
* ``poll_depths``: the ready messages of every queue of a worker's stream, every few seconds;
* ``IngestMetrics``: accepted and rejected events by source and reason;
* ``DeadLetterMetrics``: dead letters recorded, by stream and reason;
* ``timed_operation``: an operation function that observes its own run time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable
from contextlib import asynccontextmanager
from typing import Any

from prometheus_client import Counter, Histogram

from switchboard.addresses import host_port
from switchboard.config import MetricsConfig
from switchboard.errors import BrokerUnavailable, ConfigError, SwitchboardError, Unavailable
from switchboard.observability import metrics as m
from switchboard.observability.tracing import sampled
from switchboard.queue import Ack, QueueMessage, QueueWorker, Verdict, WorkerHooks

log = logging.getLogger(__name__)

# Set by the local stack for each process it starts: the port it picked for the process's metrics endpoint.
PORT_ENV = "SWITCHBOARD_METRICS_PORT"
DEPTH_INTERVAL_SECONDS = 5.0

PROCESSOR_OUTCOMES = (
    "processed", "duplicate", "stale", "redelivered", "retried", "behind", "failed", "undecodable", "abandoned",
    "crashed",
)  # fmt: skip
DELIVERY_OUTCOMES = (
    "delivered", "retried", "deferred", "failed", "disabled", "cancelled", "already_final", "undecodable",
    "abandoned",
)  # fmt: skip
DEAD_REASONS = ("failed", "undecodable", "disabled", "crashed")


@asynccontextmanager
async def metrics_endpoint(cfg: MetricsConfig, service: str, index: int = 0) -> AsyncIterator[int]:
    """Serves this process's metrics while the block runs; yields the port (``$SWITCHBOARD_METRICS_PORT`` if
    set, else the configured one, else any free port). Refuses to start (``ConfigError``) if the port is
    taken, as the gRPC server does. Nothing is served when ``enabled`` is false (yields 0)."""
    if not cfg.enabled:
        yield 0
        return
    wanted = int(os.environ.get(PORT_ENV) or cfg.port(service, index))
    try:
        server, port = m.serve_metrics(cfg.host, wanted)
    except OSError as exc:
        raise ConfigError(f"metrics: cannot listen on {host_port(cfg.host, wanted)} ({exc.strerror or exc})") from None
    log.info("metrics listening", extra={"address": host_port(cfg.host, port), "path": "/metrics"})
    try:
        yield port
    finally:
        await asyncio.to_thread(server.shutdown)
        server.server_close()


def trace_id(traceparent: Any) -> str | None:
    """The trace id of a sampled W3C ``traceparent`` (``00-<32 hex>-<16 hex>-<2 hex>``), None if it is not one.
    An unsampled trace has no spans: as an exemplar its id led nowhere (at 1% sampling, ~99% of them did)."""
    if isinstance(traceparent, bytes):
        traceparent = traceparent.decode("ascii", "replace")
    if not isinstance(traceparent, str) or not sampled(traceparent):
        return None
    tid = traceparent[3:35]
    return None if tid == "0" * 32 else tid


class WorkerMetrics(WorkerHooks):
    """Counts settled messages by verdict outcome into ``outcomes`` and observes the latency an ``Ack`` reports
    into ``latency`` (seconds, with the trace id of the message's ``traceparent`` header as exemplar)."""

    def __init__(
        self, worker: str, outcomes: Counter, latency: Histogram | None = None, known: Iterable[str] = ()
    ) -> None:
        self._counter = outcomes
        self._outcomes = {o: outcomes.labels(o) for o in known}  # pre-bound: present (at 0) from the start
        self._latency = latency
        self._batch = m.BATCH_SECONDS.labels(worker)
        self._store_retries = m.STORE_RETRIES.labels(worker)
        self._forward_failures = m.FORWARD_FAILURES.labels(worker)
        self.worker = worker

    def watch(self, queue_worker: QueueWorker) -> None:
        """Exports the messages ``queue_worker`` holds (read at scrape time)."""
        m.IN_FLIGHT.labels(self.worker).set_function(lambda: queue_worker.in_flight)

    def settled(self, message: QueueMessage, verdict: Verdict) -> None:
        child = self._outcomes.get(verdict.outcome)
        if child is None:
            child = self._outcomes[verdict.outcome] = self._counter.labels(verdict.outcome)
        child.inc()
        if self._latency is not None and isinstance(verdict, Ack) and verdict.latency_ms is not None:
            tid = trace_id(message.headers.get("traceparent"))
            self._latency.observe(verdict.latency_ms / 1000, {"trace_id": tid} if tid else None)

    def batch_done(self, size: int, seconds: float) -> None:
        self._batch.observe(seconds)

    def store_retry(self, error: Unavailable) -> None:
        self._store_retries.inc()

    def forward_failed(self, message: QueueMessage, error: BrokerUnavailable) -> None:
        self._forward_failures.inc()


class DeadLetterMetrics(WorkerHooks):
    """On a dead-letter queue's recorder: counts each recorded dead letter by stream and reason (a copy of one
    already recorded, acked as ``duplicate``, is not counted; nor is a message its recorder no longer holds,
    whose ack is not sent: the broker hands it out again, and it is counted then; counted both times, one death
    was two)."""

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self._reasons = {r: m.DEAD_LETTERS.labels(stream, r) for r in (*DEAD_REASONS, "delivery_limit", "other")}

    def settled(self, message: QueueMessage, verdict: Verdict) -> None:
        if verdict.outcome != "duplicate" and message.held:
            self._reasons[dead_reason(message.headers)].inc()


def dead_reason(headers: Any) -> str:
    """Why a message was dead-lettered: the worker's ``x-dead-reason``, else the broker's (``x-death``)."""
    reason = headers.get("x-dead-reason")
    if isinstance(reason, bytes):
        reason = reason.decode("ascii", "replace")
    if reason in DEAD_REASONS:
        return str(reason)
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        broker = deaths[0].get("reason")
        if broker in ("delivery_limit", b"delivery_limit"):
            return "delivery_limit"
    return "other"


async def poll_depths(worker: QueueWorker, interval: float = DEPTH_INTERVAL_SECONDS) -> None:
    """Sets the ready-message gauges of every queue of ``worker``'s stream every ``interval`` seconds, until
    cancelled. A failed poll (broker down) leaves the last values and is retried at the next interval."""
    topology = worker.topology
    stream = topology.stream
    kinds = dict.fromkeys(topology.work_queues, "work")
    kinds.update(dict.fromkeys((topology.retry_queue(ms) for ms in topology.retry_levels_ms), "retry"))
    kinds[topology.dead_queue] = "dead"
    gauges = {q: m.QUEUE_MESSAGES.labels(stream, q, kind) for q, kind in kinds.items()}
    dead = m.DEAD_LETTER_MESSAGES.labels(stream)
    while True:
        try:
            depths = await worker.depths()
        except Exception as exc:  # the broker may be down: keep the last values, try again later
            log.debug("queue depths unavailable", extra={"error": repr(exc)})
        else:
            for queue, ready in depths.items():
                gauge = gauges.get(queue)
                if gauge is not None:
                    gauge.set(ready)
            if topology.dead_queue in depths:
                dead.set(depths[topology.dead_queue])
        await asyncio.sleep(interval)


class IngestMetrics:
    """Accepted and rejected events by source; sources outside ``sources`` are counted as ``unknown``."""

    def __init__(self, sources: Collection[str], default_source: str | None) -> None:
        self._sources = set(sources)
        self._default = default_source or ""
        self._accepted = {s: m.INGEST_ACCEPTED.labels(s) for s in self._sources}
        self._rejected: dict[tuple[str, str], Any] = {}

    def source(self, name: str) -> str:
        name = name or self._default
        return name if name in self._sources else "unknown"

    def accepted(self, source: str) -> None:
        child = self._accepted.get(source or self._default)
        if child is not None:
            child.inc()

    def rejected(self, source: str, error: BaseException) -> None:
        reason = error.reason if isinstance(error, SwitchboardError) else "INTERNAL"
        key = (self.source(source), reason)
        child = self._rejected.get(key)
        if child is None:
            child = self._rejected[key] = m.INGEST_REJECTED.labels(*key)
        child.inc()


OperationFn = Callable[..., Awaitable[None]]


def timed_operation(name: str, fn: OperationFn, skip: type[BaseException]) -> OperationFn:
    """``fn`` observing its run time into ``switchboard_operation_duration_seconds{operation=name}`` with the
    outcome: ok, skipped (``skip`` raised), failed, or timeout (cancelled by the operation's timeout)."""
    children = {"ok": m.OPERATION_SECONDS.labels(name, "ok")}  # the other outcomes' series appear when they occur

    async def timed(*args: Any) -> None:
        started = time.perf_counter()
        outcome = "failed"
        try:
            await fn(*args)
            outcome = "ok"
        except skip:
            outcome = "skipped"
            raise
        except asyncio.CancelledError:
            outcome = "timeout"
            raise
        finally:
            child = children.get(outcome)
            if child is None:
                child = children[outcome] = m.OPERATION_SECONDS.labels(name, outcome)
            child.observe(time.perf_counter() - started)

    return timed
