"""Free ports for the local stack's components: below the kernel's ephemeral range, on the host they bind."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from switchboard.config import parse_config
from switchboard_devstack.ports import ephemeral_range, free_port, port_is_free
from switchboard_devstack.stack import Stack


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
def test_a_free_port_on_an_ipv6_host_is_one_that_host_can_bind() -> None:
    """free_port always opened an IPv4 socket, so free_port("::1") (metrics.host = "::1" with port 0, which the
    stack gives a free port) failed after 200 tries."""
    port = free_port("::1")
    assert port < ephemeral_range()[0]
    assert port_is_free(port, "::1")
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as listener:
        listener.bind(("::1", port))
        listener.listen()
        assert not port_is_free(port, "::1")


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
def test_the_stack_gives_a_process_a_metrics_port_on_an_ipv6_metrics_host(tmp_path: Path) -> None:
    raw = {
        "platform": {"data_dir": str(tmp_path / "var")},
        "sources": [{"name": "demo", "scheme": "github", "secrets": [{"env": "UNUSED_SECRET"}]}],
        "metrics": {"host": "::1"},  # every port 0: the stack picks free ones
    }
    port = Stack(parse_config(raw, tmp_path / "switchboard.toml"))._metrics_port("query")
    assert port is not None and port_is_free(port, "::1")


def test_a_port_something_listens_on_is_not_free() -> None:
    port = free_port()
    assert port_is_free(port)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen()
        assert not port_is_free(port)
