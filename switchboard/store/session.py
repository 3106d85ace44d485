"""The Cassandra session: connecting (and waiting for the store), preparing statements, and the bridge
from the driver's callback threads to asyncio.

cassandra-driver exceptions never leave this package: ``execute`` translates them into
``StoreUnavailable``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from cassandra import DriverException
from cassandra import InvalidRequest as CassandraInvalidRequest
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable, ResponseFuture, Session
from cassandra.policies import DCAwareRoundRobinPolicy, ExponentialReconnectionPolicy, TokenAwarePolicy
from cassandra.protocol import ErrorMessage
from cassandra.query import named_tuple_factory

from switchboard.backoff import Backoff
from switchboard.config import CassandraConfig
from switchboard.errors import ConfigError, InvalidRequest, StoreUnavailable
from switchboard.observability.metrics import name_statements, statement_timer
from switchboard.store.schema import ensure_schema, replication
from switchboard.store.statements import Statements

try:  # libev is 1.4-2.4x faster than the asyncio reactor; the wheel ships it
    from cassandra.io.libevreactor import LibevConnection as _Connection
except ImportError:  # pragma: no cover - platform without the libev extension
    from cassandra.io.asyncorereactor import AsyncoreConnection as _Connection

log = logging.getLogger(__name__)

__all__ = ["StoreSession", "open_store"]

_DRIVER_ERRORS = (NoHostAvailable, DriverException, OSError)
CONNECT_BACKOFF = Backoff(0.5, 5.0)
PREPARE_BACKOFF = Backoff(1.0, 1.0)
REQUEST_TIMEOUT_SECONDS = 10.0


def _cluster(cfg: CassandraConfig) -> Cluster:
    kwargs: dict[str, Any] = {}
    if cfg.protocol_version:
        kwargs["protocol_version"] = cfg.protocol_version
    return Cluster(
        contact_points=list(cfg.hosts),
        port=cfg.port,
        connection_class=_Connection,
        # Without TCP_NODELAY every synchronous 5 KB write waits ~40 ms for delayed ACKs.
        sockopts=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        execution_profiles={
            EXEC_PROFILE_DEFAULT: ExecutionProfile(
                load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy()),
                request_timeout=REQUEST_TIMEOUT_SECONDS,
                row_factory=rows_of,
            )
        },
        reconnection_policy=ExponentialReconnectionPolicy(0.5, 10.0),
        connect_timeout=5,
        control_connection_timeout=5,
        idle_heartbeat_interval=10,
        **kwargs,
    )


def rows_of(colnames: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[Any]:
    """The rows of a result as named tuples, like the driver's ``named_tuple_factory``, which builds a new
    namedtuple class for every result (~180 µs each on this machine: about as much as the rest of a processor
    batch's read). The class is built once per column list (one per prepared statement)."""
    row = _row_type(tuple(colnames))
    return [row(*r) for r in rows]


@functools.lru_cache(maxsize=512)
def _row_type(colnames: tuple[str, ...]) -> Callable[..., Any]:
    """The driver's own row class for these columns (its names cleaned and sanitised the driver's way)."""
    return type(named_tuple_factory(list(colnames), [(None,) * len(colnames)])[0])


class StoreSession:
    """One connected session with every statement prepared. Built once per process in ``main``."""

    def __init__(self, cfg: CassandraConfig, cluster: Cluster, session: Session, statements: Statements) -> None:
        self.cfg = cfg
        self.cluster = cluster
        self.session = session
        self.statements = statements
        name_statements(statements)  # labels switchboard_store_statement_seconds by statement name

    @classmethod
    def connect(
        cls,
        cfg: CassandraConfig,
        *,
        wait_seconds: float = 300.0,
        create_schema: bool = False,
        stop: threading.Event | None = None,
    ) -> StoreSession:
        """Connects (blocking), waiting with a log line per attempt until Cassandra answers; creates the schema
        when asked; prepares every statement, waiting until the schema exists (another process may be
        creating it). ``StoreUnavailable`` after ``wait_seconds``, or at the next wait once ``stop`` is set (a
        service told to stop while it waits: it took up to the whole ``wait_seconds`` to go)."""
        deadline = time.monotonic() + wait_seconds
        cluster, session = _connect(cfg, deadline, stop)
        try:
            if create_schema:
                ensure_schema(session, cfg)
            statements = _prepare(session, cfg, deadline, stop)
            check_layout(session, statements, cfg, deadline, stop)
            check_replication(session, cfg)
        except BaseException:
            cluster.shutdown()
            raise
        return cls(cfg, cluster, session, statements)

    async def execute(self, statement: Any, params: Sequence[Any] | None = None) -> list[Any]:
        """Runs ``statement`` on the driver's threads and awaits all its rows without blocking the loop (timed
        into ``switchboard_store_statement_seconds``). Every page: the driver hands a callback one page (5,000
        rows by default) and fetches the next only when asked, so a read without a ``LIMIT`` (an event's
        records, every subscription) used to end silently at its first 5,000 rows. Reads that must stay small
        say so with their ``LIMIT``."""
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[Any]] = loop.create_future()
        collected: list[Any] = []

        def ok(rows: Any) -> None:
            if rows is not None:
                collected.extend(rows)
            try:
                if rf.has_more_pages and not fut.done():
                    rf.start_fetching_next_page()  # this callback runs again with the next page
                    return
            except Exception as exc:  # handed to the awaiting task, translated there
                fail(exc)
                return
            loop.call_soon_threadsafe(_resolve, fut, collected, None)

        def fail(exc: BaseException) -> None:
            loop.call_soon_threadsafe(_resolve, fut, None, exc)

        try:
            rf: ResponseFuture = self.session.execute_async(statement, params, timeout=REQUEST_TIMEOUT_SECONDS)
        except struct.error as exc:  # a value too long for its field of the protocol (a key over 64 KB)
            raise _refused(exc) from None
        except (*_DRIVER_ERRORS, RuntimeError) as exc:
            raise _unavailable(exc) from None
        rf.add_callbacks(ok, fail)
        try:
            return await fut
        except CassandraInvalidRequest as exc:  # a value the store will never take (keys over 64 KB): not an outage
            raise _refused(exc) from None
        except _DRIVER_ERRORS as exc:
            raise _unavailable(exc) from None
        except ErrorMessage as exc:  # a server error the driver raises as its message (not a DriverException)
            raise (_refused if _permanent(exc) else _unavailable)(exc) from None
        finally:
            statement_timer(statement).observe(time.perf_counter() - started)

    def close(self) -> None:
        self.cluster.shutdown()


