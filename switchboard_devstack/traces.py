"""The local trace receiver: an OTLP/gRPC ``TraceService`` that keeps recent spans in SQLite, and the reader
``switchboard trace`` prints a trace with.

``python -m switchboard_devstack.traces --config FILE`` listens on ``127.0.0.1:[tracing] local_port`` (health
checked like every service) and writes each ``Export`` call's spans, in one transaction, to
``<data_dir>/traces/spans.db`` (table ``spans``, key ``(trace_id, span_id)``: a span exported twice is
stored once). The call is answered only after the commit (WAL, ``synchronous=NORMAL``: a committed span
survives a kill of this process; an answered span may be lost only with the machine). Spans older than
``[tracing] keep_hours`` are deleted, at most once a minute, and the table is capped at ``MAX_SPANS`` (oldest
first). A span with a malformed id is skipped and reported back (OTLP ``partial_success``), the rest of the
call is stored. A development tool: one process, one SQLite file; production exports to a real collector.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2

from switchboard.config import PlatformConfig
from switchboard.rpc.server import GrpcServer, Service
from switchboard.runtime.service import serve, service_main

log = logging.getLogger(__name__)

SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
MAX_SPANS = 1_000_000
PRUNE_EVERY_SECONDS = 60.0
ERROR = 2  # OTLP Status.STATUS_CODE_ERROR
_SCHEMA = """
CREATE TABLE IF NOT EXISTS spans (
    trace_id TEXT NOT NULL, span_id TEXT NOT NULL, parent_span_id TEXT NOT NULL, name TEXT NOT NULL,
    service TEXT NOT NULL, kind INTEGER NOT NULL, start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL,
    status_code INTEGER NOT NULL, status_message TEXT NOT NULL, attributes TEXT NOT NULL, events TEXT NOT NULL,
    received_at REAL NOT NULL, PRIMARY KEY (trace_id, span_id));
