"""``[edge]``: the HTTPS listener Envoy serves providers on."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from switchboard.config._table import Table
from switchboard.errors import ConfigError

MiB = 1024 * 1024
DEFAULT_MAX_BODY_BYTES = MiB
# The largest gRPC message the services take (their servers' ``max_receive_message_length``).
GRPC_MAX_MESSAGE_BYTES = 16 * MiB
# The largest body limit a source (or the edge's default) may set: what still fits one gRPC message to ingest,
# with room for the request's other fields. A larger limit would let Envoy pass bodies that ingest's server
# refuses (RESOURCE_EXHAUSTED, a 429 the provider retries for ever).
MAX_BODY_BYTES = GRPC_MAX_MESSAGE_BYTES - 64 * 1024
# Request headers Envoy takes, in KiB (its default is 60): more is its own JSON 431 (HEADERS_TOO_LARGE). They
# reach ingest as gRPC metadata, which a server takes up to GRPC_MAX_METADATA_BYTES (gRPC's default refuses
# 8-16 KiB at random and more always, RESOURCE_EXHAUSTED: a 429 the provider retried for days), with room for
# what Envoy adds.
MAX_REQUEST_HEADERS_KB = 16
GRPC_MAX_METADATA_BYTES = 32 * 1024
# Envoy's token bucket holds at most this many tokens (max_tokens is a uint32): a larger rate limit makes
# Envoy refuse its configuration.
MAX_RATE_LIMIT_REQUESTS = 2**32 - 1
# The longest window a rate limit counts over: a week. Its bucket's fill interval is ``per_seconds`` for a limit
# of one request, and Envoy refuses a duration past ~3.2e11 s (10**12 was taken and Envoy would not start).
MAX_RATE_LIMIT_SECONDS = 7 * 86_400


@dataclass(frozen=True)
class RateLimit:
    """Token bucket: ``requests`` per ``per_seconds``, bursting to ``requests``."""

    requests: int
    per_seconds: int = 1


@dataclass(frozen=True)
class EdgeConfig:
    bind: str = "127.0.0.1"
    https_port: int = 8443
    admin_port: int = 9901
    # Empty means a local CA and certificate generated under <data_dir>/tls.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    default_source: str | None = None
    # Per client IP, across all sources.
    per_ip_rate_limit: RateLimit | None = None
    # The body limit of sources that set none (and of the default source's route); at most MAX_BODY_BYTES.
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES


def parse_rate_limit(v: Any, where: str) -> RateLimit | None:
    if v is None:
        return None
    if not isinstance(v, Mapping):
        raise ConfigError(f"{where}: must be a table {{ requests = N, per_seconds = S }}")
    if "requests" not in v:
        raise ConfigError(f"{where}.requests is required")
    t = Table(v, where, RateLimit)
    return RateLimit(
        requests=t.int_between("requests", 1, MAX_RATE_LIMIT_REQUESTS),
        per_seconds=t.int_between("per_seconds", 1, MAX_RATE_LIMIT_SECONDS),
    )


def parse_edge(raw: Mapping[str, Any], base: Path) -> EdgeConfig:
    t = Table(raw, "edge", EdgeConfig)
    edge = EdgeConfig(
        bind=t.ip("bind"),
        https_port=t.port("https_port"),
        admin_port=t.port("admin_port"),
        tls_cert=t.optional_path("tls_cert", base),
        tls_key=t.optional_path("tls_key", base),
        default_source=t.optional_string("default_source"),
        per_ip_rate_limit=parse_rate_limit(t.get("per_ip_rate_limit"), "edge.per_ip_rate_limit"),
        max_body_bytes=t.int_between("max_body_bytes", 1, MAX_BODY_BYTES),
    )
    if bool(edge.tls_cert) != bool(edge.tls_key):
        raise ConfigError("edge.tls_cert and edge.tls_key must be set together")
    return edge
