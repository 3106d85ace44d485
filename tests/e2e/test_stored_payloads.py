"""Event bodies and entity states stored compressed (``switchboard.store.payloads``) on the real Cassandra:
what a provider sent is what Query returns, byte for byte, an entity's state that is its event's body is
stored once (a reference to the event's row), and rows written before either change still read."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import time

import grpc
import pytest
from cassandra import ConsistencyLevel
from google.rpc import error_details_pb2, status_pb2
from webhooks.v1 import query_pb2

from bench.presign import make_body
from switchboard.config import PlatformConfig
from switchboard.model.events import Commit, EntitySnapshot, EventStatus, InboundEvent, StoredEvent
from switchboard.store.batches import BoundStatement, write_all
from switchboard.store.entities import EntityStore
from switchboard.store.events import EventStore
from switchboard.store.payloads import ZSTD, Encoder
from switchboard.store.schema import schema_statements
from switchboard.store.session import StoreSession
from switchboard_devstack.stack import Stack
from tests.e2e.helpers import edge_client, get_entity, query_stub, stripe_headers, wait_for_event
from tests.stack_fixture import STRIPE_SECRET
from tests.unit import factories

pytestmark = pytest.mark.integration


def test_a_received_event_is_stored_compressed_and_returned_byte_for_byte(
    stack: Stack, stack_config: PlatformConfig
) -> None:
    event_id, body = make_body(5000, time.time(), "zst")
    entity_id = json.loads(body)["data"]["object"]["id"]
    with edge_client(stack_config) as client:
        resp = client.post("/webhook/shop", content=body, headers=stripe_headers(STRIPE_SECRET, body))
    assert resp.status_code == 200, resp.text

    event = wait_for_event(stack_config, "shop", event_id)
    assert event.body == body
    assert get_entity(stack_config, entity_id).state == body

    session = StoreSession.connect(stack_config.cassandra)
    try:
        cql = session.session
        cql.set_keyspace(stack_config.cassandra.keyspace)
        row = cql.execute(
            "SELECT body, body_encoded FROM events WHERE source = %s AND event_id = %s", ("shop", event_id)
        ).one()
        assert row.body is None  # nothing written to the old column
        assert row.body_encoded[0] == ZSTD and len(row.body_encoded) < len(body) / 3
        ent = cql.execute(
            "SELECT state, state_encoded, state_event_id FROM entities WHERE source = %s AND entity_id = %s",
            ("shop", entity_id),
        ).one()
        # the body is stored once, with the event: the entity's row names the event
        assert (ent.state, ent.state_encoded, ent.state_event_id) == (None, None, event_id)
    finally:
        session.close()


def test_rows_written_before_payloads_were_encoded_still_read(stack: Stack, stack_config: PlatformConfig) -> None:
    """An event row and an entity state in the old columns (as an earlier version wrote them) read back as
    they were; an entity state rewritten later reads the newest of the two columns, whichever it is."""
    run = secrets.token_hex(5)
    event_id, entity_id = f"evt_legacy_{run}", f"in_legacy_{run}"
    old_body = b'{"id":"evt_legacy","object":"event","note":"' + b"written raw by an earlier version " * 8 + b'"}'
    session = StoreSession.connect(stack_config.cassandra)
    cql = session.session
    cql.set_keyspace(stack_config.cassandra.keyspace)
    try:
        cql.execute(
            "INSERT INTO events (source, event_id, event_type, body, status, received_at, receipt_id) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s)",
            ("shop", event_id, "invoice.paid", old_body, "processed", int(time.time() * 1000), "rcpt_legacy"),
        )
        # version 12's state in the old column, with the cell timestamp set to the version (as it was written)
        cql.execute(
            "UPDATE entities USING TIMESTAMP 12 SET version = 12, content_type = 'application/json', "
            "state = %s, state_event_id = 'evt_v12' WHERE source = %s AND entity_id = %s",
            (old_body, "shop", entity_id),
        )
        assert wait_for_event(stack_config, "shop", event_id).body == old_body
        assert get_entity(stack_config, entity_id).state == old_body

        entities = EntityStore(session)
        new_state = b'{"state":"' + b"encoded by this version " * 10 + b'"}'

        async def snapshot(version: int) -> None:
            fx = EntitySnapshot(
                source="shop",
                entity_id=entity_id,
                version=version,
                event_id=f"evt_v{version}",
                event_type="invoice.updated",
                content_type="application/json",
                body=new_state,
            )
            await write_all(session, [[entities.snapshot(fx, Encoder(compress=True))]], ConsistencyLevel.ONE)

        asyncio.run(snapshot(11))  # an older version's state, written later: the old column's v12 still wins
        got = get_entity(stack_config, entity_id)
        assert (got.state, got.state_event_id) == (old_body, "evt_v12")
        asyncio.run(snapshot(13))  # a newer one wins
        got = get_entity(stack_config, entity_id)
        assert (got.state, got.state_event_id) == (new_state, "evt_v13")
        stored = cql.execute(
            "SELECT state_encoded FROM entities WHERE source = %s AND entity_id = %s", ("shop", entity_id)
        ).one()
        assert stored.state_encoded[0] == ZSTD
    finally:
        session.close()


def _status_reason(error: grpc.RpcError) -> str:
    status = status_pb2.Status.FromString(dict(error.trailing_metadata())["grpc-status-details-bin"])
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return str(info.reason)


def test_an_entity_state_by_reference_reads_its_event_and_gives_way_to_newer_versions(
    stack: Stack, stack_config: PlatformConfig
) -> None:
    """The processor's own-event state is a reference: until the event's row exists (a processor that died
    between its two commit phases) GetEntity answers UNAVAILABLE ``ENTITY_STATE_PENDING``; then the event's
    body. An older version's state written later does not replace it; a newer one, stored in the row, does."""
    run = secrets.token_hex(5)
    event_id, entity_id = f"evt_ref_{run}", f"in_ref_{run}"
    body = b'{"id":"' + event_id.encode() + b'","note":"' + b"the entity's state is this body " * 8 + b'"}'
    event = InboundEvent(
        source="shop",
        event_id=event_id,
        event_type="invoice.paid",
        provider="stripe",
        received_us=int(time.time() * 1_000_000),
        body=body,
        content_type="application/json",
        headers={},
        receipt_id=f"rcpt_{run}",
        entity_id=entity_id,
        entity_version=20,
    )
    own = EntitySnapshot("shop", entity_id, 20, event_id, "invoice.paid", "application/json", body)
    session = StoreSession.connect(stack_config.cassandra)
    entities = EntityStore(session)
    events = EventStore(session, entities)

    def write(*units: list[BoundStatement]) -> None:
        asyncio.run(write_all(session, list(units), ConsistencyLevel.ONE))

    def snapshot(version: int, state: bytes) -> None:
        fx = EntitySnapshot("shop", entity_id, version, f"evt_v{version}", "invoice.updated", "text/plain", state)
        write([entities.snapshot(fx, Encoder(compress=True))])

    try:
        write(entities.writes(event, True, [own], Encoder(compress=True)))  # the commit's first phase only
        with pytest.raises(grpc.RpcError) as info:
            get_entity(stack_config, entity_id)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE and event_id in info.value.details()
        assert _status_reason(info.value) == "ENTITY_STATE_PENDING"

        asyncio.run(events.commit([Commit(StoredEvent(event, EventStatus.PROCESSED), mark_entity=True)]))
        got = get_entity(stack_config, entity_id)
        assert (got.version, got.state, got.state_event_id) == (20, body, event_id)

        snapshot(19, b"an older version's state")  # lands later, loses to the reference's timestamp
        got = get_entity(stack_config, entity_id)
        assert (got.state, got.state_event_id) == (body, event_id)
        snapshot(21, b"a newer version's state")  # stored in the row, newer than the reference
        got = get_entity(stack_config, entity_id)
        assert (got.state, got.state_event_id) == (b"a newer version's state", "evt_v21")
    finally:
        session.close()


