"""``[tracing]``: OpenTelemetry traces, one per webhook request, from Envoy to Cassandra and the deliveries.

Envoy decides whether a request is traced (``sample_percent`` of them, at random) and starts the trace; every
service follows that decision (parent-based) and never starts a trace of its own, so a trace is complete or
absent. Spans go over OTLP/gRPC to ``endpoint``: ``"local"`` (the default) is the small receiver the local stack
runs on ``local_port``, which keeps the spans of the last ``keep_hours`` under ``<data_dir>/traces``
(``switchboard trace EVENT_ID`` prints one); ``"off"`` turns tracing off everywhere; anything else is the
``host:port`` of an OpenTelemetry collector.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from switchboard.addresses import host_port
from switchboard.config._table import Table

LOCAL = "local"
OFF = "off"


@dataclass(frozen=True)
class TracingConfig:
    endpoint: str = LOCAL
    # The share of webhook requests Envoy traces, in percent. A traced event costs ~0.3 ms of CPU more across
    # the services (docs/observability.md has the benchmark); 100 is for debugging.
    sample_percent: float = 1.0
    local_port: int = 4317
    keep_hours: float = 24.0
    # Spans a service holds while the exporter is behind; more are dropped (logged once), never waited for.
    max_queue: int = 32768

    @property
    def enabled(self) -> bool:
        return self.endpoint != OFF

    @property
    def local(self) -> bool:
        return self.endpoint == LOCAL

    def target(self) -> str | None:
        """``host:port`` of the OTLP/gRPC receiver, None when tracing is off."""
        if not self.enabled:
            return None
        if self.local:
            return f"127.0.0.1:{self.local_port}"
        return self.endpoint


def parse_tracing(raw: Mapping[str, Any]) -> TracingConfig:
    t = Table(raw, "tracing", TracingConfig)
    endpoint = t.string("endpoint").strip()
    if endpoint not in (LOCAL, OFF):
        parts = urlsplit(endpoint if "://" in endpoint else f"//{endpoint}")
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme not in ("", "http", "grpc") or not parts.hostname or port is None:
            raise t.error("endpoint", f"expected 'local', 'off' or host:port of an OTLP/gRPC collector: {endpoint!r}")
        endpoint = host_port(parts.hostname, port)
    return TracingConfig(
        endpoint=endpoint,
        sample_percent=t.float_between("sample_percent", 0.0, 100.0),
        local_port=t.port("local_port"),
        keep_hours=t.pos_float("keep_hours"),
        max_queue=t.pos_int("max_queue"),
    )