CREATE INDEX IF NOT EXISTS spans_received_at ON spans (received_at);
"""
_INSERT = "INSERT OR REPLACE INTO spans VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"


@dataclass(frozen=True)
class SpanRecord:
    trace_id: str
    span_id: str
    parent_span_id: str  # "" for a root
    name: str
    service: str
    kind: int  # OTLP SpanKind: 1 internal, 2 server, 3 client, 4 producer, 5 consumer
    start_ns: int
    end_ns: int
    status_code: int  # 0 unset, 1 ok, 2 error
    status_message: str
    attributes: dict[str, Any]
    events: list[dict[str, Any]]

    @property
    def duration_ms(self) -> float:
        return max(0, self.end_ns - self.start_ns) / 1e6


# -- storing -------------------------------------------------------------------------------------------------
def _value(v: common_pb2.AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind) if kind else None


def _attributes(kvs: Iterable[common_pb2.KeyValue]) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


def rows(request: trace_service_pb2.ExportTraceServiceRequest, now: float) -> tuple[list[tuple[Any, ...]], int]:
    """The rows to store for an export request, and how many spans were rejected (malformed ids)."""
    out: list[tuple[Any, ...]] = []
    rejected = 0
    for rs in request.resource_spans:
        service = str(_attributes(rs.resource.attributes).get("service.name") or "")
        for ss in rs.scope_spans:
            for s in ss.spans:
                if len(s.trace_id) != 16 or len(s.span_id) != 8 or len(s.parent_span_id) not in (0, 8):
                    rejected += 1
                    continue
                events = [
                    {"name": e.name, "time_ns": e.time_unix_nano, "attributes": _attributes(e.attributes)}
                    for e in s.events
                ]
                out.append(
                    (
                        s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(), s.name, service, int(s.kind),
                        int(s.start_time_unix_nano), int(s.end_time_unix_nano), int(s.status.code),
                        s.status.message, json.dumps(_attributes(s.attributes)), json.dumps(events), now,
                    )
                )  # fmt: skip
    return out, rejected


class SpanStore:
    """The SQLite file, written from one thread at a time (calls are serialized by a lock)."""

    def __init__(self, path: Path, *, keep_hours: float, max_spans: int = MAX_SPANS) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.keep_seconds = keep_hours * 3600
        self.max_spans = max_spans
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._pruned = 0.0

    def write(self, batch: list[tuple[Any, ...]], now: float) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(_INSERT, batch)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            if now - self._pruned >= PRUNE_EVERY_SECONDS:
                self._pruned = now
                self._prune(now)

    def _prune(self, now: float) -> None:
        self._db.execute("DELETE FROM spans WHERE received_at < ?", (now - self.keep_seconds,))
        (count,) = self._db.execute("SELECT count(*) FROM spans").fetchone()
        if count > self.max_spans:
            self._db.execute(
                "DELETE FROM spans WHERE rowid IN (SELECT rowid FROM spans ORDER BY received_at LIMIT ?)",
                (count - self.max_spans,),
            )

    def prune(self, now: float) -> None:
        with self._lock:
            self._prune(now)

    def close(self) -> None:
        with self._lock:
            self._db.close()


class TraceReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, store: SpanStore) -> None:
        self.store = store

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        now = time.time()
        batch, rejected = rows(request, now)
        if batch:
            await asyncio.to_thread(self.store.write, batch, now)
        reply = trace_service_pb2.ExportTraceServiceResponse()
        if rejected:
            log.warning("spans with malformed ids skipped", extra={"rejected": rejected, "stored": len(batch)})
            reply.partial_success.rejected_spans = rejected
            reply.partial_success.error_message = "trace_id must be 16 bytes, span ids 8 bytes"
        return reply


async def run(cfg: PlatformConfig, _args: argparse.Namespace) -> None:
    store = SpanStore(cfg.traces_db, keep_hours=cfg.tracing.keep_hours)
    async with serve() as life:
        life.push(store.close)
        service = Service(SERVICE, trace_service_pb2_grpc.add_TraceServiceServicer_to_server, TraceReceiver(store))
        await life.enter(GrpcServer("127.0.0.1", cfg.tracing.local_port, [service], grace_seconds=2.0))
        log.info("trace receiver ready", extra={"port": cfg.tracing.local_port, "db": str(cfg.traces_db)})
        await life.until_stopped()


# -- reading -------------------------------------------------------------------------------------------------
def read_trace(db: Path, trace_id: str) -> list[SpanRecord]:
    """The spans of a trace, by start time; [] when the file or the trace does not exist."""
    if not db.exists():
        return []
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        found = conn.execute(
            "SELECT trace_id, span_id, parent_span_id, name, service, kind, start_ns, end_ns, status_code,"
            " status_message, attributes, events FROM spans WHERE trace_id = ? ORDER BY start_ns, span_id",
            (trace_id.lower(),),
        ).fetchall()
    return [
        SpanRecord(
            trace_id=r[0],
            span_id=r[1],
            parent_span_id=r[2],
            name=r[3],
            service=r[4],
            kind=r[5],
            start_ns=r[6],
            end_ns=r[7],
            status_code=r[8],
            status_message=r[9],
            attributes=json.loads(r[10]),
            events=json.loads(r[11]),
        )
        for r in found
    ]


SHOWN = (
    "http.response.status_code",
    "switchboard.attempt",
    "switchboard.disposition",
    "switchboard.outcome",
    "messaging.batch.message_count",
)


def render_tree(spans: list[SpanRecord]) -> list[str]:
    """A header line, then one line per span (start offset and duration in ms, then the span indented under
    its parent). A span whose parent is not in the trace (not exported yet, or lost) is shown as a root and
    says so."""
    if not spans:
        return []
    ids = {s.span_id for s in spans}
    kids: dict[str, list[SpanRecord]] = {}
    roots: list[SpanRecord] = []
    for s in spans:
        if s.parent_span_id and s.parent_span_id in ids:
            kids.setdefault(s.parent_span_id, []).append(s)
        else:
            roots.append(s)
    t0 = min(s.start_ns for s in spans)
    total = (max(s.end_ns for s in spans) - t0) / 1e6
    services = ", ".join(sorted({s.service for s in spans}))
    lines = [f"trace {spans[0].trace_id}: {len(spans)} spans, {total:.1f} ms, services: {services}"]

    def walk(s: SpanRecord, depth: int) -> Iterator[str]:
        extra = "".join(f" {k}={s.attributes[k]}" for k in SHOWN if k in s.attributes)
        if s.status_code == ERROR:
            extra += f" [ERROR: {s.status_message}]"
        if s.parent_span_id and s.parent_span_id not in ids:
            extra += f" (parent {s.parent_span_id} not received)"
        offset = (s.start_ns - t0) / 1e6
        yield f"{offset:9.1f} {s.duration_ms:8.1f}  {'  ' * depth}{s.service}: {s.name}{extra}"
        for child in sorted(kids.get(s.span_id, []), key=lambda c: (c.start_ns, c.span_id)):
            yield from walk(child, depth + 1)

    for root in roots:
        lines.extend(walk(root, 0))
    return lines


def main(argv: list[str] | None = None) -> int:
    return service_main("trace-receiver", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
