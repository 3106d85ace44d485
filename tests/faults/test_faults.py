"""Fault tests: a steady stream of signed events through the edge while a real process is killed.

Each test sends ``SWITCHBOARD_FAULT_EVENTS`` events (3,000 by default) at ``SWITCHBOARD_FAULT_RATE`` per
second (75), injects its fault a third of the way in, waits for the platform to drain, and then requires:

* evidence that the fault happened and hit work in progress (a test that cannot show it proved nothing);
* every event that got a 200 is stored, listed exactly once in its source's index, and PROCESSED;
* each of its operations has exactly one OK run (applied once: no loss, no double application);
* events that never got a 200 are absent, or stored and applied exactly like the others;
* the sender, retrying like a provider, eventually got a 200 for every event (the platform recovered).

They print sent / 200 / stored / applied / duplicates seen. They share a stack of their own (``own_stack``,
two processors), so the outages they cause never reach another test.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from webhooks.v1 import event_pb2

from switchboard.config import PlatformConfig
from switchboard_devstack.stack import ServiceProcess, Stack
from tests.e2e.helpers import log_lines, paused_events
from tests.faults.load import Audit, LoadResult, audit, send_load
from tests.stack_fixture import STRIPE_SECRET

pytestmark = pytest.mark.integration

EVENTS = int(os.environ.get("SWITCHBOARD_FAULT_EVENTS", "3000"))
RATE = float(os.environ.get("SWITCHBOARD_FAULT_RATE", "75"))
PROCESSORS = 2
# The operations the test stack runs for the streams' event types (see tests/stack_fixture.py).
APPLIED = {
    "invoice.paid": {"log": 1, "entity": 1, "deliver": 1},
    "test.slow": {"log": 1, "entity": 1, "deliver": 1, "pause": 1},
}


def run_with_fault(
    stack: Stack,
    cfg: PlatformConfig,
    name: str,
    fault: Callable[[], None],
    capsys: pytest.CaptureFixture[str],
    *,
    event_type: str = "invoice.paid",
) -> tuple[LoadResult, Audit]:
    stack.ensure_processors(PROCESSORS)
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


def busy_processor(stack: Stack, timeout: float = 20.0) -> ServiceProcess:
    """The first processor seen starting a ``pause`` operation (300 ms) from now on: killed at once, it dies
    in the middle of that event. (Picking one blindly could pick one that holds no partition just then.)"""
    processors = stack.ensure_processors(PROCESSORS)
    offsets = {p.log_path: p.log_path.stat().st_size for p in processors}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.02)
        for p in processors:
            with open(p.log_path, "rb") as fh:
                fh.seek(offsets[p.log_path])
                chunk = fh.read()
            complete = chunk[: chunk.rfind(b"\n") + 1]
            offsets[p.log_path] += len(complete)
            if b'"pause started"' in complete:
                return p
    raise AssertionError(f"no processor started an operation within {timeout:g} s")


def test_sigkill_one_processor(own_stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    """The stream's events spend 300 ms in an operation, so the victim dies in the middle of some: those are
    redelivered to another processor, run there, and still applied exactly once."""
    stack = own_stack
    victims = []

    def fault() -> None:
        victim = busy_processor(stack)
        victims.append(victim)
        victim.kill()
        stack.forget_processor(victim)
        time.sleep(3)  # the other processor carries the stream alone for a while
        stack.start_processor()
        stack.wait_processors(120)

    load, _ = run_with_fault(stack, stack.cfg, "kill_processor", fault, capsys, event_type="test.slow")
    prefix = load.sent[0].rsplit("_", 1)[0]
    by_victim = paused_events(victims[0].log_path, prefix + "_")
    elsewhere: set[str] = set()
    for log in stack.log_dir.glob("processor-*.log"):
        if log != victims[0].log_path:
            elsewhere |= paused_events(log, prefix + "_")
    redone = by_victim & elsewhere
    with capsys.disabled():
        print(f"[kill_processor] started by the victim: {len(by_victim)}, of which redone elsewhere: {len(redone)}")
    assert redone, "the victim held no event in the middle of its operations: the test proved nothing"


def socket_ports(pid: int) -> set[int]:
    """The local TCP ports of ``pid``'s sockets (from ``/proc``)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            next(fh)
            for line in fh:
                fields = line.split()
                if fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_a_live_processor_cut_off_from_the_broker(own_stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    """The broker closes every connection of a processor that is in the middle of an operation (as a network
    cut would, once heartbeats time out), while the process lives on and can still reach Cassandra. Its
    partitions fail over to the other processor at once. The victim finishes the operations of the batch it
    started, finds the receipts' channel closed before its commit and leaves them out (``abandoned``), or,
    had its commit already gone out, its acks fail; either way the other processor gets those receipts
    redelivered (after the redelivery delay) and applies them, or finds them committed (``redelivered``).
    The victim reconnects. (The remaining window,
    a commit landing after the next processor's read, needs a commit slower than the redelivery delay: see
    docs/processing.md.)"""
    stack = own_stack
    rabbit = stack.rabbit
    assert rabbit is not None
    victims: list[ServiceProcess] = []
    closed: list[str] = []
    offsets: dict[Path, int] = {}

    def fault() -> None:
        offsets.update({p.log_path: p.log_path.stat().st_size for p in stack.processor_procs})
        # Each processor's connections are listed before the wait, and closed all at once after it: listed and
        # closed one by one after the operation started (a rabbitmqctl call takes a second on a busy box), the
        # cut could land after the victim's batch was over, and hit no work in progress (seen in a full run).
        conns = {p.log_path: connections_of(p) for p in stack.ensure_processors(PROCESSORS)}
        victim = busy_processor(stack)
        victims.append(victim)
        assert victim.pid is not None
        mine = conns.get(victim.log_path) or connections_of(victim)  # a processor started meanwhile: listed now
        offsets.setdefault(victim.log_path, 0)  # and its stats read from its log's start
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(
                pool.map(
                    lambda conn: rabbit.rabbitmqctl("close_connection", conn, "fault test: processor cut off"), mine
                )
            )
        closed.extend(mine)
        time.sleep(5)

    def connections_of(proc: ServiceProcess) -> list[str]:
        """The broker's connections (their Erlang pids) whose client port is one of ``proc``'s sockets."""
        assert proc.pid is not None and rabbit is not None
        ports = socket_ports(proc.pid)
        listing = rabbit.rabbitmqctl("list_connections", "pid", "peer_port", "--no-table-headers", "--quiet")
        conns = []
        for line in listing.stdout.splitlines():
            conn, _, port = line.strip().rpartition("\t")
            if port.isdigit() and int(port) in ports:
                conns.append(conn)
        return conns

    run_with_fault(stack, stack.cfg, "cut_processor", fault, capsys, event_type="test.slow")
    victim = victims[0]
    stats = [x for log, offset in offsets.items() for x in log_lines(log, offset) if x.get("msg") == "processor stats"]
    redelivered = sum(int(x.get("redelivered", 0)) for x in stats)
    abandoned = sum(int(x.get("abandoned", 0)) for x in stats)
    reconnected = [c for c in connections_of(victim) if c not in closed] if victim.is_running() else []
    with capsys.disabled():
        print(
            f"[cut_processor] connections closed: {len(closed)}, reopened since: {len(reconnected)};"
            f" receipts left out of the victim's commit: {abandoned}, found committed on redelivery: {redelivered}"
        )
    assert closed, "no connection of the victim was found at the broker"
    assert victim.is_running(), "the victim died: this was meant to cut it off, not to kill it"
    assert len(reconnected) >= len(closed), "the victim did not reconnect"
    assert abandoned + redelivered > 0, "no receipt the victim held came back: the cut hit no work in progress"


def test_sigkill_rabbitmq_and_restart(own_stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    rabbit = own_stack.rabbit
    assert rabbit is not None
    pids: list[int | None] = [rabbit.pid]

    def fault() -> None:
        rabbit.kill()
        time.sleep(2)
        rabbit.start()
        rabbit.wait_ready(180)
        pids.append(rabbit.pid)

    load, _ = run_with_fault(own_stack, own_stack.cfg, "kill_rabbitmq", fault, capsys)
    assert pids[0] != pids[1], "the broker was not restarted"
    # The sender saw the outage: ingest answered 503 while the broker was gone, and the sender retried.
    assert load.errors["http 503"] > 0 and load.retries > 0, f"no 503 during the outage: {dict(load.errors)}"


def test_stop_cassandra_for_20_seconds(own_stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    cassandra = own_stack.cassandra
    assert cassandra is not None
    offsets: dict[Path, int] = {}

    def fault() -> None:
        offsets.update({p.log_path: p.log_path.stat().st_size for p in own_stack.processor_procs})
        cassandra.stop()
        time.sleep(20)
        cassandra.start()
        cassandra.wait_ready(240)

    run_with_fault(own_stack, own_stack.cfg, "stop_cassandra", fault, capsys)
    # The processors held their messages and retried the store while it was down.
    retries = sum(
        1
        for log, offset in offsets.items()
        for x in log_lines(log, offset)
        if str(x.get("msg", "")).startswith("store unavailable")
    )
    with capsys.disabled():
        print(f"[stop_cassandra] store-unavailable retries logged by the processors: {retries}")
    assert retries > 0, "no processor waited for the store: the outage hit no work in progress"


def test_sigkill_ingest(own_stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    ingest = own_stack.ingest
    assert ingest is not None
    pids: list[int | None] = [ingest.pid]

    def fault() -> None:
        ingest.kill()
        time.sleep(1)
        ingest.start()
        ingest.wait_ready(60)
        pids.append(ingest.pid)

    load, _ = run_with_fault(own_stack, own_stack.cfg, "kill_ingest", fault, capsys)
    assert pids[0] != pids[1], "ingest was not restarted"
    assert load.retries > 0, f"no request failed while ingest was down: {dict(load.errors)}"
