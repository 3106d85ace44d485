"""Ports: each 1..65535, those a count implies included (processor N's metrics on processor_port + N), and no
two listeners on one port where their addresses overlap; a ConfigError names both keys (found in review: a
collision showed only when the second process could not bind, after RabbitMQ and Cassandra had started)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from switchboard.config import load_config, parse_config
from switchboard.config.ports import check_ports, listeners
from switchboard.errors import ConfigError
from switchboard_devstack.paths import DevPaths
from switchboard_devstack.stack import Stack

SOURCES = [{"name": "shop", "scheme": "stripe", "secrets": [{"env": "SB_SURELY_UNSET_SECRET"}]}]


def parse(path: Path = Path("/tmp/switchboard.toml"), **sections: Any) -> Any:
    return parse_config({"sources": SOURCES, **sections}, path)


def test_the_default_configuration_has_no_collision() -> None:
    cfg = load_config(DevPaths.default().default_config)
    found = listeners(cfg)
    assert len({(x.host, x.port) for x in found}) == len(found)
    assert {"metrics.processor_port", "metrics.delivery_port", "rabbitmq.port"} <= {x.key for x in found}


def test_the_brokers_default_ports_give_way_to_the_platforms() -> None:
    """The managed node's default metrics and distribution ports (AMQP + 10000, + 20000) used to be listed: a
    configuration with a port there was refused, though the node takes a free port instead of one in use; now
    it also takes a free one instead of one the platform lists."""
    from switchboard_devstack.rabbitmq import _default_dist_port, _default_prometheus_port

    parse(ingest={"port": 25682}, query={"port": 15682})  # no longer a collision
    assert _default_dist_port(5682, avoid={25682}) != 25682
    assert _default_prometheus_port(5682, avoid={15682}) != 15682


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"ingest": {"port": 50052}}, r"^ingest\.port and query\.port: both listen on 127\.0\.0\.1:50052"),
        ({"edge": {"admin_port": 9142}}, r"^edge\.admin_port and cassandra\.port: "),
        ({"tracing": {"local_port": 8443}}, r"^edge\.https_port and tracing\.local_port: "),
        (
            {"processor": {"count": 3}, "metrics": {"processor_port": 9620, "delivery_port": 9622}},
            r"^metrics\.processor_port \+ 2 \(processor 2\) and metrics\.delivery_port: both listen on",
        ),
        (
            {"delivery": {"count": 2, "partitions": 2}, "metrics": {"delivery_port": 9640, "prometheus_port": 9641}},
            r"metrics\.delivery_port \+ 1 \(delivery 1\) and metrics\.prometheus_port",
        ),
        ({"metrics": {"ingest_port": 9620, "processor_port": 9620}}, r"^metrics\.ingest_port and metrics\.processor"),
        # A wildcard bind overlaps every address.
        (
            {"platform": {"services_on_network": True}, "edge": {"bind": "0.0.0.0", "https_port": 50051}},
            r"^edge\.https_port and ingest\.port: both listen on 0\.0\.0\.0:50051 and 127\.0\.0\.1:50051",
        ),
        ({"processor": {"count": 2}, "metrics": {"processor_port": 65535}}, r"metrics\.processor_port \+ 1 .*65535"),
        ({"edge": {"https_port": 0}}, r"edge\.https_port: 0 is not a TCP port"),
    ],
)
def test_a_collision_or_a_port_out_of_range_is_refused_naming_the_keys(sections: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(**sections)


def test_listeners_on_different_addresses_or_not_run_by_the_stack_may_share_a_port() -> None:
    parse(platform={"services_on_network": True}, ingest={"host": "10.0.0.5", "port": 8443})
    parse(rabbitmq={"managed": False, "url": "amqp://broker:5672/", "port": 50051})
    parse(cassandra={"managed": False, "hosts": ["10.0.0.9"], "port": 50051})
    parse(tracing={"endpoint": "off", "local_port": 50051})
    parse(metrics={"enabled": False, "ingest_port": 50051})
    parse(metrics={"rabbitmq_port": 9700}, ingest={"port": 15682})  # the node's metrics are on 9700 then


def test_the_stacks_processor_count_is_checked_before_anything_starts(tmp_path: Path) -> None:
    cfg = parse(tmp_path / "switchboard.toml", metrics={"processor_port": 9620, "delivery_port": 9623})
    check_ports(cfg, processors=3)
    with pytest.raises(ConfigError, match=r"processor_port \+ 3 \(processor 3\) and metrics\.delivery_port"):
        check_ports(cfg, processors=4)
    with pytest.raises(ConfigError, match=r"processor_port \+ 3 \(processor 3\) and metrics\.delivery_port"):
        Stack(cfg, processors=4).up(timeout=1)
