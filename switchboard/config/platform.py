"""The platform configuration: one TOML file, parsed once into frozen value objects, one section each.

Each service's ``main`` loads it and keeps only the part it needs. Relative paths are resolved against
the directory holding the configuration file. Anything unsafe or unknown raises ``ConfigError`` naming the
key, so that services refuse to start rather than guess.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from switchboard.config._table import Table, known, table
from switchboard.config.broker import RabbitConfig, parse_rabbitmq
from switchboard.config.delivery import ControlConfig, DeliveryConfig, parse_control, parse_delivery
from switchboard.config.edge import EdgeConfig, parse_edge
from switchboard.config.metrics import MetricsConfig, parse_metrics
from switchboard.config.ports import check_ports
from switchboard.config.processor import ProcessorConfig, parse_processor
from switchboard.config.services import IngestConfig, QueryConfig, parse_ingest, parse_query
from switchboard.config.sources import SourceConfig, parse_sources
from switchboard.config.store import CassandraConfig, parse_cassandra
from switchboard.config.tracing import TracingConfig, parse_tracing
from switchboard.errors import ConfigError

LOG_LEVELS = frozenset({"DEBUG", "INFO", "WARNING", "ERROR"})
SECTIONS = (
    "platform",
    "edge",
    "ingest",
    "query",
    "control",
    "processor",
    "delivery",
    "rabbitmq",
    "cassandra",
    "metrics",
    "tracing",
    "sources",
)
CONFIG_ENV = "SWITCHBOARD_CONFIG"


@dataclass(frozen=True)
class PlatformSettings:
    """``[platform]``."""

    data_dir: str = "var"
    log_level: str = "INFO"
    # The gRPC services (ingest, query, control) trust their callers: Envoy checks sources, allowlists, rate
    # limits, body limits and clients' tokens in front of them. Bound beyond loopback, they can be called
    # around Envoy; true only where the network they listen on is the platform's own.
    services_on_network: bool = False


@dataclass(frozen=True)
class PlatformConfig:
    path: Path
    data_dir: Path
    log_level: str
    edge: EdgeConfig = field(default_factory=EdgeConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    query: QueryConfig = field(default_factory=QueryConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    processor: ProcessorConfig = field(default_factory=ProcessorConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    rabbitmq: RabbitConfig = field(default_factory=RabbitConfig)
    cassandra: CassandraConfig = field(default_factory=CassandraConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)
    sources: tuple[SourceConfig, ...] = ()

    def source(self, name: str) -> SourceConfig | None:
        for src in self.sources:
            if src.name == name:
                return src
        return None

    @property
    def tls_dir(self) -> Path:
        return self.data_dir / "tls"

    @property
    def traces_db(self) -> Path:
        """Where the local trace receiver keeps spans (``[tracing] endpoint = "local"``)."""
        return self.data_dir / "traces" / "spans.db"

    def event_types(self, sources: Sequence[str] = ()) -> tuple[str, ...] | None:
        """The event types the named sources (all when empty) declare, or None when one of them declares
        none (then any type is possible)."""
        chosen = [s for s in self.sources if not sources or s.name in sources]
        if not chosen or any(not s.event_types for s in chosen):
            return None
        return tuple(sorted({t for s in chosen for t in s.event_types}))


def default_config_path() -> Path:
    """``$SWITCHBOARD_CONFIG``, else ``switchboard.toml`` in the current directory."""
    return Path(os.environ.get(CONFIG_ENV) or "switchboard.toml")


def load_config(path: Path | str | None = None) -> PlatformConfig:
    cfg_path = Path(path) if path else default_config_path()
    try:
        raw = tomllib.loads(cfg_path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"configuration file {cfg_path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{cfg_path}: {exc}") from None
    return parse_config(raw, cfg_path.resolve())


def parse_config(raw: Mapping[str, Any], path: Path) -> PlatformConfig:
    base = path.parent
    known(raw, "", SECTIONS)
    plat = Table(table(raw, "platform"), "platform", PlatformSettings)
    edge = parse_edge(table(raw, "edge"), base)
    sources = parse_sources(raw.get("sources", []), base, edge.max_body_bytes)
    if edge.default_source and edge.default_source not in {s.name for s in sources}:
        raise ConfigError(f"edge.default_source: no source named {edge.default_source!r}")
    ingest, query, control = (
        parse_ingest(table(raw, "ingest")),
        parse_query(table(raw, "query")),
        parse_control(table(raw, "control")),
    )
    if not plat.boolean("services_on_network"):
        for section, host in (("ingest", ingest.host), ("query", query.host), ("control", control.host)):
            if not ipaddress.ip_address(host).is_loopback:
                raise ConfigError(
                    f"{section}.host: {host} is not a loopback address, and the service trusts its callers "
                    "(Envoy checks them in front of it): set platform.services_on_network = true only if that "
                    "network is the platform's own; refusing to start"
                )
    cfg = PlatformConfig(
        path=path,
        data_dir=plat.path("data_dir", base),
        log_level=plat.string("log_level", choices=LOG_LEVELS, upper=True),
        edge=edge,
        ingest=ingest,
        query=query,
        control=control,
        processor=parse_processor(table(raw, "processor"), base),
        delivery=parse_delivery(table(raw, "delivery"), base),
        rabbitmq=parse_rabbitmq(table(raw, "rabbitmq"), base),
        cassandra=parse_cassandra(table(raw, "cassandra")),
        metrics=parse_metrics(table(raw, "metrics")),
        tracing=parse_tracing(table(raw, "tracing")),
        sources=sources,
    )
    check_ports(cfg)  # every port in range, none shared (switchboard.config.ports)
    _check_operations(cfg)
    _check_replay_windows(cfg)
    return cfg


def _check_replay_windows(cfg: PlatformConfig) -> None:
    """A signed request sent again is a duplicate only while its event's row is kept (``cassandra.ttl_seconds``);
    its timestamp passes for ``tolerance_seconds`` either way of its arrival, so a copy can verify up to twice
    that after the original arrived. A tolerance at or over half the retention let a request captured once
    verify again after its row expired, and be applied again. (The option's own checks, at ingest's start,
    are the scheme's: ``switchboard.signatures``.)"""
    for s in cfg.sources:
        tolerance = s.options.get("tolerance_seconds")
        if isinstance(tolerance, bool) or not isinstance(tolerance, int | float):
            continue  # the scheme's own check refuses it (or it is the default)
        if 2 * tolerance >= cfg.cassandra.ttl_seconds:
            raise ConfigError(
                f"source {s.name!r}: options.tolerance_seconds {tolerance:g} is at least half of "
                f"cassandra.ttl_seconds ({cfg.cassandra.ttl_seconds}): a request sent again after its event "
                "expired would verify and be applied again; lower the tolerance (default 300 s)"
            )


def _check_operations(cfg: PlatformConfig) -> None:
    """An operation whose filter can take no event is a typo (``sources = ["stirpe"]``, ``event_types = []``):
    it loaded, and the operation silently never ran."""
    names = {s.name for s in cfg.sources}
    for i, op in enumerate(cfg.processor.operations):
        where = f"processor.operations[{i}] ({op.name})"
        unknown = [s for s in op.sources if s not in names]
        if unknown:
            raise ConfigError(f"{where}.sources: no source named {', '.join(map(repr, unknown))}")
        if not op.event_types:
            raise ConfigError(f'{where}.event_types: empty, so it runs for no event (every type: ["*"])')
