"""``[metrics]``: where each process serves its Prometheus metrics (``GET /metrics`` on loopback), and the
Prometheus the local stack runs with ``switchboard stack up --with-prometheus``.

A port of 0 means "any free port": the local stack then picks one per process and tells it (environment
variable ``SWITCHBOARD_METRICS_PORT``), and writes where each process listens to ``<data_dir>/metrics/``
(Prometheus file discovery, also read by ``switchboard status``). Processors and delivery workers share a
base port: the one with index N (a processor's ``--member``) listens on base + N.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from switchboard.config._table import Table

# The processes with a metrics endpoint, as named in ``port`` and in Prometheus's job labels.
SERVICES = ("ingest", "query", "control", "processor", "delivery")


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    ingest_port: int = 0
    query_port: int = 0
    control_port: int = 0
    # Base ports: the processor with member index N listens on processor_port + N (delivery worker likewise).
    processor_port: int = 0
    delivery_port: int = 0
    # The managed RabbitMQ node's rabbitmq_prometheus listener (0: its AMQP port + 10000, or a free port).
    rabbitmq_port: int = 0
    # Prometheus itself, when the stack runs it.
    prometheus_port: int = 0
    scrape_interval_seconds: float = 5.0

    def port(self, service: str, index: int = 0) -> int:
        """The configured port of ``service`` (``index``: a processor's or delivery worker's), 0 if any."""
        base = int(getattr(self, f"{service}_port"))
        return base + index if base else 0


def parse_metrics(raw: Mapping[str, Any]) -> MetricsConfig:
    t = Table(raw, "metrics", MetricsConfig)
    ports: dict[str, int] = {}
    for name in (*SERVICES, "rabbitmq", "prometheus"):
        key = f"{name}_port"
        ports[key] = t.port(key) if t.get(key) != 0 else 0
    return MetricsConfig(
        enabled=t.boolean("enabled"),
        host=t.ip("host"),
        scrape_interval_seconds=t.pos_float("scrape_interval_seconds"),
        **ports,
    )
