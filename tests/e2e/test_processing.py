"""Processing guarantees through the real stack: retries with backoff through the delay queues, FAILED and
dead-lettered after the attempt limit, the out-of-order guard, and one application per key when two
processors race on many receipts of the same events."""

from __future__ import annotations

import json
import secrets
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from webhooks.v1 import event_pb2, query_pb2
from webhooks.v1.dead_letters_pb2 import DEAD_LETTER_KIND_PROCESSING

from switchboard.config import PlatformConfig
from switchboard_devstack.stack import Stack
from tests.e2e.helpers import (
    edge_client,
    get_entity,
    log_lines,
    paused_events,
    query_stub,
    stripe_headers,
    wait_for_dead_letters,
    wait_for_event,
)
from tests.stack_fixture import MAX_ATTEMPTS, STRIPE_SECRET

pytestmark = pytest.mark.integration

OK = event_pb2.OPERATION_OUTCOME_OK
FAILED = event_pb2.OPERATION_OUTCOME_FAILED
SKIPPED = event_pb2.OPERATION_OUTCOME_SKIPPED


def invoice_event(event_id: str, event_type: str, entity_id: str, created: int) -> bytes:
    payload = {
        "id": event_id,
        "object": "event",
        "type": event_type,
        "created": created,
        "data": {"object": {"id": entity_id, "object": "invoice", "status": event_type.split(".")[-1]}},
    }
    return json.dumps(payload, separators=(",", ":")).encode()


def deliver(cfg: PlatformConfig, body: bytes) -> int:
    with edge_client(cfg) as client:
        resp = client.post("/webhook/shop", content=body, headers=stripe_headers(STRIPE_SECRET, body))
    return resp.status_code


def post(cfg: PlatformConfig, body: bytes) -> None:
    assert deliver(cfg, body) == 200


