"""The managed RabbitMQ node's default metrics (AMQP port + 10000) and Erlang distribution (+ 20000) ports."""

from __future__ import annotations

from pathlib import Path

import pytest

from switchboard_devstack.ports import ephemeral_range, port_is_free
from switchboard_devstack.rabbitmq import RabbitNode


def node(tmp_path: Path, port: int) -> RabbitNode:
    return RabbitNode(tmp_path / "rabbitmq", port, nodename="sbports")


def test_a_default_that_falls_in_the_ephemeral_range_gives_way_to_a_free_port_below_it(tmp_path: Path) -> None:
    """A test stack's AMQP port comes from free_port (just below the range): + 20000 lands in the range, where an
    outgoing connection could take it between the check and the node's bind (eaddrinuse)."""
    low, high = ephemeral_range()
    if low < 20_000 + 1_000 or low + 100 > high:
        pytest.skip(f"an unusual ephemeral range here: {low}-{high}")
    amqp = low - 20_000 + 100  # + 20000 = low + 100; + 10000 is below the range
    n = node(tmp_path, amqp)
    assert n.dist_port < low, f"distribution port {n.dist_port} in the ephemeral range {low}-{high}"
    amqp = low - 10_000 + 100  # + 10000 = low + 100
    n = node(tmp_path, amqp)
    assert n.prometheus_port < low, f"metrics port {n.prometheus_port} in the ephemeral range {low}-{high}"
    assert n.dist_port < low


def test_a_default_below_the_ephemeral_range_and_free_is_kept(tmp_path: Path) -> None:
    """The shipped configuration's node (AMQP 5682): distribution on 25682, where it is free."""
    low, _ = ephemeral_range()
    if low <= 25682 or not port_is_free(25682):
        pytest.skip("25682 is in the ephemeral range or in use here")
    assert node(tmp_path, 5682).dist_port == 25682