def test_two_events_of_one_entity_with_the_same_version_read_back_as_one_of_them(
    stack: Stack, stack_config: PlatformConfig
) -> None:
    """Found in review: both events are applied and write the entity row with one cell timestamp, and
    Cassandra settles that tie cell by cell (the larger value wins each): the row's id is b's, its type a's.
    GetEntity answers with the id, type and state of one event."""
    run = secrets.token_hex(5)
    session = StoreSession.connect(stack_config.cassandra)
    entities = EntityStore(session)
    events = EventStore(session, entities)

    def commit(entity_id: str, event_id: str, event_type: str, *, by_reference: bool) -> bytes:
        body = b'{"id":"' + event_id.encode() + b'","type":"' + event_type.encode() + b'"}'
        event = factories.event(
            event_id=event_id,
            event_type=event_type,
            received_us=int(time.time() * 1_000_000),
            body=body,
            receipt_id=f"rcpt_{event_id}",
            entity_id=entity_id,
            entity_version=1_700_000_000_000_000,
        )
        effects = [
            EntitySnapshot("shop", entity_id, event.entity_version, event_id, event_type, "application/json", body)
        ]
        commit = Commit(StoredEvent(event, EventStatus.PROCESSED), mark_entity=True)
        commit.effects.extend(effects if by_reference else [])
        asyncio.run(events.commit([commit]))
        return body

    try:
        for by_reference in (True, False):
            a, b = f"evt_tie_a_{by_reference:d}_{run}", f"evt_tie_b_{by_reference:d}_{run}"
            entity_id = f"in_tie_{by_reference:d}_{run}"
            commit(entity_id, a, "invoice.paid", by_reference=by_reference)
            body_b = commit(entity_id, b, "invoice.created", by_reference=by_reference)
            cql = session.session
            cql.set_keyspace(stack_config.cassandra.keyspace)
            row = cql.execute(
                "SELECT event_id, event_type FROM entities WHERE source = %s AND entity_id = %s", ("shop", entity_id)
            ).one()
            assert (row.event_id, row.event_type) == (b, "invoice.paid")  # the tie, settled cell by cell
            got = get_entity(stack_config, entity_id)
            assert (got.event_id, got.event_type) == (b, "invoice.created")
            if by_reference:
                assert (got.state, got.state_event_id) == (body_b, b)
    finally:
        session.close()


