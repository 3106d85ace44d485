"""Cassandra adapter: schema, and the event store used by the processor and the Query service.

Tables (every row carries the retention TTL, 30 days by default):

* ``event_claims`` — one row per (source, event_id), inserted with a lightweight transaction (``IF NOT
  EXISTS``): the receipt that wins it is the one applied; every other receipt of that key is a duplicate,
  whichever processor sees it first.
* ``events`` — one row per (source, event_id): the raw event as first accepted and its processing state.
* ``event_records`` — same partition key, clustered by ``rec``: one row per operation run
  (``r:<operation>:<attempt>:<run id>``) and per duplicate delivery (``d:<receipt_id>``). The event row and
  its results are one unlogged batch on one partition key, which Cassandra applies as a single mutation.
* ``events_by_source`` — the listing index, partitioned by (source, time bucket) so that partitions stay
  bounded (``cassandra.bucket_seconds``; one hour by default, minutes at 1 B events/day).
* ``entities`` — the latest known version of each provider entity (the out-of-order guard) and, where the
  ``entity`` operation runs, its latest state. Written with the cell timestamp set to the entity version, so
  the highest version wins whatever order the writes land in.

cassandra-driver exceptions never leave this module: they become ``StoreUnavailable``.
"""

from __future__ import annotations

import asyncio
import calendar
import datetime as dt
import logging
import socket
import time
from collections.abc import Sequence
from typing import Any

from cassandra import ConsistencyLevel, DriverException
from cassandra.cluster import Cluster, NoHostAvailable, ResponseFuture, Session
from cassandra.policies import ExponentialReconnectionPolicy
from cassandra.query import BatchStatement, BatchType, PreparedStatement

from switchboard.config import CassandraConfig
from switchboard.errors import StoreUnavailable
from switchboard.events import (
    Effect,
    Entity,
    EventStatus,
    EventSummary,
    InboundEvent,
    OperationResult,
    Outcome,
    ProcessingState,
    StoredEvent,
)

try:  # libev is 1.4-2.4x faster than the asyncio reactor; the wheel ships it
    from cassandra.io.libevreactor import LibevConnection as _Connection
except ImportError:  # pragma: no cover - platform without the libev extension
    from cassandra.io.asyncorereactor import AsyncoreConnection as _Connection

log = logging.getLogger(__name__)

Cursor = tuple[int, int, str]  # (bucket, received_at in ms, event_id) of the last row returned


def _compaction(release: str) -> str:
    major, minor, *_ = (int(p) for p in [*release.split("-")[0].split("."), "0", "0"][:3])
    if (major, minor) >= (3, 11):
        return (
            "{'class': 'TimeWindowCompactionStrategy', 'compaction_window_unit': 'DAYS', 'compaction_window_size': 1}"
        )
    return "{'class': 'SizeTieredCompactionStrategy'}"


def schema_statements(cfg: CassandraConfig, release: str) -> list[str]:
    ks = cfg.keyspace
    ttl = cfg.ttl_seconds
    compaction = _compaction(release)
    opts = f"default_time_to_live = {ttl} AND gc_grace_seconds = 86400 AND compaction = {compaction}"
    return [
        f"CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = "
        f"{{'class': 'SimpleStrategy', 'replication_factor': {cfg.replication_factor}}}",
        f"""CREATE TABLE IF NOT EXISTS {ks}.events (
            source text, event_id text, event_type text, provider text,
            received_at timestamp, provider_time timestamp, content_type text, body blob,
            headers map<text, text>, receipt_id text, entity_id text, entity_version bigint,
            traceparent text, replay boolean, status text, processed_at timestamp, attempts int,
            last_error text,
            PRIMARY KEY ((source, event_id))
        ) WITH {opts}""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.event_records (
            source text, event_id text, rec text, operation text, outcome text, attempt int,
            duration_us bigint, finished_at timestamp, error text, receipt_id text, received_at timestamp,
            PRIMARY KEY ((source, event_id), rec)
        ) WITH {opts}""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.event_claims (
            source text, event_id text, receipt_id text, claimed_at timestamp,
            PRIMARY KEY ((source, event_id))
        ) WITH {opts}""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.entities (
            source text, entity_id text, version bigint, event_id text, event_type text, updated_at timestamp,
            content_type text, state blob, state_event_id text,
            PRIMARY KEY ((source, entity_id))
        ) WITH {opts}""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.events_by_source (
            source text, bucket bigint, received_at timestamp, event_id text, event_type text,
            status text, receipt_id text,
            PRIMARY KEY ((source, bucket), received_at, event_id)
        ) WITH CLUSTERING ORDER BY (received_at ASC, event_id ASC) AND {opts}""",
    ]


