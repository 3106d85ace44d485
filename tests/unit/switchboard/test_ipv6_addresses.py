"""An IPv6 host in the configuration makes addresses that gRPC, URLs and Prometheus take: ``[::1]:50051``, not
``::1:50051`` (gRPC read that as the address ::0.1.0.0 and refused to bind: found in review)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from switchboard.config import parse_config
from switchboard.config.broker import parse_rabbitmq
from switchboard.config.tracing import parse_tracing
from switchboard.rpc.server import GrpcServer
from switchboard_devstack import stack as stack_module
from switchboard_devstack.stack import Stack

SOURCES = [{"name": "shop", "scheme": "stripe", "secrets": [{"env": "SHOP_SECRET"}]}]


def ipv6_config() -> Any:
    return parse_config(
        {
            "sources": SOURCES,
            "edge": {"bind": "::1"},
            "ingest": {"host": "::1"},
            "query": {"host": "::1"},
            "control": {"host": "::1"},
            "metrics": {"host": "::1", "ingest_port": 9611},
            "cassandra": {"hosts": ["::1"], "managed": False},
        },
        Path("/tmp/switchboard.toml"),
    )


async def test_the_grpc_server_binds_an_ipv6_host() -> None:
    server = GrpcServer("::1", 0, [])
    try:
        assert server.address == "[::1]:0"
    finally:
        await server.server.stop(None)


def test_the_brokers_url_brackets_an_ipv6_host() -> None:
    assert parse_rabbitmq({"host": "::1", "managed": False}).amqp_url == "amqp://guest:guest@[::1]:5682/"


def test_a_collector_at_an_ipv6_address_keeps_its_brackets() -> None:
    assert parse_tracing({"endpoint": "[2001:db8::7]:4317"}).target() == "[2001:db8::7]:4317"
    assert parse_tracing({"endpoint": "http://[::1]:4317"}).target() == "[::1]:4317"


def test_the_stack_dials_shows_and_scrapes_ipv6_hosts_bracketed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    dialled: list[str] = []

    class Channel:
        def __init__(self, target: str) -> None:
            dialled.append(target)

        def __enter__(self) -> Channel:
            raise grpc.RpcError()

        def __exit__(self, *exc: object) -> None:
            pass

    monkeypatch.setattr(grpc, "insecure_channel", Channel)
    assert not stack_module.grpc_serving("::1", 50051, "webhooks.v1.Ingest")
    assert dialled == ["[::1]:50051"]

    text = Stack(ipv6_config()).describe()
    assert "https://[::1]:8443/webhook" in text
    assert "[::1]:50051" in text and "[::1]:50052" in text and "[::1]:9142" in text

    written: dict[str, Any] = {}
    monkeypatch.setattr(stack_module, "write_targets", lambda d, targets: written.update(targets))
    s = Stack(ipv6_config())
    proc = stack_module.ServiceProcess("ingest", "ingest_service", tmp_path / "s.toml", tmp_path, metrics_port=9611)
    s.started.append(proc)
    s._write_targets()
    assert written == {"ingest": [("ingest", "[::1]:9611")]}