def test_a_stored_payload_that_does_not_decode_is_an_internal_error_naming_it(
    stack: Stack, stack_config: PlatformConfig
) -> None:
    event_id = f"evt_damaged_{secrets.token_hex(5)}"
    session = StoreSession.connect(stack_config.cassandra)
    session.session.set_keyspace(stack_config.cassandra.keyspace)
    try:
        session.session.execute(
            "INSERT INTO events (source, event_id, event_type, body_encoded, status, received_at, receipt_id) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (
                "shop",
                event_id,
                "invoice.paid",
                bytes((ZSTD,)) + b"not zstd",
                "processed",
                int(time.time() * 1000),
                "r1",
            ),
        )
    finally:
        session.close()
    channel, stub = query_stub(stack_config)
    try:
        with pytest.raises(grpc.RpcError) as info:
            stub.GetEvent(query_pb2.GetEventRequest(source="shop", event_id=event_id), timeout=5)
    finally:
        channel.close()
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert "does not decompress" in info.value.details()
    assert _status_reason(info.value) == "DATA_CORRUPT"


def test_a_keyspace_from_before_gains_the_encoded_columns_and_keeps_its_rows(
    stack: Stack, stack_config: PlatformConfig
) -> None:
    """A keyspace whose ``events`` and ``entities`` tables were created by the previous version (no encoded
    columns) is upgraded in place when a service starts (``create_schema``): the columns are added, the old
    rows read as they were, and new writes go to the encoded columns."""
    cfg = dataclasses.replace(stack_config.cassandra, keyspace=f"sb_upgrade_{secrets.token_hex(4)}")
    old_body = b'{"id":"evt_before_upgrade","note":"' + b"stored by the previous version " * 8 + b'"}'
    admin = StoreSession.connect(stack_config.cassandra)  # the stack's keyspace; creates the old tables
    try:
        cql = admin.session
        release = cql.execute("SELECT release_version FROM system.local").one()[0]
        for stmt in schema_statements(cfg, release):  # the previous version's: without the encoded columns
            cql.execute(stmt.replace(" body_encoded blob,", "").replace(" state_encoded blob,", ""), timeout=60)
        admin.cluster.refresh_table_metadata(cfg.keyspace, "events")
        assert "body_encoded" not in admin.cluster.metadata.keyspaces[cfg.keyspace].tables["events"].columns
        cql.set_keyspace(cfg.keyspace)
        cql.execute(
            "INSERT INTO events (source, event_id, event_type, body, status, received_at, receipt_id) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s)",
            ("shop", "evt_before_upgrade", "invoice.paid", old_body, "processed", int(time.time() * 1000), "r1"),
        )
    finally:
        admin.close()

    upgraded = StoreSession.connect(cfg, create_schema=True)  # what every service does at start
    try:
        upgraded.session.set_keyspace(cfg.keyspace)  # for the plain CQL below (the store's statements name it)
        events = EventStore(upgraded, EntityStore(upgraded))

        async def read_and_write() -> tuple[bytes, bytes]:
            before = await events.get("shop", "evt_before_upgrade")
            assert before is not None
            fx = EntitySnapshot(
                source="shop",
                entity_id="in_after_upgrade",
                version=5,
                event_id="evt_after_upgrade",
                event_type="invoice.paid",
                content_type="application/json",
                body=old_body,
            )
            await write_all(
                upgraded, [[EntityStore(upgraded).snapshot(fx, Encoder(compress=True))]], ConsistencyLevel.ONE
            )
            upgraded.session.execute(  # the version mark the processor writes with it (GetEntity needs one)
                "UPDATE entities USING TIMESTAMP 5 SET version = 5 WHERE source = %s AND entity_id = %s",
                ("shop", "in_after_upgrade"),
            )
            after = await EntityStore(upgraded).get("shop", "in_after_upgrade")
            assert after is not None
            return before.event.body, after.state

        before_body, new_state = asyncio.run(read_and_write())
        assert before_body == old_body and new_state == old_body
        row = upgraded.session.execute(
            "SELECT state, state_encoded FROM entities WHERE source = %s AND entity_id = %s",
            ("shop", "in_after_upgrade"),
        ).one()
        assert row.state is None and row.state_encoded[0] == ZSTD
    finally:
        upgraded.session.execute(f"DROP KEYSPACE {cfg.keyspace}", timeout=60)
        upgraded.close()
