"""The metric families every Switchboard process may export, and the HTTP endpoint that serves them.

Names follow Prometheus's conventions (base units: seconds; counters end in ``_total``). The gRPC families use
the names of go-grpc-prometheus, so the usual dashboards and queries apply. A process exports only the
families it touches (plus prometheus_client's ``process_*`` and ``python_*``); ``_created`` series are off.

This module imports nothing of Switchboard: ``switchboard.store`` and ``switchboard.queue`` time their calls
with it (``statement_timer``, ``confirm_timer``) without an import cycle.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics, start_http_server

__all__ = [
    "BATCH_SECONDS",
    "BROKER_CONFIRM_SECONDS",
    "BROKER_PUBLISH_FAILURES",
    "BUSY_HOSTS",
    "DEAD_LETTERS",
    "DEAD_LETTER_MESSAGES",
    "DELIVERIES",
    "DELIVERY_LATENCY",
    "DELIVERY_SENDING",
    "DELIVERY_WAITING",
    "E2E_LATENCY",
    "FORWARD_FAILURES",
    "INGEST_ACCEPTED",
    "INGEST_REJECTED",
    "IN_FLIGHT",
    "OPEN_CIRCUITS",
    "OPERATION_SECONDS",
    "PROCESSOR_EVENTS",
    "QUEUE_MESSAGES",
    "RPC_HANDLED",
    "RPC_SECONDS",
    "SLOT_WAITS",
    "STORE_RETRIES",
    "STORE_SECONDS",
    "confirm_timer",
    "name_statements",
    "serve_metrics",
    "statement_timer",
]

disable_created_metrics()  # type: ignore[no-untyped-call]  # before any family is created: its children read the flag when they are made

# Bucket upper bounds, in seconds.
FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
RPC = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# 0.2 is a bound on purpose: the end-to-end p99 alert compares with 200 ms.
E2E = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
DELIVERY = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 7200.0, 86400.0)

# -- gRPC (switchboard.observability.rpc) ---------------------------------------------------------------------
RPC_HANDLED = Counter(
    "grpc_server_handled",
    "RPCs completed on the server, by method and gRPC status code.",
    ["grpc_service", "grpc_method", "grpc_code"],
)
RPC_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time from the start of an RPC to its status, by method.",
    ["grpc_service", "grpc_method"],
    buckets=RPC,
)

# -- ingest ---------------------------------------------------------------------------------------------------
INGEST_ACCEPTED = Counter("switchboard_ingest_accepted", "Events verified and durably queued, by source.", ["source"])
INGEST_REJECTED = Counter(
    "switchboard_ingest_rejected",
    "Requests refused, by source (unknown: not a configured source) and error reason (e.g. SIGNATURE_MISMATCH).",
    ["source", "reason"],
)

# -- queue workers (processor, delivery, dead-letter recorders) ------------------------------------------------
PROCESSOR_EVENTS = Counter(
    "switchboard_processor_events",
    "Receipts settled by the processors, by outcome: processed, duplicate, stale, redelivered, retried, behind "
    "(a copy behind its stored attempts, sent back to wait), failed "
    "(dead-lettered after the last attempt), undecodable, abandoned (its channel closed before the commit: "
    "nothing committed, left to the next consumer), crashed (its handling raised: retried, then dead-lettered).",
    ["outcome"],
)
E2E_LATENCY = Histogram(
    "switchboard_processor_e2e_latency_seconds",
    "Arrival at ingest to outcome committed, for an event's first pass (not retries, replays or redrives), "
    "processed or stale (exemplar: the trace id when sampled).",
    buckets=E2E,
)
OPERATION_SECONDS = Histogram(
    "switchboard_operation_duration_seconds",
    "Run time of each operation, by operation and outcome (ok, skipped, failed, timeout).",
    ["operation", "outcome"],
    buckets=FAST,
)
DELIVERIES = Counter(
    "switchboard_delivery_deliveries",
    "Delivery tasks settled by the delivery workers, by outcome: delivered, retried, deferred (circuit open or "
    "in-flight limit), failed, disabled, cancelled, already_final, undecodable, abandoned (its channel closed "
    "while it waited: not sent, left to the next worker).",
    ["outcome"],
)
OPEN_CIRCUITS = Gauge(
    "switchboard_delivery_open_circuits",
    "Subscriptions whose circuit breaker is open or half-open in this delivery worker (their sends held back).",
)
DELIVERY_SENDING = Gauge(
    "switchboard_delivery_sending",
    "Requests a delivery worker has out to endpoints (sending, or waiting for their rate-limit token).",
)
DELIVERY_WAITING = Gauge(
    "switchboard_delivery_waiting_for_slot",
    "Tasks a delivery worker holds for their subscription's next in-flight slot, due within delivery.slot_wait_ms "
    "at the pace its requests end (instead of deferring them through a delay queue).",
)
SLOT_WAITS = Counter(
    "switchboard_delivery_slot_waits",
    "Tasks that waited in a delivery worker for their subscription's next in-flight slot, by outcome: taken (they "
    "got it) or deferred (the wait ran out, or the host's rules refused it).",
    ["outcome"],
)
BUSY_HOSTS = Gauge(
    "switchboard_delivery_busy_hosts",
    "Hosts whose connections for subscriptions with many requests out are all taken in this delivery worker "
    "(those subscriptions' next tasks are deferred; the host's reserve is left for the others).",
)
DELIVERY_LATENCY = Histogram(
    "switchboard_delivery_latency_seconds",
    "Arrival of the event at ingest to its delivery accepted by the endpoint, for a delivery sent fresh (not "
    "retried, deferred, redriven or replayed; exemplar: the trace id when sampled).",
    buckets=DELIVERY,
)
DEAD_LETTERS = Counter(
    "switchboard_dead_letters",
    "Dead letters recorded in the store by the control service, by stream and reason (failed, undecodable, "
    "disabled; delivery_limit and other when the broker dead-lettered the message itself).",
    ["stream", "reason"],
)
BATCH_SECONDS = Histogram(
    "switchboard_worker_batch_seconds", "Time a handler took to decide a batch, by worker.", ["worker"], buckets=FAST
)
STORE_RETRIES = Counter(
    "switchboard_worker_store_retries", "Batches retried because the store was unavailable, by worker.", ["worker"]
)
FORWARD_FAILURES = Counter(
    "switchboard_worker_forward_failures",
    "Retry or dead-letter copies the broker did not confirm (the message went back to its queue), by worker.",
    ["worker"],
)
IN_FLIGHT = Gauge(
    "switchboard_worker_in_flight", "Messages a worker holds (started or waiting to be), by worker.", ["worker"]
)
QUEUE_MESSAGES = Gauge(
    "switchboard_queue_ready_messages",
    "Messages ready in each queue of a stream, by stream, queue and kind (work, retry, dead); polled every few "
    "seconds by each consumer of the stream.",
    ["stream", "queue", "kind"],
)
DEAD_LETTER_MESSAGES = Gauge(
    "switchboard_dead_letter_messages",
    "Messages waiting in a stream's dead-letter queue (the control service records and removes them).",
    ["stream"],
)

# -- drivers --------------------------------------------------------------------------------------------------
STORE_SECONDS = Histogram(
    "switchboard_store_statement_seconds",
    "Cassandra round trip per statement (name of the prepared statement, batch, or other), as awaited.",
    ["statement"],
    buckets=FAST,
)
BROKER_CONFIRM_SECONDS = Histogram(
    "switchboard_broker_confirm_seconds",
    "Publish to the broker's confirm, by exchange.",
    ["exchange"],
    buckets=FAST,
)
BROKER_PUBLISH_FAILURES = Counter(
    "switchboard_broker_publish_failures",
    "Publishes not confirmed (timeout, refusal, connection lost) or not sent (not connected, broker blocking), "
    "by exchange.",
    ["exchange"],
)

# By id() of the prepared statement, which its name's entry keeps alive: a freed statement's id could otherwise
# be reused by another object (a batch, a later session's statement) and give it the wrong label.
_statement_names: dict[int, tuple[Any, str]] = {}
_statement_children: dict[int, Any] = {}  # of named statements only (kept alive by their names' entries)
_other_statements: dict[str, Any] = {}
_confirm_children: dict[str, Any] = {}


def name_statements(statements: Any) -> None:
    """Names the prepared statements of a ``switchboard.store.statements.Statements`` (groups of named
    statements) ``<group>.<name>``, e.g. ``events.priors``, for the ``statement`` label. A statement's series
    appear when it first runs (a process runs a few of the ~50)."""
    for group in dataclasses.fields(statements):
        named = getattr(statements, group.name)
        for f in dataclasses.fields(named):
            statement = getattr(named, f.name)
            _statement_names[id(statement)] = (statement, f"{group.name}.{f.name}")


def statement_timer(statement: Any) -> Any:
    """The bound histogram child for ``statement`` (a named prepared statement, else ``batch`` or ``other``)."""
    child = _statement_children.get(id(statement))
    if child is not None:
        return child
    named = _statement_names.get(id(statement))
    if named is not None and named[0] is statement:
        child = _statement_children[id(statement)] = STORE_SECONDS.labels(named[1])
        return child
    kind = "batch" if type(statement).__name__ == "BatchStatement" else "other"
    child = _other_statements.get(kind)
    if child is None:
        child = _other_statements[kind] = STORE_SECONDS.labels(kind)
    return child


def confirm_timer(exchange: str) -> Any:
    """The bound confirm-latency child of ``exchange``."""
    child = _confirm_children.get(exchange)
    if child is None:
        child = _confirm_children[exchange] = BROKER_CONFIRM_SECONDS.labels(exchange or "default")
    return child


def serve_metrics(host: str, port: int) -> tuple[Any, int]:
    """Serves ``GET /metrics`` (text or OpenMetrics, with exemplars, as the scraper asks) on ``host:port`` from a
    daemon thread; returns the server (``shutdown()``/``server_close()``) and the port it bound (``port`` 0:
    any free one). ``OSError`` if the port is taken."""
    server, _thread = start_http_server(port, addr=host)
    return server, int(server.server_port)