@asynccontextmanager
async def open_store(
    cfg: CassandraConfig, *, create_schema: bool = False, stop: asyncio.Event | None = None
) -> AsyncIterator[StoreSession]:
    """``StoreSession.connect`` off the event loop, closed on exit; ``stop`` set ends its waiting for Cassandra
    (``StoreUnavailable``)."""
    halt = threading.Event()
    relay = asyncio.create_task(_relay(stop, halt)) if stop is not None else None
    try:
        store = await asyncio.to_thread(StoreSession.connect, cfg, create_schema=create_schema, stop=halt)
    finally:
        if relay is not None:
            relay.cancel()
    try:
        yield store
    finally:
        await asyncio.to_thread(store.close)


STOP_POLL_SECONDS = 0.1


async def _relay(stop: asyncio.Event, halt: threading.Event) -> None:
    await stop.wait()
    halt.set()


def _pause(delay: float, stop: threading.Event | None, waiting_for: str) -> None:
    """Sleeps ``delay`` seconds; ``StoreUnavailable`` within a tenth of a second if ``stop`` is or gets set.
    Polled (``is_set`` takes no lock), not ``stop.wait``: a signal handler on this thread that sets ``stop``
    while ``wait`` holds the event's lock would wait for that lock for ever."""
    deadline = time.monotonic() + delay
    while True:
        if stop is not None and stop.is_set():
            raise StoreUnavailable(f"stopped while waiting for {waiting_for}")
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(STOP_POLL_SECONDS, left))


def _connect(cfg: CassandraConfig, deadline: float, stop: threading.Event | None = None) -> tuple[Cluster, Session]:
    for attempt, delay in enumerate(CONNECT_BACKOFF.delays(), start=1):
        cluster = _cluster(cfg)
        try:
            session = cluster.connect()
            log.info("connected to Cassandra", extra={"hosts": list(cfg.hosts), "port": cfg.port, "attempt": attempt})
            return cluster, session
        except _DRIVER_ERRORS as exc:
            cluster.shutdown()
            if time.monotonic() > deadline:
                raise StoreUnavailable(f"Cassandra at {cfg.hosts}:{cfg.port} not reachable: {exc}") from None
            log.warning(
                "waiting for Cassandra",
                extra={"hosts": list(cfg.hosts), "port": cfg.port, "attempt": attempt, "error": str(exc)[:300]},
            )
            _pause(delay, stop, "Cassandra")
    raise AssertionError("unreachable")  # pragma: no cover


def _prepare(
    session: Session, cfg: CassandraConfig, deadline: float, stop: threading.Event | None = None
) -> Statements:
    for delay in PREPARE_BACKOFF.delays():
        try:
            return Statements.prepare(session, cfg)
        except (NoHostAvailable, DriverException) as exc:
            if time.monotonic() > deadline:
                raise StoreUnavailable(f"cannot prepare statements: {exc}") from None
            log.warning("waiting for the schema", extra={"error": str(exc)[:200]})
            _pause(delay, stop, "the schema")
    raise AssertionError("unreachable")  # pragma: no cover


