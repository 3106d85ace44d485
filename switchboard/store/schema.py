"""The keyspace and its tables (every row carries the retention TTL, 30 days by default, except where said).

* ``events`` — one row per (source, event_id): the raw event as first applied (its body in ``body_encoded``,
  compressed when that pays: ``switchboard.store.payloads``; rows from before that have it in ``body``), the
  receipt that was applied (``receipt_id``; every other receipt of that key is a duplicate) and its
  processing state.
* ``event_records`` — same partition key, clustered by ``rec``: one row per operation run
  (``r:<operation>:<attempt>:<run id>``) and per duplicate delivery (``d:<receipt_id>``). The event row and
  its results are one unlogged batch on one partition key, which Cassandra applies as a single mutation.
* ``events_by_source`` — the listing index, partitioned by (source, time bucket) so that partitions stay
  bounded (``cassandra.bucket_seconds``; one hour by default, minutes at 1 B events/day).
* ``entities`` — the latest known version of each provider entity (the out-of-order guard) and, where the
  ``entity`` operation runs, its latest state (``state_encoded``, like an event's body; ``state`` in rows
  from before). Written with the cell timestamp set to the entity version, so the highest version wins
  whatever order the writes land in.

* ``subscriptions`` and ``subscriptions_by_client`` — outbound subscriptions (no TTL: they live until
  deleted). Signing secrets are stored encrypted (``switchboard.store.subscriptions``).
* ``deliveries`` (by delivery id), ``deliveries_by_subscription`` (partitioned by subscription and day, newest
  first) and ``deliveries_of_event`` — the state of each delivery of an event to a subscription, a replay's
  beside the original's. ``deliveries_by_event`` (one row per event and subscription: a replay's delivery
  hid the original's) is still created and read, no longer written, and empties as its rows expire: leave it
  (a later version can stop reading it one retention after this one is everywhere).
* ``dead_letters`` (by kind and day, newest first) and ``dead_letters_by_id`` — every message dead-lettered,
  with its headers and body (what a redrive republishes) and its state (dead, redriven, purged).
* ``replays`` — each replay job's request and progress; ``replay_cancels`` — cancels asked of a job on a
  control replica that does not run it (its runner polls for them).
* ``delivery_attempts`` (by delivery) and ``attempts_by_subscription`` (by subscription and day, newest
  first) — every attempt: status, duration, selected response headers, the first 4 KB of the body, error.
* ``settings`` (no TTL) — what the keyspace is laid out with: ``bucket_seconds``, the listing index's bucket
  size, recorded by the first process to connect (``switchboard.store.session.check_layout``).

Options are picked by server release: TimeWindowCompactionStrategy from 3.11, SizeTiered before (the local
Cassandra 2.1).
"""

from __future__ import annotations

import logging

from cassandra import InvalidRequest
from cassandra.cluster import Session

from switchboard.config import CassandraConfig

log = logging.getLogger(__name__)


def compaction(release: str) -> str:
    major, minor, *_ = (int(p) for p in [*release.split("-")[0].split("."), "0", "0"][:3])
    if (major, minor) >= (3, 11):
        return (
            "{'class': 'TimeWindowCompactionStrategy', 'compaction_window_unit': 'DAYS', 'compaction_window_size': 1}"
        )
    return "{'class': 'SizeTieredCompactionStrategy'}"


def replication(cfg: CassandraConfig) -> str:
    """The keyspace's replication: per datacentre (racks apart) when ``cassandra.datacenters`` names them, else
    SimpleStrategy (the local node). Names and numbers were checked by the configuration."""
    if cfg.datacenters:
        dcs = ", ".join(f"'{name}': {replicas}" for name, replicas in cfg.datacenters)
        return f"{{'class': 'NetworkTopologyStrategy', {dcs}}}"
    return f"{{'class': 'SimpleStrategy', 'replication_factor': {cfg.replication_factor}}}"


