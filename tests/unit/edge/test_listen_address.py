"""The listener's address: bound to ``::`` Envoy is told to take IPv4 connections too (``ipv4_compat``);
without it, IPv4 senders could not connect (tests/integration/test_edge_envoy.py shows it on a real Envoy)."""

from __future__ import annotations

from edge.envoy_config import listen_address


def test_only_the_ipv6_any_address_takes_ipv4_too() -> None:
    assert listen_address("::", 8443) == {"address": "::", "port_value": 8443, "ipv4_compat": True}
    for bind in ("127.0.0.1", "0.0.0.0", "::1", "fd00::2"):
        assert listen_address(bind, 8443) == {"address": bind, "port_value": 8443}
