"""The operating tools through the real stack: dead letters recorded when they happen, listed, inspected,
redriven with a fresh attempt budget and purged (marked, never deleted); replays of one event, of a
selection (a job streaming its progress) and to one subscription."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aio_pika
import grpc
import pytest
from webhooks.v1 import dead_letters_pb2 as dl
from webhooks.v1 import dead_letters_pb2_grpc, event_pb2, replay_pb2, replay_pb2_grpc
from webhooks.v1 import subscriptions_pb2 as sub_pb

from switchboard.config import PlatformConfig
from switchboard.model.events import now_us
from switchboard.model.operations import DeadLetter, DeadLetterKind, DeadLetterState
from switchboard.store import OperationsStore, StoreSession
from switchboard.store.values import ts
from switchboard.streams import events_topology
from switchboard_devstack.stack import Stack
from tests.e2e.helpers import edge_client, get_entity, list_dead_letters, stripe_headers, wait_for_event
from tests.e2e.receivers import Receiver
from tests.e2e.test_delivery import control, subscribe
from tests.stack_fixture import MAX_ATTEMPTS, STRIPE_SECRET

pytestmark = pytest.mark.integration

OK = event_pb2.OPERATION_OUTCOME_OK
FAILED = event_pb2.OPERATION_OUTCOME_FAILED


@contextmanager
def stubs(cfg: PlatformConfig) -> Iterator[tuple[Any, Any]]:
    channel = grpc.insecure_channel(f"127.0.0.1:{cfg.control.port}")
    try:
        yield dead_letters_pb2_grpc.DeadLettersStub(channel), replay_pb2_grpc.ReplayStub(channel)
    finally:
        channel.close()


def post(cfg: PlatformConfig, event_id: str, event_type: str, **obj: Any) -> None:
    post_at(cfg, event_id, event_type, "in_" + event_id[-12:], int(time.time()), **obj)


def post_at(cfg: PlatformConfig, event_id: str, event_type: str, entity_id: str, created: int, **obj: Any) -> None:
    """Posts a signed Stripe event about invoice ``entity_id`` whose version is ``created``."""
    body = json.dumps(
        {
            "id": event_id,
            "object": "event",
            "type": event_type,
            "created": created,
            "data": {"object": {"id": entity_id, "object": "invoice", **obj}},
        },
        separators=(",", ":"),
    ).encode()
    with edge_client(cfg) as client:
        resp = client.post("/webhook/shop", content=body, headers=stripe_headers(STRIPE_SECRET, body))
    assert resp.status_code == 200, resp.text


def wait_status(cfg: PlatformConfig, event_id: str, status: int, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while (event := wait_for_event(cfg, "shop", event_id, timeout=timeout)).status != status:
        assert time.monotonic() < deadline, f"{event_id} stayed {event_pb2.EventStatus.Name(event.status)}"
        time.sleep(0.2)
    return event


def dead_letters_of(cfg: PlatformConfig, event_id: str, *, all_states: bool = False) -> list[Any]:
    with stubs(cfg) as (dead, _):
        f = dl.DeadLetterFilter(kind=dl.DEAD_LETTER_KIND_PROCESSING, source="shop", all_states=all_states)
        return [d for d in list_dead_letters(dead, f) if d.event_id == event_id]


def wait_dead_letter(cfg: PlatformConfig, event_id: str, count: int = 1) -> list[Any]:
    deadline = time.monotonic() + 30
    while len(found := dead_letters_of(cfg, event_id, all_states=True)) < count:
        assert time.monotonic() < deadline, f"{len(found)} of {count} dead letters recorded for {event_id}"
        time.sleep(0.2)
    return found


def test_a_dead_letter_is_recorded_inspected_and_redriven_with_a_fresh_budget(
    stack: Stack, stack_config: PlatformConfig, tmp_path: Path
) -> None:
    cfg = stack_config
    gate = tmp_path / "gate"
    event_id = "evt_gated_" + secrets.token_hex(6)
    post(cfg, event_id, "test.gated", gate=str(gate))
    wait_status(cfg, event_id, event_pb2.EVENT_STATUS_FAILED)
    (dead,) = wait_dead_letter(cfg, event_id)
    assert (dead.reason, dead.attempts, dead.state) == ("FAILED", MAX_ATTEMPTS, dl.DEAD_LETTER_STATE_DEAD)
    assert dead.last_error == "gated: PermissionError: the gate is closed"
    with stubs(cfg) as (dead_letters, _):
        got = dead_letters.GetDeadLetter(dl.GetDeadLetterRequest(id=dead.id), timeout=10).dead_letter
        assert got.body and got.headers["x-attempt"] == str(MAX_ATTEMPTS) and got.kind == dl.DEAD_LETTER_KIND_PROCESSING
        # Not redriven while the cause is still there? It would just fail again: open the gate first.
        gate.write_text("open")
        progress = list(dead_letters.RedriveDeadLetters(dl.RedriveDeadLettersRequest(ids=[dead.id]), timeout=30))
    assert (progress[-1].matched, progress[-1].redriven, progress[-1].done) == (1, 1, True)
    event = wait_status(cfg, event_id, event_pb2.EVENT_STATUS_PROCESSED)
    gated_runs = sorted((r.attempt, r.outcome) for r in event.results if r.operation == "gated")
    # Three failed attempts, then a fresh budget: attempt 1 again, OK. Operations already OK did not run again.
    assert gated_runs == [(1, OK), (1, FAILED), (2, FAILED), (3, FAILED)]
    assert Counter(r.operation for r in event.results if r.outcome == OK) == Counter(
        {"log": 1, "entity": 1, "deliver": 1, "gated": 1}
    )
    assert dead_letters_of(cfg, event_id) == []  # no longer listed as dead
    (redriven,) = dead_letters_of(cfg, event_id, all_states=True)
    assert redriven.state == dl.DEAD_LETTER_STATE_REDRIVEN


def test_purge_needs_confirmation_and_only_marks(stack: Stack, stack_config: PlatformConfig) -> None:
    cfg = stack_config
    event_id = "evt_purge_" + secrets.token_hex(6)
    post(cfg, event_id, "test.poison")
    (dead,) = wait_dead_letter(cfg, event_id)
    with stubs(cfg) as (dead_letters, _):
        with pytest.raises(grpc.RpcError) as refused:
            dead_letters.PurgeDeadLetters(dl.PurgeDeadLettersRequest(ids=[dead.id]), timeout=10)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.RpcError) as unbounded:
            dead_letters.PurgeDeadLetters(dl.PurgeDeadLettersRequest(confirm=True), timeout=10)
        assert unbounded.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        purged = dead_letters.PurgeDeadLetters(dl.PurgeDeadLettersRequest(ids=[dead.id], confirm=True), timeout=10)
        assert purged.purged == 1
        with pytest.raises(grpc.RpcError) as missing:
            list(dead_letters.RedriveDeadLetters(dl.RedriveDeadLettersRequest(ids=["dl_nope"]), timeout=10))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert dead_letters_of(cfg, event_id) == []
    assert [d.state for d in dead_letters_of(cfg, event_id, all_states=True)] == [dl.DEAD_LETTER_STATE_PURGED]
    assert wait_for_event(cfg, "shop", event_id).status == event_pb2.EVENT_STATUS_FAILED  # the event stays


def publish_dead(cfg: PlatformConfig, copies: list[tuple[str, bytes, dict[str, Any]]]) -> None:
    """Puts messages on the events stream's dead-letter queue, as a worker would (message id, body, headers)."""

    async def put() -> None:
        conn = await aio_pika.connect(cfg.rabbitmq.amqp_url, timeout=5)
        try:
            channel = await conn.channel(publisher_confirms=True)
            for message_id, body, headers in copies:
                message = aio_pika.Message(body, message_id=message_id, headers=headers, delivery_mode=2)
                await channel.default_exchange.publish(message, routing_key=events_topology(cfg).dead_queue)
        finally:
            await conn.close()

    asyncio.run(put())


