"""``switchboard status`` probes an existing broker where the services connect (its url), not on the managed
node's host and port (it probed 127.0.0.1:5682 whatever the url said)."""

from __future__ import annotations

from pathlib import Path

import pytest

from switchboard.config import parse_config
from switchboard_cli import status

SOURCES = [{"name": "shop", "scheme": "stripe", "secrets": [{"env": "SHOP_SECRET"}]}]


def test_an_existing_broker_is_probed_at_its_urls_host_and_port(monkeypatch: pytest.MonkeyPatch) -> None:
    probed: list[tuple[str, int]] = []

    def tcp_open(host: str, port: int) -> bool:
        probed.append((host, port))
        return True

    monkeypatch.setattr(status, "grpc_health", lambda address, service: "UNREACHABLE")
    monkeypatch.setattr(status, "http_get", lambda url: (0, b""))
    monkeypatch.setattr(status, "tcp_open", tcp_open)
    cfg = parse_config(
        {"sources": SOURCES, "rabbitmq": {"url": "amqp://svc:s3cr3t@broker.internal:5999/prod"}},
        Path("/tmp/switchboard.toml"),
    )
    rows = status._components(cfg, {}, {}, status.Samples())
    rabbit = next(r for r in rows if r["name"] == "rabbitmq")
    assert ("broker.internal", 5999) in probed
    assert rabbit["address"] == "broker.internal:5999" and rabbit["ok"]
