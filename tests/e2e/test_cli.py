"""The ``switchboard`` command against the running stack: subscriptions, deliveries, dead letters, replays,
tokens, and ``listen`` receiving a real delivery and verifying its signature."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import signal
import subprocess
import sys
import time

import grpc
import pytest
from webhooks.v1 import subscriptions_pb2 as sub_pb

from switchboard.config import PlatformConfig
from switchboard.model.events import Commit, EventStatus, StoredEvent, now_us
from switchboard.store import EntityStore, EventStore, StoreSession
from switchboard_cli.main import main
from switchboard_devstack.ports import free_port
from switchboard_devstack.stack import Stack
from tests.e2e.test_delivery import control
from tests.e2e.test_operations import post
from tests.unit.factories import event

pytestmark = pytest.mark.integration


def cli(cfg: PlatformConfig, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()
    assert main([*args[:1], "--config", str(cfg.path), *args[1:]]) == 0
    return capsys.readouterr().out


def test_subscriptions_deliveries_dead_letters_and_replays_from_the_command_line(
    stack: Stack, stack_config: PlatformConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = stack_config
    created = json.loads(cli(cfg, capsys, "subs", "create", "https://127.0.0.1:9/x", "--types", "invoice.*"))
    sub_id = created["subscription"]["id"]
    assert created["secret"].startswith("whsec_")
    assert sub_id in cli(cfg, capsys, "subs", "list")
    assert (
        json.loads(cli(cfg, capsys, "subs", "disable", sub_id))["subscription"]["status"]
        == "SUBSCRIPTION_STATUS_DISABLED"
    )
    assert json.loads(cli(cfg, capsys, "deliveries", "list", sub_id)) == {}
    assert cli(cfg, capsys, "dlq", "list", "--kind", "processing").startswith("id ")
    dry = cli(cfg, capsys, "replay", "range", "shop", "--minutes", "5", "--dry-run")
    assert "replay rp_" in dry and '"state": "REPLAY_STATE_DONE"' in dry
    token = cli(cfg, capsys, "token", "--client", "cli-test").strip()
    assert token.count(".") == 2
    cli(cfg, capsys, "subs", "delete", sub_id)


def listen_with_subscription(cfg: PlatformConfig, port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "switchboard_cli.main",
            "listen",
            "--config",
            str(cfg.path),
            "--port",
            str(port),
            "--subscribe",
            "--types",
            "invoice.paid",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def until_listening(listener: subprocess.Popen[str]) -> list[str]:
    """The listener's lines up to "listening on" (within 30 s)."""
    assert listener.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 30
    while not any("listening on" in line for line in lines):
        assert time.monotonic() < deadline and listener.poll() is None, lines
        lines.append(listener.stdout.readline())
    return lines


def test_a_listener_whose_terminal_closes_deletes_its_subscription(stack: Stack, stack_config: PlatformConfig) -> None:
    """SIGHUP (its terminal closed) was not handled: the listener died without its cleanup, and its subscription
    kept pointing at a port nobody listened on (every matching event a failing delivery, then a dead letter)."""
    listener = listen_with_subscription(stack_config, free_port())
    lines = until_listening(listener)
    subscription_id = next(line.split()[1] for line in lines if line.startswith("subscription "))
    listener.send_signal(signal.SIGHUP)
    out, _ = listener.communicate(timeout=30)
    assert f"subscription {subscription_id} deleted" in out and listener.returncode == 0
    with control(stack_config) as stub, pytest.raises(grpc.RpcError) as gone:
        stub.GetSubscription(sub_pb.GetSubscriptionRequest(id=subscription_id), timeout=10)
    assert gone.value.code() is grpc.StatusCode.NOT_FOUND


def test_listen_receives_a_delivery_and_verifies_its_signature(stack: Stack, stack_config: PlatformConfig) -> None:
    cfg = stack_config
    port = free_port()
    listener = listen_with_subscription(cfg, port)
    try:
        assert listener.stdout is not None
        lines = until_listening(listener)
        deadline = time.monotonic() + 30
        time.sleep(0.5)  # the new subscription reaches the processors' caches
        event_id = "evt_listen_" + secrets.token_hex(6)
        post(cfg, event_id, "invoice.paid", amount_due=1)
        while not any(event_id in line for line in lines):
            assert time.monotonic() < deadline + 30, lines
            lines.append(listener.stdout.readline())
        assert any("signature ok" in line for line in lines), lines
    finally:
        listener.terminate()
        out, _ = listener.communicate(timeout=30)
    assert "deleted" in out  # the listener's own subscription is removed when it stops


def test_events_get_reads_an_event_over_grpcs_default_message_limit(
    stack: Stack, stack_config: PlatformConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    """A source may take bodies of up to 16 MiB: the CLI's channel kept gRPC's 4 MiB default, and ``events get``
    of a 5 MB event failed with RESOURCE_EXHAUSTED."""
    body = secrets.token_bytes(5_000_000)
    e = event(event_id=f"evt_big_{secrets.token_hex(4)}", received_us=now_us(), body=body, entity_id="")

    async def store() -> None:
        session = StoreSession.connect(stack_config.cassandra)
        try:
            await EventStore(session, EntityStore(session)).commit([Commit(StoredEvent(e, EventStatus.PROCESSED))])
        finally:
            session.close()

    asyncio.run(store())
    got = json.loads(cli(stack_config, capsys, "events", "get", e.source, e.event_id))
    assert base64.b64decode(got["event"]["body"]) == body