def test_copies_of_one_dead_letter_are_recorded_once(stack: Stack, stack_config: PlatformConfig) -> None:
    """A message can reach the dead-letter queue more than once (a worker killed after the dead-letter copy and
    before its ack; a FAILED event that comes back is dead-lettered again): one death is one row, so a redrive
    by filter sends it once. A copy with other attempts is another death, another row."""
    cfg = stack_config
    event_id = "evt_dlcopy_" + secrets.token_hex(6)
    post(cfg, event_id, "test.poison")
    (dead,) = wait_dead_letter(cfg, event_id)
    later = int(time.time() * 1_000_000)
    headers = {
        "x-attempt": dead.attempts,
        "x-last-error": dead.last_error,
        "x-dead-reason": "failed",
        "receipt-id": dead.headers["receipt-id"],  # a copy keeps the message's headers, its receipt among them
    }
    marker = "evt_dlmark_" + secrets.token_hex(6)
    publish_dead(
        cfg,
        [
            (f"shop/{event_id}", dead.body, {**headers, "x-dead-at": later}),
            (f"shop/{event_id}", dead.body, {**headers, "x-dead-at": later + 1}),
            (f"shop/{event_id}", dead.body, {**headers, "x-attempt": dead.attempts + 1, "x-dead-at": later + 2}),
            (f"shop/{marker}", b"not a protobuf", {**headers, "x-dead-at": later + 3}),
        ],
    )
    # One recorder takes the queue in order, one message at a time: once the marker is recorded, so are the rest.
    listing = dl.DeadLetterFilter(kind=dl.DEAD_LETTER_KIND_PROCESSING, all_states=True)
    deadline = time.monotonic() + 30
    with stubs(cfg) as (dead_letters, _):
        while str(later + 3) not in [d.headers.get("x-dead-at") for d in list_dead_letters(dead_letters, listing)]:
            assert time.monotonic() < deadline, "the marker copy was not recorded"
            time.sleep(0.2)
    found = sorted(dead_letters_of(cfg, event_id, all_states=True), key=lambda d: d.attempts)
    assert [(d.id, d.attempts) for d in found][:1] == [(dead.id, dead.attempts)]  # the first row, kept as it was
    assert [d.attempts for d in found] == [dead.attempts, dead.attempts + 1]