def check_layout(
    session: Session,
    statements: Statements,
    cfg: CassandraConfig,
    deadline: float | None = None,
    stop: threading.Event | None = None,
) -> None:
    """The listing index's partitions are buckets of ``cassandra.bucket_seconds`` (``EventStore.bucket_of``),
    computed from the configuration on every read: after a change every event stored before it was out of
    every listing and replay selection, with nothing said. The keyspace records the size (``settings``): read at
    the configured consistency; the first process to find none records its own (a lightweight transaction: of
    two first starts with different sizes, one is refused); a process configured with another size refuses to
    start. Changing it needs a new keyspace. A keyspace from before the record took the size of the first
    process of the release that added it. Waits out the store like ``_prepare`` (until ``deadline``, or
    ``stop``)."""
    for delay in PREPARE_BACKOFF.delays():
        try:
            row = session.execute(statements.events.layout_get, ("bucket_seconds",)).one()
            if row is None:
                claim = (statements.events.layout_claim, ("bucket_seconds", str(cfg.bucket_seconds)))
                claimed = session.execute(*claim).one()
                if claimed[0]:
                    return
                row = claimed  # not applied: the row another process recorded meanwhile, as the transaction read it
            break
        except (NoHostAvailable, DriverException, OSError) as exc:
            if deadline is None or time.monotonic() > deadline:
                raise _unavailable(exc) from None
            log.warning("waiting to read the keyspace's layout", extra={"error": str(exc)[:200]})
            _pause(delay, stop, "the keyspace's layout")
    stored = getattr(row, "value", None)
    if stored != str(cfg.bucket_seconds):
        raise ConfigError(
            f"cassandra.bucket_seconds: {cfg.bucket_seconds}, but keyspace {cfg.keyspace!r} indexes events in "
            f"buckets of {stored} s: with another size every event stored so far would drop out of every listing "
            "and replay; keep the keyspace's size, or use a new keyspace"
        )


def check_replication(session: Session, cfg: CassandraConfig) -> None:
    """The keyspace replicates as ``cassandra.datacenters`` says (or SimpleStrategy without it): the keyspace is
    created once (``IF NOT EXISTS``), so a setting added to an existing deployment changed nothing, and the
    cluster went on placing replicas rack-blind. Refuses to start on a difference, naming the ALTER to run."""
    keyspace = session.cluster.metadata.keyspaces.get(cfg.keyspace)
    strategy = getattr(keyspace, "replication_strategy", None)
    if strategy is None:
        return
    wanted = dict(cfg.datacenters)
    actual = {k: int(v) for k, v in (getattr(strategy, "dc_replication_factors", None) or {}).items()}
    if wanted and actual != wanted:
        raise ConfigError(
            f"cassandra.datacenters: {wanted}, but keyspace {cfg.keyspace!r} replicates as "
            f"{strategy.export_for_schema()}: run ALTER KEYSPACE {cfg.keyspace} WITH replication = "
            f"{replication(cfg)}, then a full repair (nodetool repair -full) on every node; refusing to start"
        )
    if not wanted and actual:
        raise ConfigError(
            f"keyspace {cfg.keyspace!r} replicates per datacentre ({actual}): set cassandra.datacenters to match; "
            "refusing to start"
        )


def _refused(exc: BaseException) -> InvalidRequest:
    """A request no retry will get through: the caller's values are at fault (400 on the APIs; a processor's
    batch is not retried for ever as for an outage). Logged here: a 400 is not logged where it is answered."""
    log.warning("the store refused a request", extra={"error": f"{type(exc).__name__}: {exc}"[:300]})
    return InvalidRequest(f"the store refused the request: {exc}"[:300], reason="STORE_REFUSED")


def _permanent(exc: ErrorMessage) -> bool:
    """A server error the driver raises as its message (the codes it turns into ``DriverException``s, timeouts,
    unavailable, invalid and unauthorized among them, are caught before) that no retry gets through: the
    request's own (syntax, configuration: codes 0x2xxx), a protocol error (a message over
    ``native_transport_max_message_size``) or bad credentials. The others (a CDC or client write failure, and
    codes the driver does not know, such as Cassandra 4's CAS_WRITE_UNKNOWN on protocol v5, 0x1700) are
    outages. They escaped untranslated: a lightweight transaction of unknown outcome crashed a delivery
    worker's batch, and the APIs answered INTERNAL."""
    code = getattr(exc, "code", None)
    return isinstance(code, int) and (0x2000 <= code < 0x3000 or code in (0x000A, 0x0100))


def _unavailable(exc: BaseException) -> StoreUnavailable:
    """The driver's text (for a timeout or no host available: the nodes' addresses and what each answered) goes
    to the logs; a caller is told the kind of failure only."""
    kind = type(exc).__name__
    return StoreUnavailable(f"Cassandra: {kind}: {exc}"[:300], public=f"the store is unavailable ({kind}); retry later")


def _resolve(fut: asyncio.Future[list[Any]], value: list[Any] | None, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        assert value is not None
        fut.set_result(value)
