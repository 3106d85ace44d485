"""Fault tests: a steady stream of signed events through the edge while a real process is killed.

Each test sends ``SWITCHBOARD_FAULT_EVENTS`` events (2,000 by default) at ``SWITCHBOARD_FAULT_RATE`` per
second (50), injects its fault a third of the way in, waits for the platform to drain, and then requires:

* every event that got a 200 is stored, listed exactly once in its source's index, and PROCESSED;
* each of its operations has exactly one OK run (applied once: no loss, no double application);
* events that never got a 200 are absent, or stored and applied exactly like the others;
* the sender, retrying like a provider, eventually got a 200 for every event (the platform recovered).

They print sent / 200 / stored / applied / duplicates seen. They use the session's stack (two processors)
and run after the end-to-end tests.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from webhooks.v1 import event_pb2

from switchboard.config import PlatformConfig
from switchboard.queue import Topology
from tests.faults.load import Audit, LoadResult, audit, send_load
from tests.stack_fixture import STRIPE_SECRET

pytestmark = pytest.mark.integration

EVENTS = int(os.environ.get("SWITCHBOARD_FAULT_EVENTS", "2000"))
RATE = float(os.environ.get("SWITCHBOARD_FAULT_RATE", "50"))
PROCESSORS = 2
# The operations the test stack runs for the streams' event types (see tests/stack_fixture.py).
APPLIED = {"invoice.paid": {"log": 1, "entity": 1}, "test.slow": {"log": 1, "entity": 1, "pause": 1}}


def running_processors(stack: Any) -> list[Any]:
    return [p for p in stack.processor_procs if p.is_running()]


def ensure_processors(stack: Any) -> None:
    while len(running_processors(stack)) < PROCESSORS:
        stack.start_processor()
    stack.wait_processors(120)


def run_with_fault(
    stack: Any,
    cfg: PlatformConfig,
    name: str,
    fault: Callable[[], None],
    capsys: pytest.CaptureFixture[str],
    *,
    event_type: str = "invoice.paid",
) -> tuple[LoadResult, Audit]:
    ensure_processors(stack)
    prefix = f"evt_{name}_{secrets.token_hex(3)}"

    async def scenario() -> LoadResult:
        load = asyncio.create_task(
            send_load(cfg, STRIPE_SECRET, prefix=prefix, count=EVENTS, rate=RATE, event_type=event_type)
        )
        await asyncio.sleep(EVENTS / RATE / 3)
        started = time.monotonic()
        await asyncio.to_thread(fault)
        fault_s = time.monotonic() - started
        result = await load
        with capsys.disabled():
            print(f"\n[{name}] fault injected and recovered from in {fault_s:.1f} s")
        return result

    load = asyncio.run(scenario())
    result = audit(cfg, load, prefix=prefix)
    expected = APPLIED[event_type]
    applied_once = sum(1 for eid in result.stored if result.applied(eid) == Counter(expected))
    with capsys.disabled():
        print(
            f"[{name}] sent {len(load.sent)} / 200 {len(load.accepted)} / stored {len(result.stored)}"
            f" / applied once {applied_once} / duplicates seen {result.duplicates_seen}"
            f" (re-sent after a 200: {load.duplicates_sent}, retried after an error: {load.retries},"
            f" errors: {dict(load.errors)})"
        )
    check(load, result, expected)
    return load, result


def check(load: LoadResult, result: Audit, expected: dict[str, int]) -> None:
    assert not result.missing, f"accepted or queued but not stored in a final state: {result.missing[:10]}"
    assert load.accepted == set(load.sent), f"never accepted: {sorted(set(load.sent) - load.accepted)[:10]}"
    assert set(result.listed) <= set(load.sent)
    assert set(result.stored) == set(result.listed) | load.accepted
    listed_twice = {eid: n for eid, n in result.listed.items() if n != 1}
    assert not listed_twice, f"listed more than once: {list(listed_twice.items())[:10]}"
    not_processed = {eid: e.status for eid, e in result.stored.items() if e.status != event_pb2.EVENT_STATUS_PROCESSED}
    assert not not_processed, f"not PROCESSED: {list(not_processed.items())[:10]}"
    wrong = {eid: dict(result.applied(eid)) for eid in result.stored}
    wrong = {eid: runs for eid, runs in wrong.items() if runs != expected}
    assert not wrong, f"not applied exactly once: {list(wrong.items())[:10]}"
    assert result.duplicates_seen >= load.duplicates_sent
    assert result.duplicates_seen <= load.duplicates_sent + load.retries


def unacked(stack: Any, cfg: PlatformConfig) -> int:
    """Messages delivered to consumers and not acked yet, on the work queue."""
    queue = Topology(cfg.rabbitmq.queue_prefix).work_queue
    out = stack.rabbit.rabbitmqctl("list_queues", "-q", "--no-table-headers", "name", "messages_unacknowledged")
    for line in out.stdout.splitlines():
        fields = line.split()
        if fields and fields[0] == queue:
            return int(fields[1])
    raise AssertionError(f"{queue} not listed: {out.stdout!r}")


def test_sigkill_one_processor(stack: Any, stack_config: PlatformConfig, capsys: pytest.CaptureFixture[str]) -> None:
    """The stream's events take 300 ms in an operation, so the victim dies holding messages mid-operation:
    they are redelivered to the other processor and still applied exactly once."""
    in_flight: list[int] = []

    def fault() -> None:
        victim = running_processors(stack)[0]
        in_flight.append(unacked(stack, stack_config))
        victim.kill()
        stack.forget_processor(victim)
        time.sleep(3)  # the other processor carries the stream alone for a while
        stack.start_processor()
        stack.wait_processors(120)

    run_with_fault(stack, stack_config, "kill_processor", fault, capsys, event_type="test.slow")
    with capsys.disabled():
        print(f"[kill_processor] unacked on the work queue just before the kill: {in_flight[0]}")
    assert in_flight[0] > 0, "nothing was in flight when the processor died: the test proved nothing"


def test_sigkill_rabbitmq_and_restart(
    stack: Any, stack_config: PlatformConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    def fault() -> None:
        stack.rabbit.kill()
        time.sleep(2)
        stack.rabbit.start()
        stack.rabbit.wait_ready(180)

    run_with_fault(stack, stack_config, "kill_rabbitmq", fault, capsys)


def test_stop_cassandra_for_20_seconds(
    stack: Any, stack_config: PlatformConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    def fault() -> None:
        stack.cassandra.stop()
        time.sleep(20)
        stack.cassandra.start()
        stack.cassandra.wait_ready(240)

    run_with_fault(stack, stack_config, "stop_cassandra", fault, capsys)


def test_sigkill_ingest(stack: Any, stack_config: PlatformConfig, capsys: pytest.CaptureFixture[str]) -> None:
    def fault() -> None:
        stack.ingest.kill()
        time.sleep(1)
        stack.ingest.start()
        stack.ingest.wait_ready(60)

    run_with_fault(stack, stack_config, "kill_ingest", fault, capsys)