def test_large_dead_letters_are_listed_in_pages_a_default_client_takes(
    stack: Stack, stack_config: PlatformConfig
) -> None:
    """A page of the listing carried every dead letter's message: 1,000 of 5 KB bodies (~5 MB) were refused by
    a client that takes gRPC's default 4 MiB (grpcurl, or this test's channel), and bodies up to the edge's
    limit were read into the control service by the thousand. A page now ends once its messages reach ~3 MiB,
    and its token goes on after its last dead letter."""
    cfg = stack_config
    source = "bigdl_" + secrets.token_hex(4)
    mib = 1024 * 1024
    # Ten days old and already purged: newest-first listings of the other tests reach them last, and no
    # redrive or purge takes them.
    dead_us = now_us() - 10 * 86_400_000_000
    rows = [
        DeadLetter(
            f"dl_{source}_{i}",
            DeadLetterKind.PROCESSING,
            dead_us - i * 1000,
            source=source,
            event_id=f"evt_{i}",
            reason="FAILED",
            headers={"x-attempt": "3"},
            body=bytes([i]) * mib,
            state=DeadLetterState.PURGED,
        )
        for i in range(7)
    ]

    async def put() -> None:
        session = StoreSession.connect(cfg.cassandra)
        try:
            ops = OperationsStore(session)
            for d in rows:
                await ops.put_dead_letter(d)
        finally:
            session.close()

    async def delete() -> None:  # the other tests' listings would read these 7 MiB every time they poll
        session = StoreSession.connect(cfg.cassandra)
        try:
            for d in rows:
                await session.execute(
                    f"DELETE FROM {cfg.cassandra.keyspace}.dead_letters WHERE kind = %s AND day = %s "  # noqa: S608
                    "AND dead_at = %s AND id = %s",
                    (d.kind.value, d.dead_us // 86_400_000_000, ts(d.dead_us), d.id),
                )
        finally:
            session.close()

    asyncio.run(put())
    f = dl.DeadLetterFilter(kind=dl.DEAD_LETTER_KIND_PROCESSING, source=source, all_states=True)
    pages: list[list[Any]] = []
    token = ""
    try:
        with stubs(cfg) as (dead_letters, _):
            while True:
                request = dl.ListDeadLettersRequest(filter=f, page_size=1000, page_token=token)
                reply = dead_letters.ListDeadLetters(request, timeout=30)
                pages.append(list(reply.dead_letters))
                if not (token := reply.next_page_token):
                    break
    finally:
        asyncio.run(delete())
    assert [len(p) for p in pages] == [2, 2, 2, 1]
    listed = [d for p in pages for d in p]
    assert [d.id for d in listed] == [d.id for d in rows]
    assert all(d.body == r.body and dict(d.headers) == r.headers for d, r in zip(listed, rows, strict=True))


def test_replay_one_event_applies_it_again_as_a_replay(stack: Stack, stack_config: PlatformConfig) -> None:
    cfg = stack_config
    event_id = "evt_replay_" + secrets.token_hex(6)
    post(cfg, event_id, "invoice.paid", amount_due=10)
    first = wait_status(cfg, event_id, event_pb2.EVENT_STATUS_PROCESSED)
    with stubs(cfg) as (_, replay):
        replay_id = replay.ReplayEvent(
            replay_pb2.ReplayEventRequest(source="shop", event_id=event_id, reason="test"), timeout=10
        ).replay_id
        with pytest.raises(grpc.RpcError) as missing:
            replay.ReplayEvent(replay_pb2.ReplayEventRequest(source="shop", event_id="evt_nope"), timeout=10)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    deadline = time.monotonic() + 30
    while (event := wait_for_event(cfg, "shop", event_id)).replay_id != replay_id:
        assert time.monotonic() < deadline, "the replay was not processed"
        time.sleep(0.2)
    assert event.replay and event.duplicates == first.duplicates == 0  # a replay is not a duplicate
    assert Counter(r.operation for r in event.results if r.outcome == OK) == Counter(
        {"log": 2, "entity": 2, "deliver": 2}
    )


def test_a_stale_event_and_a_replay_of_it_are_delivered_without_changing_the_entity(
    stack: Stack, stack_config: PlatformConfig
) -> None:
    """The out-of-order guard keeps older state from being applied, not events from subscribers: the older
    event arriving late is STALE with its entity operation skipped and its delivery sent, and a replay of it
    (an event older than its entity's version) delivers it again."""
    cfg = stack_config
    entity_id = "in_stale_" + secrets.token_hex(6)
    newer, older = "evt_newer_" + secrets.token_hex(6), "evt_older_" + secrets.token_hex(6)
    now = int(time.time())
    with Receiver(cfg.tls_dir) as rx, stubs(cfg) as (_, replay):
        sub, _ = subscribe(
            cfg, rx.url("/ooo"), event_types=["invoice.*"], trigger_conditions=f'event.data.object.id == "{entity_id}"'
        )
        post_at(cfg, newer, "invoice.paid", entity_id, now + 10)
        wait_status(cfg, newer, event_pb2.EVENT_STATUS_PROCESSED)
        post_at(cfg, older, "invoice.created", entity_id, now)
        stale = wait_status(cfg, older, event_pb2.EVENT_STATUS_STALE)
        assert stale.last_error.startswith(f"stale: entity {entity_id} is at version {(now + 10) * 1_000_000}")
        assert {(r.operation, r.outcome) for r in stale.results} == {
            ("log", event_pb2.OPERATION_OUTCOME_SKIPPED),
            ("entity", event_pb2.OPERATION_OUTCOME_SKIPPED),
            ("deliver", OK),
        }
        assert sorted(json.loads(r.body)["id"] for r in rx.wait("/ooo", 2)) == sorted([newer, older])

        replay_id = replay.ReplayEvent(
            replay_pb2.ReplayEventRequest(source="shop", event_id=older, reason="test"), timeout=10
        ).replay_id
        again = rx.wait("/ooo", 3)[2]
        assert json.loads(again.body)["id"] == older
        replayed = wait_for_event(cfg, "shop", older)
        assert (replayed.replay_id, replayed.status) == (replay_id, event_pb2.EVENT_STATUS_STALE)
        # Both deliveries of the event to the subscription are listed: the replay's beside the original's (one
        # index row per event and subscription used to hold whichever was recorded last).
        deadline = time.monotonic() + 30
        while True:
            with control(cfg) as stub:
                listed = stub.ListDeliveries(
                    sub_pb.ListDeliveriesRequest(subscription_id=sub.id, source="shop", event_id=older), timeout=10
                ).deliveries
            if len(listed) == 2 and all(d.status == sub_pb.DELIVERY_STATUS_DELIVERED for d in listed):
                break
            assert time.monotonic() < deadline, f"listed {[(d.id, d.status) for d in listed]}"
            time.sleep(0.2)
        assert len({d.id for d in listed}) == 2
    entity = get_entity(cfg, entity_id)
    assert (entity.event_id, entity.version) == (newer, (now + 10) * 1_000_000)


def test_a_replay_job_streams_its_progress_and_can_target_one_subscription(
    stack: Stack, stack_config: PlatformConfig
) -> None:
    cfg = stack_config
    started = time.time() - 1
    marker = "evt_job_" + secrets.token_hex(4)
    ids = [f"{marker}_{i}" for i in range(6)]
    for event_id in ids:
        post(cfg, event_id, "invoice.created" if event_id.endswith(("0", "1")) else "invoice.paid", amount_due=1)
    for event_id in ids:
        wait_status(cfg, event_id, event_pb2.EVENT_STATUS_PROCESSED)
    request = replay_pb2.ReplayEventsRequest(source="shop", event_types=["invoice.created"], rate_per_second=50)
    request.start_time.FromSeconds(int(started))
    request.end_time.FromSeconds(int(time.time()) + 1)
    with Receiver(cfg.tls_dir) as rx, stubs(cfg) as (_, replay):
        sub, _ = subscribe(cfg, rx.url("/replayed"), event_types=["invoice.*"])
        dry = list(replay.ReplayEvents(_with(request, dry_run=True), timeout=30))
        assert dry[-1].progress.state == replay_pb2.REPLAY_STATE_DONE and dry[-1].progress.queued == 0
        matched = dry[-1].progress.matched
        assert matched >= 2  # ours, and any invoice.created of other tests in the window
        progress = [p.progress for p in replay.ReplayEvents(_with(request, subscription_id=sub.id), timeout=60)]
        last = progress[-1]
        assert (last.state, last.queued, last.done, last.failed) == (replay_pb2.REPLAY_STATE_DONE, matched, matched, 0)
        assert (
            replay.GetReplay(replay_pb2.GetReplayRequest(replay_id=last.replay_id), timeout=10).progress.done == matched
        )
        got = rx.wait("/replayed", matched)
        bodies = {json.loads(r.body)["id"] for r in got}
        assert {ids[0], ids[1]} <= bodies and not bodies & set(ids[2:])
        # Bad selections are refused before anything runs.
        for bad, code in (
            (replay_pb2.ReplayEventsRequest(source="shop"), grpc.StatusCode.INVALID_ARGUMENT),
            (_with(request, max_events=10**9), grpc.StatusCode.INVALID_ARGUMENT),
        ):
            with pytest.raises(grpc.RpcError) as refused:
                list(replay.ReplayEvents(bad, timeout=10))
            assert refused.value.code() == code
        wide = replay_pb2.ReplayEventsRequest(source="shop", dry_run=True)
        wide.start_time.FromSeconds(int(time.time()) - 30 * 86400)
        wide.end_time.FromSeconds(int(time.time()))
        with pytest.raises(grpc.RpcError) as too_wide:
            list(replay.ReplayEvents(wide, timeout=10))
        assert too_wide.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        wide.force = True
        assert list(replay.ReplayEvents(wide, timeout=60))[-1].progress.state == replay_pb2.REPLAY_STATE_DONE


def _with(request: Any, **fields: Any) -> Any:
    copy = type(request)()
    copy.CopyFrom(request)
    for k, v in fields.items():
        setattr(copy, k, v)
    return copy
