"""Upstream clusters (ingest, control, the OTLP collector) and tracing: Envoy decides and starts every trace."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from edge.base import (
    CONTROL_CLUSTER,
    INGEST_CLUSTER,
    JSON,
    OTLP_CLUSTER,
    UPSTREAM_CONNECT_TIMEOUT,
    ApiEdge,
    http2_only,
    socket_address,
)
from switchboard.config import PlatformConfig
from switchboard.headers import CALLER_TRACE_HEADERS

# --- clusters and tracing --------------------------------------------------------------------------------


def ingest_cluster(cfg: PlatformConfig) -> JSON:
    return {
        "name": INGEST_CLUSTER,
        "type": "STATIC",
        "connect_timeout": UPSTREAM_CONNECT_TIMEOUT,
        "lb_policy": "ROUND_ROBIN",
        "typed_extension_protocol_options": http2_only(),
        "circuit_breakers": {
            "thresholds": [
                {
                    "priority": "DEFAULT",
                    "max_connections": 1024,
                    "max_pending_requests": 4096,
                    "max_requests": 8192,
                    "max_retries": 3,
                }
            ]
        },
        "load_assignment": {
            "cluster_name": INGEST_CLUSTER,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": socket_address(cfg.ingest.host, cfg.ingest.port)}}]}
            ],
        },
    }


def control_cluster(api: ApiEdge) -> JSON:
    return {
        "name": CONTROL_CLUSTER,
        "type": _cluster_type(api.control_host),
        "connect_timeout": UPSTREAM_CONNECT_TIMEOUT,
        "lb_policy": "ROUND_ROBIN",
        "typed_extension_protocol_options": http2_only(),
        "load_assignment": {
            "cluster_name": CONTROL_CLUSTER,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": socket_address(api.control_host, api.control_port)}}]}
            ],
        },
    }


def _cluster_type(host: str) -> str:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return "STRICT_DNS"
    return "STATIC"


def otlp_cluster(host: str, port: int) -> JSON:
    return {
        "name": OTLP_CLUSTER,
        "type": _cluster_type(host),
        "connect_timeout": UPSTREAM_CONNECT_TIMEOUT,
        "lb_policy": "ROUND_ROBIN",
        "typed_extension_protocol_options": http2_only(),
        "load_assignment": {
            "cluster_name": OTLP_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket_address(host, port)}}]}],
        },
    }


def strip_caller_trace_context() -> JSON:
    """Removes the caller's trace context before routing, sampling or any filter.

    Why not continue a provider's trace: its trace ids mean nothing in our collector, and its sampled flag
    would decide for us: ``-01`` on every request would trace (and export ~20 spans for) all of a flood, ``-00``
    would hide a request from tracing. So the sampling decision is Envoy's alone (``random_sampling``), every
    trace starts here, and ``client_sampling`` (``x-client-trace-id`` forcing a trace) is 0 as well.
    """
    return {
        "name": "envoy.http.early_header_mutation.header_mutation",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.http.early_header_mutation.header_mutation.v3"
            ".HeaderMutation",
            "mutations": [{"remove": name} for name in CALLER_TRACE_HEADERS],
        },
    }


def tracing_config(sample_percent: float) -> JSON:
    return {
        "random_sampling": {"value": sample_percent},
        "client_sampling": {"value": 0},
        "spawn_upstream_span": True,
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                "grpc_service": {"envoy_grpc": {"cluster_name": OTLP_CLUSTER}, "timeout": "1s"},
                "service_name": "switchboard-edge",
            },
        },
    }


def parse_otlp_endpoint(endpoint: str) -> tuple[str, int]:
    parts = urlsplit(endpoint if "://" in endpoint else f"//{endpoint}")
    if parts.scheme not in ("", "http", "grpc") or not parts.hostname or parts.port is None:
        raise ValueError(f"OTLP endpoint {endpoint!r}: expected host:port or http://host:port (OTLP/gRPC)")
    return parts.hostname, parts.port
