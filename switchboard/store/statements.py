"""Every CQL statement the services run, prepared once at start-up into a frozen dataclass (one named field
per statement, so a typo is an attribute error at import, not a KeyError at run time).

Statement text only interpolates the keyspace name, which the configuration validates against
``[a-z][a-z0-9_]*``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from cassandra import ConsistencyLevel
from cassandra.cluster import Session
from cassandra.query import PreparedStatement

from switchboard.config import CassandraConfig


def _cql(ks: str) -> dict[str, str]:
    return {
        "priors": f"""SELECT event_id, receipt_id, status, attempts FROM {ks}.events
            WHERE source = ? AND event_id IN ?""",
        "run_records": f"""SELECT rec, operation, outcome FROM {ks}.event_records
            WHERE source = ? AND event_id = ? AND rec >= 'r:' AND rec < 'r;'""",
        "entity_versions": f"SELECT entity_id, version FROM {ks}.entities WHERE source = ? AND entity_id IN ?",
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


@dataclass(frozen=True)
class Statements:
    priors: PreparedStatement
    run_records: PreparedStatement
    entity_versions: PreparedStatement
    get_entity: PreparedStatement
    mark_entity: PreparedStatement
    snapshot_entity: PreparedStatement
    insert_event: PreparedStatement
    insert_result: PreparedStatement
    insert_duplicate: PreparedStatement
    insert_index: PreparedStatement
    get_event: PreparedStatement
    get_records: PreparedStatement
    list_range: PreparedStatement
    list_after: PreparedStatement

    @classmethod
    def prepare(cls, session: Session, cfg: CassandraConfig) -> Statements:
        """Prepares every statement (blocking) at the configured consistency. Raises the driver's errors: the
        caller retries."""
        texts = _cql(cfg.keyspace)
        assert set(texts) == {f.name for f in dataclasses.fields(cls)}, "one CQL text per statement"
        level = getattr(ConsistencyLevel, cfg.consistency)
        prepared: dict[str, PreparedStatement] = {}
        for name, text in texts.items():
            stmt = session.prepare(text)
            stmt.consistency_level = level
            prepared[name] = stmt
        return cls(**prepared)
