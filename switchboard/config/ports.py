"""The TCP ports a configuration listens on, on one machine, and the check that none collides.

Every port is 1..65535, those a count implies included (the processor with member index N serves its metrics on
``metrics.processor_port + N``, a delivery worker likewise), and no two listeners share a port where their
addresses overlap (the same address, or either one unspecified: ``0.0.0.0`` or ``::``). Listeners of the local
stack's own RabbitMQ and Cassandra nodes, its trace receiver and its Prometheus count only where the stack runs
them. A collision is a ``ConfigError`` naming both keys, at load rather than when the second process cannot
bind (the stack started RabbitMQ and Cassandra first).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from switchboard.addresses import host_port
from switchboard.errors import ConfigError

if TYPE_CHECKING:
    from switchboard.config.platform import PlatformConfig

__all__ = ["Listener", "check_ports", "listeners", "platform_ports"]

MAX_PORT = 65535
LOOPBACK = "127.0.0.1"  # where the local stack's nodes, Envoy's admin and the trace receiver listen
# The managed RabbitMQ node's defaults (switchboard_devstack.rabbitmq): its Prometheus plugin on the AMQP port
# + 10000 when metrics.rabbitmq_port is 0, its Erlang distribution on the AMQP port + 20000.
RABBITMQ_PROMETHEUS_OFFSET = 10000
RABBITMQ_DIST_OFFSET = 20000


@dataclass(frozen=True)
class Listener:
    key: str  # the configuration key, e.g. "metrics.processor_port + 1 (processor 1)"
    host: str
    port: int


def listeners(cfg: PlatformConfig, *, processors: int | None = None) -> list[Listener]:
    """What ``cfg`` listens on; ``processors`` (``stack up --processors``) instead of ``processor.count``."""
    out: list[Listener] = []

    def add(key: str, host: str, port: int) -> None:
        out.append(Listener(key, host, port))

    add("edge.https_port", cfg.edge.bind, cfg.edge.https_port)
    add("edge.admin_port", LOOPBACK, cfg.edge.admin_port)
    for name, service in (("ingest", cfg.ingest), ("query", cfg.query), ("control", cfg.control)):
        add(f"{name}.port", service.host, service.port)
    m = cfg.metrics
    if m.enabled:
        counts = {
            "ingest": 1,
            "query": 1,
            "control": 1,
            "processor": cfg.processor.count if processors is None else processors,
            "delivery": cfg.delivery.count,
        }
        for name, count in counts.items():
            for i in range(count if m.port(name) else 0):
                add(f"metrics.{name}_port" + (f" + {i} ({name} {i})" if i else ""), m.host, m.port(name, i))
    if m.prometheus_port:
        add("metrics.prometheus_port", LOOPBACK, m.prometheus_port)
    r = cfg.rabbitmq
    if r.managed:
        add("rabbitmq.port", LOOPBACK, r.port)
        if m.rabbitmq_port:
            add("metrics.rabbitmq_port", LOOPBACK, m.rabbitmq_port)
        # Its default metrics and distribution ports (AMQP + 10000, + 20000) are not listed: the node takes
        # a free port instead of one the platform lists (RabbitNode's avoid_ports), one in use or one in the
        # kernel's ephemeral range.
    if cfg.cassandra.managed:
        add("cassandra.port", LOOPBACK, cfg.cassandra.port)
        add("cassandra.storage_port", LOOPBACK, cfg.cassandra.storage_port)
    if cfg.tracing.local:
        add("tracing.local_port", LOOPBACK, cfg.tracing.local_port)
    return out


def platform_ports(cfg: PlatformConfig) -> frozenset[int]:
    """Every port ``cfg`` listens on (``listeners``), the stack's broker and store included: no delivery may be
    sent to one of them at an internal address (``switchboard.delivery.urls.check_url``)."""
    ports = {x.port for x in listeners(cfg)} | {cfg.edge.admin_port}
    if cfg.rabbitmq.managed:
        ports.add(cfg.rabbitmq.port)
    if cfg.cassandra.managed:
        ports |= {cfg.cassandra.port, cfg.cassandra.storage_port}
    return frozenset(p for p in ports if p)


def check_ports(cfg: PlatformConfig, *, processors: int | None = None) -> None:
    """``ConfigError`` for a port beyond 65535 or two listeners on one port and overlapping addresses."""
    found = listeners(cfg, processors=processors)
    for a in found:
        if not 0 < a.port <= MAX_PORT:
            raise ConfigError(f"{a.key}: port {a.port} is beyond {MAX_PORT}")
    for i, a in enumerate(found):
        for b in found[i + 1 :]:
            if a.port == b.port and _overlap(a.host, b.host):
                where = (
                    host_port(a.host, a.port)
                    if a.host == b.host
                    else f"{host_port(a.host, a.port)} and {host_port(b.host, b.port)}"
                )
                raise ConfigError(f"{a.key} and {b.key}: both listen on {where}; give each its own port")


def _overlap(a: str, b: str) -> bool:
    x, y = ipaddress.ip_address(a), ipaddress.ip_address(b)
    return x == y or x.is_unspecified or y.is_unspecified