def _ms(us: int) -> int:
    return us // 1000


def _dt_us(value: Any) -> int:
    """Driver datetimes (naive UTC) to microseconds."""
    if value is None:
        return 0
    return int(calendar.timegm(value.utctimetuple())) * 1_000_000 + int(value.microsecond)


def _ts(us: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(us / 1_000_000, tz=dt.UTC)


class CassandraStore:
    def __init__(self, cfg: CassandraConfig, cluster: Cluster, session: Session) -> None:
        self.cfg = cfg
        self.cluster = cluster
        self.session = session
        self.ttl = cfg.ttl_seconds
        self.bucket_us = cfg.bucket_seconds * 1_000_000
        self._prepared: dict[str, PreparedStatement] = {}

    # -- connection -------------------------------------------------------------------------------------
    @classmethod
    def connect(cls, cfg: CassandraConfig, *, wait_seconds: float = 300.0) -> CassandraStore:
        """Connect, waiting (with a log line per attempt) until Cassandra answers or ``wait_seconds`` pass."""
        deadline = time.monotonic() + wait_seconds
        attempt = 0
        while True:
            attempt += 1
            kwargs: dict[str, Any] = {}
            if cfg.protocol_version:
                kwargs["protocol_version"] = cfg.protocol_version
            cluster = Cluster(
                contact_points=list(cfg.hosts),
                port=cfg.port,
                connection_class=_Connection,
                sockopts=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
                reconnection_policy=ExponentialReconnectionPolicy(0.5, 10.0),
                connect_timeout=5,
                control_connection_timeout=5,
                idle_heartbeat_interval=10,
                **kwargs,
            )
            try:
                session = cluster.connect()
                log.info(
                    "connected to Cassandra",
                    extra={"hosts": list(cfg.hosts), "port": cfg.port, "attempt": attempt},
                )
                return cls(cfg, cluster, session)
            except (NoHostAvailable, DriverException, OSError) as exc:
                cluster.shutdown()
                if time.monotonic() > deadline:
                    raise StoreUnavailable(f"Cassandra at {cfg.hosts}:{cfg.port} not reachable: {exc}") from None
                log.warning(
                    "waiting for Cassandra",
                    extra={
                        "hosts": list(cfg.hosts),
                        "port": cfg.port,
                        "attempt": attempt,
                        "error": str(exc)[:300],
                    },
                )
                time.sleep(min(0.5 * attempt, 5.0))

    def ensure_schema(self) -> None:
        release = self.session.execute("SELECT release_version FROM system.local").one()[0]
        for stmt in schema_statements(self.cfg, release):
            self.session.execute(stmt, timeout=60)
        log.info("schema ready", extra={"keyspace": self.cfg.keyspace, "cassandra": release})

    def prepare(self, *, wait_seconds: float = 120.0) -> None:
        """Prepare every statement; waits until the schema exists (another process may be creating it)."""
        ks = self.cfg.keyspace
        cql = {
            "claim": f"""INSERT INTO {ks}.event_claims (source, event_id, receipt_id, claimed_at)
                VALUES (?, ?, ?, ?) IF NOT EXISTS USING TTL ?""",
            "state_event": f"SELECT status, attempts FROM {ks}.events WHERE source = ? AND event_id = ?",
            "state_records": f"""SELECT rec, operation, outcome FROM {ks}.event_records
                WHERE source = ? AND event_id = ?""",
            "entity_version": f"SELECT version FROM {ks}.entities WHERE source = ? AND entity_id = ?",
            "get_entity": f"SELECT * FROM {ks}.entities WHERE source = ? AND entity_id = ?",
            "mark_entity": f"""UPDATE {ks}.entities USING TIMESTAMP ? AND TTL ?
                SET version = ?, event_id = ?, event_type = ?, updated_at = ? WHERE source = ? AND entity_id = ?""",
            "snapshot_entity": f"""UPDATE {ks}.entities USING TIMESTAMP ? AND TTL ?
                SET content_type = ?, state = ?, state_event_id = ? WHERE source = ? AND entity_id = ?""",
            "insert_event": f"""INSERT INTO {ks}.events (source, event_id, event_type, provider,
                received_at, provider_time, content_type, body, headers, receipt_id, entity_id,
                entity_version, traceparent, replay, status, processed_at, attempts, last_error)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?""",
            "insert_result": f"""INSERT INTO {ks}.event_records (source, event_id, rec, operation, outcome,
                attempt, duration_us, finished_at, error, receipt_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                USING TTL ?""",
            "insert_duplicate": f"""INSERT INTO {ks}.event_records (source, event_id, rec, receipt_id,
                received_at) VALUES (?, ?, ?, ?, ?) USING TTL ?""",
            "insert_index": f"""INSERT INTO {ks}.events_by_source (source, bucket, received_at, event_id,
                event_type, status, receipt_id) VALUES (?, ?, ?, ?, ?, ?, ?) USING TTL ?""",
            "get_event": f"SELECT * FROM {ks}.events WHERE source = ? AND event_id = ?",
            "get_records": f"SELECT * FROM {ks}.event_records WHERE source = ? AND event_id = ?",
            "list_range": f"""SELECT received_at, event_id, event_type, status, receipt_id
                FROM {ks}.events_by_source
                WHERE source = ? AND bucket = ? AND received_at >= ? AND received_at < ? LIMIT ?""",
            "list_after": f"""SELECT received_at, event_id, event_type, status, receipt_id
                FROM {ks}.events_by_source
                WHERE source = ? AND bucket = ? AND (received_at, event_id) > (?, ?) LIMIT ?""",
        }
        level = getattr(ConsistencyLevel, self.cfg.consistency)
        serial = getattr(ConsistencyLevel, self.cfg.serial_consistency)
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                for name, text in cql.items():
                    stmt = self.session.prepare(text)
                    stmt.consistency_level = level
                    if name == "claim":
                        stmt.serial_consistency_level = serial
                    self._prepared[name] = stmt
                return
            except (NoHostAvailable, DriverException) as exc:
                if time.monotonic() > deadline:
                    raise StoreUnavailable(f"cannot prepare statements: {exc}") from None
                log.warning("waiting for the schema", extra={"error": str(exc)[:200]})
                time.sleep(1.0)

    def close(self) -> None:
        self.cluster.shutdown()

    # -- async bridge -----------------------------------------------------------------------------------
    async def _run(self, statement: Any, params: Sequence[Any] | None = None) -> list[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[Any]] = loop.create_future()

        def ok(rows: Any) -> None:
            loop.call_soon_threadsafe(_resolve, fut, list(rows) if rows is not None else [], None)

        def fail(exc: BaseException) -> None:
            loop.call_soon_threadsafe(_resolve, fut, None, exc)

        try:
            rf: ResponseFuture = self.session.execute_async(statement, params, timeout=10.0)
        except (NoHostAvailable, DriverException, OSError, RuntimeError) as exc:
            raise StoreUnavailable(f"Cassandra: {type(exc).__name__}: {exc}"[:300]) from None
        rf.add_callbacks(ok, fail)
        try:
            return await fut
        except (NoHostAvailable, DriverException, OSError) as exc:
            raise StoreUnavailable(f"Cassandra: {type(exc).__name__}: {exc}"[:300]) from None

    # -- writes -----------------------------------------------------------------------------------------
    def bucket_of(self, received_us: int) -> int:
        return received_us // self.bucket_us

    async def claim(self, source: str, event_id: str, receipt_id: str, now_us: int) -> tuple[bool, str]:
        """Claims (source, event_id) for ``receipt_id`` with a lightweight transaction. Returns (won, the
        receipt holding the claim): only one receipt ever holds it, however many processors race."""
        rows = await self._run(self._prepared["claim"], (source, event_id, receipt_id, _ts(now_us), self.ttl))
        row = rows[0]
        if row[0]:  # [applied]
            return True, receipt_id
        return False, str(row.receipt_id)

    async def processing_state(self, source: str, event_id: str) -> ProcessingState:
        rows, records = await asyncio.gather(
            self._run(self._prepared["state_event"], (source, event_id)),
            self._run(self._prepared["state_records"], (source, event_id)),
        )
        status = EventStatus(rows[0].status) if rows and rows[0].status else None
        attempts = int(rows[0].attempts or 0) if rows else 0
        done = frozenset(
            r.operation
            for r in records
            if r.rec.startswith("r:") and r.outcome in (Outcome.OK.value, Outcome.SKIPPED.value)
        )
        return ProcessingState(status, attempts, done)

    async def entity_version(self, source: str, entity_id: str) -> int | None:
        rows = await self._run(self._prepared["entity_version"], (source, entity_id))
        return int(rows[0].version) if rows and rows[0].version is not None else None

    async def get_entity(self, source: str, entity_id: str) -> Entity | None:
        rows = await self._run(self._prepared["get_entity"], (source, entity_id))
        if not rows or rows[0].version is None:
            return None
        r = rows[0]
        return Entity(
            source=r.source,
            entity_id=r.entity_id,
            version=int(r.version),
            event_id=r.event_id or "",
            event_type=r.event_type or "",
            updated_us=_dt_us(r.updated_at),
            content_type=r.content_type or "",
            state=r.state or b"",
            state_event_id=r.state_event_id or "",
        )

    async def commit(self, stored: StoredEvent, effects: Sequence[Effect] = (), *, mark_entity: bool = False) -> None:
        """Writes one processing pass. The effects (and the entity's version mark) land first, then the event
        row with its operation results and the index row: a crash in between leaves effects without the
        results that say they were applied, so the operations run again and rewrite the same values. Every
        write is idempotent, so a redelivered message may commit again."""
        e = stored.event
        p = self._prepared
        if effects or mark_entity:
            batch = BatchStatement(batch_type=BatchType.UNLOGGED, consistency_level=p["mark_entity"].consistency_level)
            if mark_entity:
                batch.add(
                    p["mark_entity"],
                    (
                        e.entity_version,
                        self.ttl,
                        e.entity_version,
                        e.event_id,
                        e.event_type,
                        _ts(e.entity_version),
                        e.source,
                        e.entity_id,
                    ),
                )
            for fx in effects:
                batch.add(
                    p["snapshot_entity"],
                    (fx.version, self.ttl, fx.content_type, fx.body, fx.event_id, fx.source, fx.entity_id),
                )
            await self._run(batch)
        batch = BatchStatement(batch_type=BatchType.UNLOGGED, consistency_level=p["insert_event"].consistency_level)
        batch.add(
            p["insert_event"],
            (
                e.source,
                e.event_id,
                e.event_type,
                e.provider,
                _ts(e.received_us),
                _ts(e.provider_time_us) if e.provider_time_us else None,
                e.content_type,
                e.body,
                e.headers,
                e.receipt_id,
                e.entity_id,
                e.entity_version,
                e.traceparent,
                e.replay,
                stored.status.value,
                _ts(stored.processed_us) if stored.processed_us else None,
                stored.attempts,
                stored.last_error,
                self.ttl,
            ),
        )
        for r in stored.results:
            batch.add(
                p["insert_result"],
                (
                    e.source,
                    e.event_id,
                    f"r:{r.operation}:{r.attempt:04d}:{r.run_id}",
                    r.operation,
                    r.outcome.value,
                    r.attempt,
                    r.duration_us,
                    _ts(r.finished_us),
                    r.error,
                    e.receipt_id,
                    self.ttl,
                ),
            )
        await asyncio.gather(self._run(batch), self.write_index(e, stored.status))

    async def write_index(self, e: InboundEvent, status: EventStatus) -> None:
        """The listing row of ``e`` (rewritten with the status of every pass; idempotent)."""
        index = (
            e.source,
            self.bucket_of(e.received_us),
            _ts(e.received_us),
            e.event_id,
            e.event_type,
            status.value,
            e.receipt_id,
            self.ttl,
        )
        await self._run(self._prepared["insert_index"], index)

    async def save_duplicate(self, e: InboundEvent) -> None:
        await self._run(
            self._prepared["insert_duplicate"],
            (e.source, e.event_id, f"d:{e.receipt_id}", e.receipt_id, _ts(e.received_us), self.ttl),
        )

    # -- reads ------------------------------------------------------------------------------------------
    async def get(self, source: str, event_id: str) -> StoredEvent | None:
        rows, records = await asyncio.gather(
            self._run(self._prepared["get_event"], (source, event_id)),
            self._run(self._prepared["get_records"], (source, event_id)),
        )
        if not rows:
            return None
        r = rows[0]
        event = InboundEvent(
            source=r.source,
            event_id=r.event_id,
            event_type=r.event_type or "",
            provider=r.provider or "",
            received_us=_dt_us(r.received_at),
            body=r.body or b"",
            content_type=r.content_type or "",
            headers=dict(r.headers or {}),
            receipt_id=r.receipt_id or "",
            provider_time_us=_dt_us(r.provider_time),
            entity_id=r.entity_id or "",
            entity_version=r.entity_version or 0,
            traceparent=r.traceparent or "",
            replay=bool(r.replay),
        )
        results = [
            OperationResult(
                operation=x.operation,
                outcome=Outcome(x.outcome),
                attempt=x.attempt or 0,
                duration_us=x.duration_us or 0,
                finished_us=_dt_us(x.finished_at),
                error=x.error or "",
                run_id=x.rec.rsplit(":", 1)[-1],
            )
            for x in records
            if x.rec.startswith("r:")
        ]
        results.sort(key=lambda x: (x.finished_us, x.operation))
        duplicates = sum(1 for x in records if x.rec.startswith("d:"))
        return StoredEvent(
            event=event,
            status=EventStatus(r.status),
            results=results,
            processed_us=_dt_us(r.processed_at),
            attempts=r.attempts or 0,
            last_error=r.last_error or "",
            duplicates=duplicates,
        )

    async def list(
        self, source: str, start_us: int, end_us: int, limit: int, after: Cursor | None
    ) -> tuple[list[EventSummary], Cursor | None]:
        """Events of ``source`` with start <= received_at < end, oldest first, at most ``limit``; returns
        them and the cursor to continue from (None when the range is exhausted)."""
        out: list[EventSummary] = []
        bucket = after[0] if after else self.bucket_of(start_us)
        last_bucket = self.bucket_of(max(end_us - 1, start_us))
        end_ms = _ms(end_us)
        while bucket <= last_bucket and len(out) < limit:
            want = limit - len(out)
            if after is not None and after[0] == bucket:
                params: tuple[Any, ...] = (source, bucket, _ts(after[1] * 1000), after[2], want)
                rows = await self._run(self._prepared["list_after"], params)
            else:
                rows = await self._run(self._prepared["list_range"], (source, bucket, _ts(start_us), _ts(end_us), want))
            for row in rows:
                t_us = _dt_us(row.received_at)
                if t_us // 1000 >= end_ms:  # only possible after a cursor: the range is exhausted
                    return out, None
                status = EventStatus(row.status)
                out.append(EventSummary(source, row.event_id, row.event_type or "", t_us, status, row.receipt_id or ""))
            if len(rows) < want:
                bucket += 1
                after = None
            else:
                after = (bucket, out[-1].received_us // 1000, out[-1].event_id)
        if len(out) >= limit:
            last = out[-1]
            return out, (self.bucket_of(last.received_us), last.received_us // 1000, last.event_id)
        return out, None


def _resolve(fut: asyncio.Future[list[Any]], value: list[Any] | None, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        assert value is not None
        fut.set_result(value)
