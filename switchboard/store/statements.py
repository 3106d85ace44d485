"""Every CQL statement the services run, prepared once at start-up into a frozen dataclass (one named field
per statement, so a typo is an attribute error at import, not a KeyError at run time).

Statement text only interpolates the keyspace name, which the configuration validates against
``[a-z][a-z0-9_]*``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TypeVar

from cassandra import ConsistencyLevel
from cassandra.cluster import Session
from cassandra.query import PreparedStatement

from switchboard.config import CassandraConfig

_S = TypeVar("_S")
# Every column of dead_letters but the message itself (headers, body).
DEAD_LIGHT = (
    "kind, day, dead_at, id, source, event_id, event_type, subscription_id, delivery_id, message_id, attempts, "
    "last_error, reason, message_type, state, redriven_at"
)


def _event_cql(ks: str) -> dict[str, str]:
    return {
        "priors": f"""SELECT event_id, receipt_id, status, attempts, last_error FROM {ks}.events
            WHERE source = ? AND event_id IN ?""",
        "run_records": f"""SELECT rec, operation, outcome, attempt, receipt_id FROM {ks}.event_records
            WHERE source = ? AND event_id = ? AND rec >= 'r:' AND rec < 'r;'""",
        "entity_versions": f"SELECT entity_id, version FROM {ks}.entities WHERE source = ? AND entity_id IN ?",
        "get_entity": f"""SELECT source, entity_id, version, event_id, event_type, updated_at, content_type,
            state_event_id, WRITETIME(state_event_id) AS state_event_written, state,
            WRITETIME(state) AS state_written, state_encoded, WRITETIME(state_encoded) AS state_encoded_written
            FROM {ks}.entities WHERE source = ? AND entity_id = ?""",
        "mark_entity": f"""UPDATE {ks}.entities USING TIMESTAMP ? AND TTL ?
            SET version = ?, event_id = ?, event_type = ?, updated_at = ? WHERE source = ? AND entity_id = ?""",
        "mark_and_snapshot_entity": f"""UPDATE {ks}.entities USING TIMESTAMP ? AND TTL ?
            SET version = ?, event_id = ?, event_type = ?, updated_at = ?, content_type = ?, state_encoded = ?,
            state_event_id = ? WHERE source = ? AND entity_id = ?""",
        "mark_and_reference_entity": f"""UPDATE {ks}.entities USING TIMESTAMP ? AND TTL ?
            SET version = ?, event_id = ?, event_type = ?, updated_at = ?, content_type = ?, state_event_id = ?
            WHERE source = ? AND entity_id = ?""",
        "snapshot_entity": f"""UPDATE {ks}.entities USING TIMESTAMP ? AND TTL ?
            SET content_type = ?, state_encoded = ?, state_event_id = ? WHERE source = ? AND entity_id = ?""",
        "insert_event": f"""INSERT INTO {ks}.events (source, event_id, event_type, provider,
            received_at, provider_time, content_type, body_encoded, headers, receipt_id, entity_id,
            entity_version, traceparent, replay, replay_id, status, processed_at, attempts, last_error)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?""",
        "insert_result": f"""INSERT INTO {ks}.event_records (source, event_id, rec, operation, outcome,
            attempt, duration_us, finished_at, error, receipt_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            USING TTL ?""",
        "insert_duplicate": f"""INSERT INTO {ks}.event_records (source, event_id, rec, receipt_id,
            received_at) VALUES (?, ?, ?, ?, ?) USING TTL ?""",
        "insert_index": f"""INSERT INTO {ks}.events_by_source (source, bucket, received_at, event_id,
            event_type, status, receipt_id) VALUES (?, ?, ?, ?, ?, ?, ?) USING TTL ?""",
        "get_event": f"SELECT * FROM {ks}.events WHERE source = ? AND event_id = ?",
        "event_body": f"""SELECT body, body_encoded, event_type, content_type FROM {ks}.events
            WHERE source = ? AND event_id = ?""",
        "event_type": f"SELECT event_type FROM {ks}.events WHERE source = ? AND event_id = ?",
        "reset_attempts": f"""UPDATE {ks}.events USING TTL ? SET status = ?, attempts = 0
            WHERE source = ? AND event_id = ?""",
        "reset_attempts_new": f"""INSERT INTO {ks}.events (source, event_id, status, attempts) VALUES (?, ?, ?, 0)
            IF NOT EXISTS USING TTL ?""",
        "reset_attempts_if": f"""UPDATE {ks}.events USING TTL ? SET status = ?, attempts = 0
            WHERE source = ? AND event_id = ? IF status = ? AND receipt_id = ?""",
        "reset_attempts_if_status": f"""UPDATE {ks}.events USING TTL ? SET status = ?, attempts = 0
            WHERE source = ? AND event_id = ? IF status = ?""",
        "get_results": f"""SELECT * FROM {ks}.event_records
            WHERE source = ? AND event_id = ? AND rec >= 'r:' AND rec < 'r;'""",
        "count_duplicates": f"""SELECT COUNT(*) FROM {ks}.event_records
            WHERE source = ? AND event_id = ? AND rec >= 'd:' AND rec < 'd;'""",
        "list_range": f"""SELECT received_at, event_id, event_type, status, receipt_id
            FROM {ks}.events_by_source
            WHERE source = ? AND bucket = ? AND received_at >= ? AND received_at < ? LIMIT ?""",
        "layout_claim": f"INSERT INTO {ks}.settings (name, value) VALUES (?, ?) IF NOT EXISTS",
        "layout_get": f"SELECT value FROM {ks}.settings WHERE name = ?",
        "list_after": f"""SELECT received_at, event_id, event_type, status, receipt_id
            FROM {ks}.events_by_source
            WHERE source = ? AND bucket = ? AND (received_at, event_id) > (?, ?) LIMIT ?""",
    }


def _subscription_cql(ks: str) -> dict[str, str]:
    columns = (
        "id, client_id, callback_url, description, sources, event_types, trigger_conditions, retry_delays_ms, "
        "max_attempts, timeout_ms, rate_limit, tier, public_key, metadata, status, status_reason, secret, "
        "previous_secret, previous_secret_expires, created_at, updated_at, max_in_flight"
    )
    marks = ", ".join("?" * len(columns.split(", ")))
    settable = ", ".join(f"{c} = ?" for c in columns.split(", ")[1:])
    return {
        "put": f"INSERT INTO {ks}.subscriptions ({columns}) VALUES ({marks})",
        # Every change: written only if nothing else changed the row since it was read (a lightweight
        # transaction: the control plane's writes are few; lost updates were not).
        "replace": f"UPDATE {ks}.subscriptions SET {settable} WHERE id = ? IF updated_at = ?",
        "get": f"SELECT * FROM {ks}.subscriptions WHERE id = ?",
        "all": f"SELECT * FROM {ks}.subscriptions",
        "delete": f"DELETE FROM {ks}.subscriptions WHERE id = ? IF EXISTS",
        # Over the row as it was read, as "replace" (Cassandra 2.1.0 has no UPDATE ... IF EXISTS).
        "set_status": f"""UPDATE {ks}.subscriptions SET status = ?, status_reason = ?, updated_at = ?
            WHERE id = ? IF updated_at = ?""",
        "index_put": f"INSERT INTO {ks}.subscriptions_by_client (client_id, id) VALUES (?, ?)",
        "index_delete": f"DELETE FROM {ks}.subscriptions_by_client WHERE client_id = ? AND id = ?",
        "index_page": f"SELECT id FROM {ks}.subscriptions_by_client WHERE client_id = ? AND id > ? LIMIT ?",
        "page_first": f"SELECT * FROM {ks}.subscriptions LIMIT ?",
        "page_after": f"SELECT * FROM {ks}.subscriptions WHERE token(id) > token(?) LIMIT ?",
    }


def _delivery_cql(ks: str) -> dict[str, str]:
    attempt_columns = (
        "started_at, source, event_id, duration_us, http_status, response_headers, response_body, error_class, "
        "error, outcome"
    )
    return {
        "put": f"""INSERT INTO {ks}.deliveries (id, subscription_id, source, event_id, event_type, status,
            attempts, last_http_status, last_error, created_at, updated_at, next_attempt_at)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?""",
        "get": f"SELECT * FROM {ks}.deliveries WHERE id IN ?",
        "by_subscription_put": f"""INSERT INTO {ks}.deliveries_by_subscription (subscription_id, day, created_at,
            id, source, event_id, event_type, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?""",
        "by_subscription_range": f"""SELECT created_at, id FROM {ks}.deliveries_by_subscription
            WHERE subscription_id = ? AND day = ? AND created_at >= ? AND created_at < ? LIMIT ?""",
        "by_subscription_after": f"""SELECT created_at, id FROM {ks}.deliveries_by_subscription
            WHERE subscription_id = ? AND day = ? AND (created_at, id) < (?, ?) LIMIT ?""",
        "by_event_put": f"""INSERT INTO {ks}.deliveries_of_event (source, event_id, subscription_id, id, status)
            VALUES (?, ?, ?, ?, ?) USING TTL ?""",
        "by_event": f"SELECT id FROM {ks}.deliveries_of_event WHERE source = ? AND event_id = ?",
        "by_event_before": f"SELECT id FROM {ks}.deliveries_by_event WHERE source = ? AND event_id = ?",
        "attempt_put": f"""INSERT INTO {ks}.delivery_attempts (delivery_id, attempt, run, subscription_id,
            {attempt_columns}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?""",
        "attempts_of": f"SELECT * FROM {ks}.delivery_attempts WHERE delivery_id = ?",
        "attempt_by_subscription_put": f"""INSERT INTO {ks}.attempts_by_subscription (subscription_id, day,
            delivery_id, attempt, run, {attempt_columns}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            USING TTL ?""",
        "attempts_range": f"""SELECT * FROM {ks}.attempts_by_subscription
            WHERE subscription_id = ? AND day = ? AND started_at >= ? AND started_at < ? LIMIT ?""",
        "attempts_after": f"""SELECT * FROM {ks}.attempts_by_subscription
            WHERE subscription_id = ? AND day = ? AND (started_at, delivery_id, attempt, run) < (?, ?, ?, ?)
            LIMIT ?""",
    }


def _operations_cql(ks: str) -> dict[str, str]:
    columns = (
        "kind, day, dead_at, id, source, event_id, event_type, subscription_id, delivery_id, message_id, attempts, "
        "last_error, reason, headers, body, message_type, state, redriven_at"
    )
    marks = ", ".join("?" * len(columns.split(", ")))
    return {
        "dead_put": f"INSERT INTO {ks}.dead_letters ({columns}) VALUES ({marks}) USING TTL ?",
        "dead_by_id_put": f"""INSERT INTO {ks}.dead_letters_by_id (id, kind, day, dead_at) VALUES (?, ?, ?, ?)
            USING TTL ?""",
        "dead_by_id": f"SELECT kind, day, dead_at FROM {ks}.dead_letters_by_id WHERE id = ?",
        "dead_get": f"SELECT * FROM {ks}.dead_letters WHERE kind = ? AND day = ? AND dead_at = ? AND id = ?",
        # A range is read without the messages (body and headers), which ``dead_get`` reads one row at a time.
        "dead_range": f"""SELECT {DEAD_LIGHT} FROM {ks}.dead_letters
            WHERE kind = ? AND day = ? AND dead_at >= ? AND dead_at < ? LIMIT ?""",
        "dead_after": f"""SELECT {DEAD_LIGHT} FROM {ks}.dead_letters
            WHERE kind = ? AND day = ? AND (dead_at, id) < (?, ?) LIMIT ?""",
        "dead_state": f"""UPDATE {ks}.dead_letters USING TTL ? SET state = ?, redriven_at = ?
            WHERE kind = ? AND day = ? AND dead_at = ? AND id = ?""",
        "dead_state_from": f"""UPDATE {ks}.dead_letters USING TTL ? SET state = ?, redriven_at = ?
            WHERE kind = ? AND day = ? AND dead_at = ? AND id = ? IF state = ?""",
        "dead_state_from_at": f"""UPDATE {ks}.dead_letters USING TTL ? SET state = ?, redriven_at = ?
            WHERE kind = ? AND day = ? AND dead_at = ? AND id = ? IF state = ? AND redriven_at = ?""",
        "replay_put": f"""INSERT INTO {ks}.replays (id, request, state, matched, queued, done, failed, started_at,
            finished_at, message, dry_run, updated_at, resume_from) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            USING TTL ?""",
        "replay_get": f"SELECT * FROM {ks}.replays WHERE id = ?",
        "replay_interrupted": f"""UPDATE {ks}.replays USING TTL ? SET state = ?, message = ?, finished_at = ?,
            updated_at = ? WHERE id = ? IF updated_at = ?""",
        "replay_cancel_put": f"INSERT INTO {ks}.replay_cancels (id, requested_at) VALUES (?, ?) USING TTL ?",
        "replay_cancel_get": f"SELECT id FROM {ks}.replay_cancels WHERE id = ?",
        "delivery_reset": f"""UPDATE {ks}.deliveries USING TTL ? SET status = ?, attempts = 0, updated_at = ?
            WHERE id = ? IF status = ?""",
        "delivery_status": f"SELECT status, TTL(status) AS ttl_left FROM {ks}.deliveries WHERE id = ?",
        "delivery_fail": f"""UPDATE {ks}.deliveries USING TTL ? AND TIMESTAMP ? SET status = ?, last_error = ?,
            updated_at = ?, next_attempt_at = null WHERE id = ?""",
    }


def _prepare(session: Session, cfg: CassandraConfig, cls: type[_S], texts: dict[str, str]) -> _S:
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    assert set(texts) == names, f"one CQL text per statement of {cls}"
    level = getattr(ConsistencyLevel, cfg.consistency)
    # A lightweight transaction's read (its Paxos phase) at LOCAL_SERIAL with a LOCAL_ level: SERIAL reads a
    # quorum of every datacentre, which may miss a commit written at LOCAL_QUORUM in one (and fails with a
    # datacentre down).
    serial = ConsistencyLevel.LOCAL_SERIAL if cfg.local_consistency else ConsistencyLevel.SERIAL
    prepared: dict[str, PreparedStatement] = {}
    for name, text in texts.items():
        stmt = session.prepare(text)
        stmt.consistency_level = level
        stmt.serial_consistency_level = serial
        prepared[name] = stmt
    return cls(**prepared)


@dataclass(frozen=True)
class EventStatements:
    priors: PreparedStatement
    run_records: PreparedStatement
    entity_versions: PreparedStatement
    get_entity: PreparedStatement
    mark_entity: PreparedStatement
    mark_and_snapshot_entity: PreparedStatement
    mark_and_reference_entity: PreparedStatement
    snapshot_entity: PreparedStatement
    insert_event: PreparedStatement
    insert_result: PreparedStatement
    insert_duplicate: PreparedStatement
    insert_index: PreparedStatement
    get_event: PreparedStatement
    event_body: PreparedStatement
    event_type: PreparedStatement
    reset_attempts: PreparedStatement
    reset_attempts_new: PreparedStatement
    reset_attempts_if: PreparedStatement
    reset_attempts_if_status: PreparedStatement
    get_results: PreparedStatement
    count_duplicates: PreparedStatement
    list_range: PreparedStatement
    list_after: PreparedStatement
    layout_claim: PreparedStatement
    layout_get: PreparedStatement


@dataclass(frozen=True)
class SubscriptionStatements:
    put: PreparedStatement
    replace: PreparedStatement
    get: PreparedStatement
    all: PreparedStatement
    delete: PreparedStatement
    set_status: PreparedStatement
    index_put: PreparedStatement
    index_delete: PreparedStatement
    index_page: PreparedStatement
    page_first: PreparedStatement
    page_after: PreparedStatement


@dataclass(frozen=True)
class DeliveryStatements:
    put: PreparedStatement
    get: PreparedStatement
    by_subscription_put: PreparedStatement
    by_subscription_range: PreparedStatement
    by_subscription_after: PreparedStatement
    by_event_put: PreparedStatement
    by_event: PreparedStatement
    by_event_before: PreparedStatement
    attempt_put: PreparedStatement
    attempts_of: PreparedStatement
    attempt_by_subscription_put: PreparedStatement
    attempts_range: PreparedStatement
    attempts_after: PreparedStatement


@dataclass(frozen=True)
class OperationStatements:
    """Dead letters, replays, and the resets a redrive makes."""

    dead_put: PreparedStatement
    dead_by_id_put: PreparedStatement
    dead_by_id: PreparedStatement
    dead_get: PreparedStatement
    dead_range: PreparedStatement
    dead_after: PreparedStatement
    dead_state: PreparedStatement
    dead_state_from: PreparedStatement
    dead_state_from_at: PreparedStatement
    replay_put: PreparedStatement
    replay_interrupted: PreparedStatement
    replay_get: PreparedStatement
    replay_cancel_put: PreparedStatement
    replay_cancel_get: PreparedStatement
    delivery_reset: PreparedStatement
    delivery_status: PreparedStatement
    delivery_fail: PreparedStatement


@dataclass(frozen=True)
class Statements:
    events: EventStatements
    subscriptions: SubscriptionStatements
    deliveries: DeliveryStatements
    operations: OperationStatements

    @classmethod
    def prepare(cls, session: Session, cfg: CassandraConfig) -> Statements:
        """Prepares every statement (blocking) at the configured consistency. Raises the driver's errors: the
        caller retries."""
        ks = cfg.keyspace
        return cls(
            events=_prepare(session, cfg, EventStatements, _event_cql(ks)),
            subscriptions=_prepare(session, cfg, SubscriptionStatements, _subscription_cql(ks)),
            deliveries=_prepare(session, cfg, DeliveryStatements, _delivery_cql(ks)),
            operations=_prepare(session, cfg, OperationStatements, _operations_cql(ks)),
        )