def wait_for_status(cfg: PlatformConfig, event_id: str, status: int, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        event = wait_for_event(cfg, "shop", event_id, timeout=timeout)
        if event.status == status:
            return event
        assert time.monotonic() < deadline, f"{event_id} stayed {event_pb2.EventStatus.Name(event.status)}"
        time.sleep(0.1)


def ok_runs(event: Any) -> Counter[str]:
    return Counter(r.operation for r in event.results if r.outcome == OK)


def test_failed_operation_is_retried_with_backoff_and_done_operations_are_not_rerun(
    stack: Stack, stack_config: PlatformConfig
) -> None:
    event_id = "evt_flaky_" + secrets.token_hex(6)
    post(stack_config, invoice_event(event_id, "test.flaky", "in_fl_" + event_id[-12:], int(time.time())))
    event = wait_for_status(stack_config, event_id, event_pb2.EVENT_STATUS_PROCESSED)

    assert event.attempts == 3 and event.last_error == ""
    flaky = sorted(
        (r.attempt, r.outcome, r.finished_at.ToMicroseconds()) for r in event.results if r.operation == "flaky"
    )
    assert [(a, o) for a, o, _ in flaky] == [(1, FAILED), (2, FAILED), (3, OK)]
    # The delay queue held each retry for at least half of its level (200 ms, then 400 ms).
    assert flaky[1][2] - flaky[0][2] >= 100_000
    assert flaky[2][2] - flaky[1][2] >= 200_000
    # log and entity succeeded on attempt 1 and were not run again by the retries.
    assert ok_runs(event) == Counter({"log": 1, "entity": 1, "deliver": 1, "flaky": 1})
    assert {r.attempt for r in event.results if r.operation != "flaky"} == {1}


def test_event_failing_every_attempt_is_failed_dead_lettered_and_listed(
    stack: Stack, stack_config: PlatformConfig
) -> None:
    started = time.time()
    event_id = "evt_poison_" + secrets.token_hex(6)
    post(stack_config, invoice_event(event_id, "test.poison", "in_po_" + event_id[-12:], int(time.time())))
    event = wait_for_status(stack_config, event_id, event_pb2.EVENT_STATUS_FAILED)

    assert event.attempts == MAX_ATTEMPTS
    assert event.last_error == "poison: ValueError: cannot apply this event"
    poison = [(r.attempt, r.outcome, r.error) for r in event.results if r.operation == "poison"]
    assert sorted(poison) == [(a, FAILED, "ValueError: cannot apply this event") for a in range(1, MAX_ATTEMPTS + 1)]
    assert ok_runs(event) == Counter({"log": 1, "entity": 1, "deliver": 1})

    # Its message went to the dead-letter queue with the last error, exactly once: the control
    # service records it, and a second copy would be a second record.
    mine = wait_for_dead_letters(stack_config, DEAD_LETTER_KIND_PROCESSING, {"event_id": event_id})
    time.sleep(1.0)
    mine = wait_for_dead_letters(stack_config, DEAD_LETTER_KIND_PROCESSING, {"event_id": event_id}, timeout=0)
    assert len(mine) == 1
    assert (mine[0].source, mine[0].reason, mine[0].attempts) == ("shop", "FAILED", MAX_ATTEMPTS)
    assert mine[0].headers["x-attempt"] == str(MAX_ATTEMPTS)
    assert mine[0].last_error == event.last_error

    # Query finds it without knowing its id: ListEvents filtered on FAILED.
    channel, stub = query_stub(stack_config)
    try:
        request = query_pb2.ListEventsRequest(source="shop", status=event_pb2.EVENT_STATUS_FAILED, page_size=50)
        request.start_time.FromMicroseconds(int((started - 5) * 1_000_000))
        found: list[Any] = []
        while True:
            page = stub.ListEvents(request, timeout=10)
            found += page.events
            if not page.next_page_token:
                break
            request.page_token = page.next_page_token
    finally:
        channel.close()
    assert [e.event_id for e in found if e.event_id == event_id] == [event_id]
    assert all(e.status == event_pb2.EVENT_STATUS_FAILED for e in found)


def test_older_event_arriving_after_a_newer_one_is_stale_and_not_applied(
    stack: Stack, stack_config: PlatformConfig
) -> None:
    entity_id = "in_ooo_" + secrets.token_hex(6)
    t = int(time.time())
    paid_id, created_id = "evt_paid_" + secrets.token_hex(6), "evt_created_" + secrets.token_hex(6)
    paid = invoice_event(paid_id, "invoice.paid", entity_id, t + 10)
    post(stack_config, paid)
    wait_for_status(stack_config, paid_id, event_pb2.EVENT_STATUS_PROCESSED)
    post(stack_config, invoice_event(created_id, "invoice.created", entity_id, t))

    stale = wait_for_status(stack_config, created_id, event_pb2.EVENT_STATUS_STALE)
    assert stale.last_error.startswith(f"stale: entity {entity_id} is at version {(t + 10) * 1_000_000}")
    assert {(r.operation, r.outcome) for r in stale.results} == {
        ("log", SKIPPED),
        ("entity", SKIPPED),
        ("deliver", OK),  # it delivers to subscribers (none here): tests/e2e/test_operations.py
    }
    entity = get_entity(stack_config, entity_id)
    assert (entity.version, entity.event_id, entity.event_type) == ((t + 10) * 1_000_000, paid_id, "invoice.paid")
    assert entity.state == paid and entity.state_event_id == paid_id

    # In arrival order, both are applied and the entity ends at the newer one as well.
    other = "in_ord_" + secrets.token_hex(6)
    first, second = "evt_c_" + secrets.token_hex(6), "evt_p_" + secrets.token_hex(6)
    post(stack_config, invoice_event(first, "invoice.created", other, t))
    wait_for_status(stack_config, first, event_pb2.EVENT_STATUS_PROCESSED)
    post(stack_config, invoice_event(second, "invoice.paid", other, t + 10))
    wait_for_status(stack_config, second, event_pb2.EVENT_STATUS_PROCESSED)
    assert get_entity(stack_config, other).event_id == second

    with pytest.raises(grpc.RpcError) as missing:
        get_entity(stack_config, "in_never_seen")
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def outcomes_since(logs: dict[Path, int], outcome: str) -> dict[Path, int]:
    """Per processor log, the ``outcome`` count of the stats lines written after the given offsets."""
    return {
        log: sum(int(x.get(outcome, 0)) for x in log_lines(log, offset) if x.get("msg") == "processor stats")
        for log, offset in logs.items()
    }


def share_partitions(cfg: PlatformConfig, logs: list[Path], timeout: float = 90.0) -> None:
    """Sends rounds of 20 fresh events until every processor took at least 4 of a round (a processor that just
    joined gets partitions handed over one per rebalance tick, only while there is traffic)."""
    deadline = time.monotonic() + timeout
    while True:
        offsets = {log: log.stat().st_size for log in logs}
        ids = ["evt_share_" + secrets.token_hex(6) for _ in range(20)]
        for event_id in ids:
            post(cfg, invoice_event(event_id, "invoice.paid", "in_share_" + event_id[-12:], int(time.time())))
        for event_id in ids:
            wait_for_status(cfg, event_id, event_pb2.EVENT_STATUS_PROCESSED)
        time.sleep(1.5)  # the processors' stats lines come once a second
        seen = outcomes_since(offsets, "processed")
        if min(seen.values()) >= 4:
            return
        assert time.monotonic() < deadline, f"the processors did not share the partitions: {seen}"
        time.sleep(1.0)


def test_receipts_racing_on_two_processors_apply_each_event_once(stack: Stack, stack_config: PlatformConfig) -> None:
    processors = stack.ensure_processors(2)
    share_partitions(stack_config, [p.log_path for p in processors])
    offsets = {p.log_path: p.log_path.stat().st_size for p in processors}
    events = {"evt_race_" + secrets.token_hex(6): 0 for _ in range(40)}
    copies = 8
    bodies = {
        event_id: invoice_event(event_id, "invoice.paid", "in_race_" + event_id[-12:], int(time.time()))
        for event_id in events
    }

    # Every copy of every event at once, interleaved, so both processors hold receipts of the same keys.
    jobs = [event_id for _ in range(copies) for event_id in events]
    with ThreadPoolExecutor(max_workers=16) as pool:
        codes = list(pool.map(lambda eid: deliver(stack_config, bodies[eid]), jobs))
    assert codes == [200] * len(jobs)

    for event_id in events:
        event = wait_for_status(stack_config, event_id, event_pb2.EVENT_STATUS_PROCESSED)
        deadline = time.monotonic() + 30
        while event.duplicates < copies - 1 and time.monotonic() < deadline:
            time.sleep(0.1)
            event = wait_for_event(stack_config, "shop", event_id)
        assert event.duplicates == copies - 1, event_id
        assert ok_runs(event) == Counter({"log": 1, "entity": 1, "deliver": 1}), event_id
    # Both processors handled copies (their stats lines, once a second in the test stack), so the race crossed
    # processes and was not settled by one process's own ordering alone.
    deadline = time.monotonic() + 10
    expected = len(events) * (copies - 1)
    while sum((seen := outcomes_since(offsets, "duplicate")).values()) < expected and time.monotonic() < deadline:
        time.sleep(0.5)
    assert sum(seen.values()) >= expected
    assert all(n > 0 for n in seen.values()), f"one processor saw no copy: {seen}"


def test_sigterm_stops_a_processor_after_its_in_flight_messages(stack: Stack, stack_config: PlatformConfig) -> None:
    """Each event spends 300 ms in an operation; a processor told to stop finishes what it started and exits 0:
    every event it started is committed and acked by it (none is redone by the other processor), and every
    event is applied exactly once."""
    victim = stack.ensure_processors(2)[0]
    prefix = "evt_term_" + secrets.token_hex(4) + "_"
    events = [prefix + secrets.token_hex(6) for _ in range(80)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        codes = list(
            pool.map(
                lambda eid: deliver(
                    stack_config, invoice_event(eid, "test.slow", "in_t_" + eid[-12:], int(time.time()))
                ),
                events,
            )
        )
    assert codes == [200] * len(events)
    assert victim.terminate(30) == 0
    stack.forget_processor(victim)
    stack.start_processor()

    lines = log_lines(victim.log_path)
    stopping = [x for x in lines if str(x["msg"]).startswith("processor stopping")][-1]
    stopped = [x for x in lines if x["msg"] == "processor stopped"][-1]
    assert stopping["in_flight"] > 0, "the processor held nothing when told to stop: the test proved nothing"
    assert (stopped["drained"], stopped["left_unacked"]) == (True, 0)
    for event_id in events:
        event = wait_for_status(stack_config, event_id, event_pb2.EVENT_STATUS_PROCESSED)
        assert ok_runs(event) == Counter({"log": 1, "entity": 1, "deliver": 1, "pause": 1}), event_id
    # Drained means acked: had the victim left a started event unacked, the broker would have handed it to the
    # other processor, which would have started it again.
    started_by_victim = paused_events(victim.log_path, prefix)
    started_elsewhere: set[str] = set()
    for log in stack.log_dir.glob("processor-*.log"):
        if log != victim.log_path:
            started_elsewhere |= paused_events(log, prefix)
    assert started_by_victim, "the victim started none of the events: the test proved nothing"
    assert not started_by_victim & started_elsewhere, "events the victim started were redone elsewhere"
