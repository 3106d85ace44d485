"""Event bodies and entity states stored compressed (``switchboard.store.payloads``) on the real Cassandra:
what a provider sent is what Query returns, byte for byte, and rows written before payloads were encoded
still read."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from typing import Any

import grpc
import pytest
from cassandra import ConsistencyLevel
from google.rpc import error_details_pb2, status_pb2
from webhooks.v1 import query_pb2

from bench.presign import make_body
from switchboard.config import PlatformConfig
from switchboard.model.events import EntitySnapshot
from switchboard.store.batches import write_all
from switchboard.store.entities import EntityStore
from switchboard.store.payloads import ZSTD, Encoder
from switchboard.store.session import StoreSession
from switchboard_devstack.stack import Stack
from tests.e2e.helpers import edge_client, query_stub, stripe_headers, wait_for_event
from tests.stack_fixture import STRIPE_SECRET

pytestmark = pytest.mark.integration


def get_entity(cfg: PlatformConfig, entity_id: str) -> Any:
    channel, stub = query_stub(cfg)
    try:
        return stub.GetEntity(query_pb2.GetEntityRequest(source="shop", entity_id=entity_id), timeout=5).entity
    finally:
        channel.close()


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
            "SELECT state, state_encoded FROM entities WHERE source = %s AND entity_id = %s", ("shop", entity_id)
        ).one()
        assert ent.state is None and ent.state_encoded == row.body_encoded  # the body, as stored with the event
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


def test_a_stored_payload_that_does_not_decode_is_an_internal_error_naming_it(
    stack: Stack, stack_config: PlatformConfig
) -> None:
    event_id = f"evt_damaged_{secrets.token_hex(5)}"
    session = StoreSession.connect(stack_config.cassandra)
    session.session.set_keyspace(stack_config.cassandra.keyspace)
    try:
        session.session.execute(
            "INSERT INTO events (source, event_id, event_type, body_encoded, status, received_at) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            ("shop", event_id, "invoice.paid", bytes((ZSTD,)) + b"not zstd", "processed", int(time.time() * 1000)),
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
    status = status_pb2.Status.FromString(dict(info.value.trailing_metadata())["grpc-status-details-bin"])
    reason = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(reason) and reason.reason == "DATA_CORRUPT"