def schema_statements(cfg: CassandraConfig, release: str) -> list[str]:
    ks = cfg.keyspace
    opts = (
        f"default_time_to_live = {cfg.ttl_seconds} AND gc_grace_seconds = 86400 AND compaction = {compaction(release)}"
    )
    return [
        f"CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {replication(cfg)}",
        f"""CREATE TABLE IF NOT EXISTS {ks}.events (
            source text, event_id text, event_type text, provider text,
            received_at timestamp, provider_time timestamp, content_type text, body blob, body_encoded blob,
            headers map<text, text>, receipt_id text, entity_id text, entity_version bigint,
            traceparent text, replay boolean, replay_id text, status text, processed_at timestamp, attempts int,
            last_error text,
            PRIMARY KEY ((source, event_id))
        ) WITH {opts}""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.event_records (
            source text, event_id text, rec text, operation text, outcome text, attempt int,
            duration_us bigint, finished_at timestamp, error text, receipt_id text, received_at timestamp,
            PRIMARY KEY ((source, event_id), rec)
        ) WITH {opts}""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.entities (
            source text, entity_id text, version bigint, event_id text, event_type text, updated_at timestamp,
            content_type text, state blob, state_encoded blob, state_event_id text,
            PRIMARY KEY ((source, entity_id))
        ) WITH {opts}""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.subscriptions (
            id text PRIMARY KEY, client_id text, callback_url text, description text, sources list<text>,
            event_types list<text>, trigger_conditions text, retry_delays_ms list<bigint>, max_attempts int,
            timeout_ms int, rate_limit int, tier text, public_key text, metadata map<text, text>, status text,
            status_reason text, secret blob, previous_secret blob, previous_secret_expires timestamp,
            created_at timestamp, updated_at timestamp, max_in_flight int
        ) WITH compaction = {{'class': 'LeveledCompactionStrategy'}}""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.subscriptions_by_client (
            client_id text, id text, PRIMARY KEY ((client_id), id)
        )""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.deliveries (
            id text PRIMARY KEY, subscription_id text, source text, event_id text, event_type text, status text,
            attempts int, last_http_status int, last_error text, created_at timestamp, updated_at timestamp,
            next_attempt_at timestamp
        ) WITH {opts}""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.deliveries_by_subscription (
            subscription_id text, day bigint, created_at timestamp, id text, source text, event_id text,
            event_type text, status text,
            PRIMARY KEY ((subscription_id, day), created_at, id)
        ) WITH CLUSTERING ORDER BY (created_at DESC, id DESC) AND {opts}""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.deliveries_by_event (
            source text, event_id text, subscription_id text, id text, status text,
            PRIMARY KEY ((source, event_id), subscription_id)
        ) WITH {opts}""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.deliveries_of_event (
            source text, event_id text, subscription_id text, id text, status text,
            PRIMARY KEY ((source, event_id), subscription_id, id)
        ) WITH {opts}""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.delivery_attempts (
            delivery_id text, attempt int, run text, subscription_id text, source text, event_id text,
            started_at timestamp, duration_us bigint, http_status int, response_headers map<text, text>,
            response_body blob, error_class text, error text, outcome text,
            PRIMARY KEY ((delivery_id), attempt, run)
        ) WITH {opts}""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.attempts_by_subscription (
            subscription_id text, day bigint, started_at timestamp, delivery_id text, attempt int, run text,
            source text, event_id text, duration_us bigint, http_status int, response_headers map<text, text>,
            response_body blob, error_class text, error text, outcome text,
            PRIMARY KEY ((subscription_id, day), started_at, delivery_id, attempt, run)
        ) WITH CLUSTERING ORDER BY (started_at DESC, delivery_id DESC, attempt DESC, run DESC) AND {opts}""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.dead_letters (
            kind text, day bigint, dead_at timestamp, id text, source text, event_id text, event_type text,
            subscription_id text, delivery_id text, message_id text, attempts int, last_error text, reason text,
            headers map<text, text>, body blob, message_type text, state text, redriven_at timestamp,
            PRIMARY KEY ((kind, day), dead_at, id)
        ) WITH CLUSTERING ORDER BY (dead_at DESC, id DESC) AND {opts}""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.dead_letters_by_id (
            id text PRIMARY KEY, kind text, day bigint, dead_at timestamp
        ) WITH {opts}""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.replays (
            id text PRIMARY KEY, request text, state text, matched bigint, queued bigint, done bigint,
            failed bigint, started_at timestamp, finished_at timestamp, message text, dry_run boolean,
            updated_at timestamp, resume_from timestamp
        ) WITH {opts}""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.replay_cancels (
            id text PRIMARY KEY, requested_at timestamp
        ) WITH {opts}""",
        # What the keyspace was laid out with (never expires): ``session.check_layout``.
        f"CREATE TABLE IF NOT EXISTS {ks}.settings (name text PRIMARY KEY, value text)",
        f"""CREATE TABLE IF NOT EXISTS {ks}.events_by_source (
            source text, bucket bigint, received_at timestamp, event_id text, event_type text,
            status text, receipt_id text,
            PRIMARY KEY ((source, bucket), received_at, event_id)
        ) WITH CLUSTERING ORDER BY (received_at ASC, event_id ASC) AND {opts}""",
    ]


def migrations(cfg: CassandraConfig) -> list[str]:
    """Columns added after a table was first created (a keyspace from an earlier version gains them)."""
    return [
        f"ALTER TABLE {cfg.keyspace}.events ADD replay_id text",
        f"ALTER TABLE {cfg.keyspace}.replays ADD updated_at timestamp",
        f"ALTER TABLE {cfg.keyspace}.events ADD body_encoded blob",
        f"ALTER TABLE {cfg.keyspace}.entities ADD state_encoded blob",
        f"ALTER TABLE {cfg.keyspace}.subscriptions ADD max_in_flight int",
        f"ALTER TABLE {cfg.keyspace}.replays ADD resume_from timestamp",
    ]


def ensure_schema(session: Session, cfg: CassandraConfig) -> None:
    """Creates the keyspace and tables that do not exist yet, and adds columns they lack (blocking; run at
    start-up)."""
    release = session.execute("SELECT release_version FROM system.local").one()[0]
    for stmt in schema_statements(cfg, release):
        session.execute(stmt, timeout=60)
    for stmt in migrations(cfg):
        try:
            session.execute(stmt, timeout=60)
        except InvalidRequest as exc:  # the column is there already
            if "conflicts with an existing column" not in str(exc) and "already exist" not in str(exc):
                raise
    log.info("schema ready", extra={"keyspace": cfg.keyspace, "cassandra": release})
