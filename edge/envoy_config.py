"""Render the Envoy edge configuration from the platform configuration.

One HTTPS listener (``edge.bind:edge.https_port``) terminates TLS and turns provider webhooks
(``POST /webhook/<source>``, and ``POST /webhook`` for ``edge.default_source``) into the gRPC call
``webhooks.v1.Ingest/Receive`` on the ingest service. One route per source path carries that source's
allowlist, body limit and rate-limit key; everything else is answered by Envoy itself (404, 405, 415 for
native gRPC, 400 for percent-encoded query names). The HTTP filter chain, in order:

1. ``header_mutation`` strips ``grpc-*`` and ``x-envoy-upstream-*`` from every response (first in the chain,
   so last on the way out: it sees what the transcoder produced);
2. ``lua`` turns Envoy's replies to gRPC-typed requests, which Envoy always sends in gRPC form (HTTP 200 and
   ``grpc-status``), back into their HTTP status and JSON body (see ``edge.routes._refuse_grpc_route``);
3. ``rbac``: each source's ``allow_cidrs`` (per route) on the client address Envoy trusts
   (``use_remote_address``, no trusted hops: a forged ``X-Forwarded-For`` changes nothing);
4. ``local_ratelimit`` twice: ``edge.per_ip_rate_limit`` (one bucket per client address, shared by all
   sources), then each source's ``rate_limit`` (one bucket per source);
5. ``grpc_json_transcoder`` builds ``ReceiveRequest{source, payload: HttpBody}`` from the raw body, answers
   413 past the route's ``max_body_bytes`` (per-route transcoder configuration: it counts the body itself,
   exactly, whether it arrives in one HTTP/2 frame or chunked), and turns the gRPC status of the answer
   into an HTTP status and a JSON ``google.rpc.Status`` body;
6. ``buffer``, whose only job is to lift the stream's buffer limit a little above the transcoder's, so that
   the gRPC message of a body of exactly the limit (body + framing) is not refused by Envoy itself;
7. ``router``.

With tracing on (``otlp_endpoint``), a first Lua filter (``WEBHOOK_QUERY_STRIP``) drops the query string of
``/webhook`` requests, which ingest never reads and which may carry a token: Envoy's span tags the request's
final URL. Before any filter, an early header mutation removes a caller's trace context (always, tracing on or
off; ``edge.clusters.strip_caller_trace_context``).

With an :class:`ApiEdge` the same listener also serves the REST API of ``webhooks.v1.Subscriptions`` (see
``edge.routes._api_route``): ``/api/v1/...`` is transcoded to gRPC on the control service (cluster ``control``) and
requires a bearer JWT (ES256, verified by ``jwt_authn`` against the inline JWKS). Two filters join the chain:

- ``header_mutation`` (``STRIP_IDENTITY``), right after the Lua filter: removes every request header named
  ``x-switchboard-*`` (``CLIENT_HEADER``, ``VIA_EDGE_HEADER``) from every request, so that only the edge
  sets them;
- ``jwt_authn``, just before the transcoder, required by the API route only (per-route
  ``requirement_name``; webhook routes carry none and need no token). It reads the token from
  ``Authorization: Bearer`` only (never ``?access_token=``), removes it before the upstream, and puts the
  verified ``sub`` into ``CLIENT_HEADER``. The route adds ``VIA_EDGE_HEADER: 1``.

Envoy's own replies (400, 401, 403, 404, 405, 413, 415, 429, 503, 504, ...) are rewritten by
``local_reply_config`` into the shape the transcoder gives gRPC errors, so callers see one error format:
``{"code": <gRPC code>, "message": "...", "details": [{"@type": ".../google.rpc.ErrorInfo",
"reason": "...", "domain": "switchboard"}]}``, with the HTTP status Envoy chose, whatever the request's
content type. The transcoder's translation of an upstream error is not a local reply and keeps the
upstream's ``google.rpc.Status`` (with its details).
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

from edge.base import (
    API_MAX_BODY_BYTES,
    API_ROUTE_TIMEOUT_SECONDS,
    BUFFER,
    CONTROL_CLUSTER,
    GRPC_LOCAL_REPLY,
    HEADER_MUTATION,
    INGEST_CLUSTER,
    JSON,
    JWT_AUTHN,
    LISTENER_NAME,
    MAX_DOWNSTREAM_CONNECTIONS,
    MAX_HEAP_BYTES,
    OTEL_FLUSH_INTERVAL_MS,
    OTEL_MIN_FLUSH_SPANS,
    PER_IP_RATELIMIT,
    PER_SOURCE_RATELIMIT,
    RBAC,
    ROUTER,
    STRIP_IDENTITY,
    TRANSCODER,
    WEBHOOK_QUERY_STRIP,
    WEBHOOK_QUERY_STRIP_LUA,
    ApiEdge,
    route_timeout_seconds,
)
from edge.clusters import (
    control_cluster,
    ingest_cluster,
    otlp_cluster,
    parse_otlp_endpoint,
    strip_caller_trace_context,
    tracing_config,
)
from edge.filters import access_log_config, downstream_tls, http_filters
from edge.local_replies import local_reply_config
from edge.routes import route_config
from switchboard.config import PlatformConfig
from switchboard.config.edge import MAX_REQUEST_HEADERS_KB
from switchboard.files import atomic_write

# The edge's public names, for the stack, the CLI and the tests: the filter and cluster names a test looks up
# in a rendered bootstrap, the API's limits, the route timeout (the pieces live in edge.base, edge.filters,
# edge.local_replies, edge.routes and edge.clusters).
__all__ = [
    "API_MAX_BODY_BYTES",
    "API_ROUTE_TIMEOUT_SECONDS",
    "BUFFER",
    "CONTROL_CLUSTER",
    "GRPC_LOCAL_REPLY",
    "HEADER_MUTATION",
    "INGEST_CLUSTER",
    "JWT_AUTHN",
    "PER_IP_RATELIMIT",
    "PER_SOURCE_RATELIMIT",
    "RBAC",
    "ROUTER",
    "STRIP_IDENTITY",
    "TRANSCODER",
    "WEBHOOK_QUERY_STRIP",
    "ApiEdge",
    "render_envoy_config",
    "route_timeout_seconds",
    "write_envoy_config",
]


def render_envoy_config(
    cfg: PlatformConfig,
    *,
    descriptor_set: Path,
    tls_cert: Path,
    tls_key: Path,
    access_log: Path | None = None,
    otlp_endpoint: str | None = None,
    api: ApiEdge | None = None,
) -> JSON:
    """Return the Envoy bootstrap (a JSON-serialisable dict) for ``cfg``.

    ``otlp_endpoint`` (``host:port`` or ``http://host:port`` of an OTLP/gRPC collector) enables the
    OpenTelemetry tracer: Envoy traces ``cfg.tracing.sample_percent`` of the requests (a new trace each) and
    hands the context to the ingest service as ``traceparent`` metadata. A caller's own trace context
    (``traceparent``, ``tracestate``, ``x-client-trace-id``) is removed before anything looks at it, with or
    without a tracer (``edge.clusters.strip_caller_trace_context``).

    ``api`` adds the REST API of ``webhooks.v1.Subscriptions`` under ``/api/v1/`` (JWT required) on the
    same listener; without it the edge serves webhooks only, exactly as before.
    """
    hcm: JSON = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
        ".HttpConnectionManager",
        "stat_prefix": "webhooks",
        "codec_type": "AUTO",
        "use_remote_address": True,
        "xff_num_trusted_hops": 0,
        "skip_xff_append": False,
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "REJECT_REQUEST",
        "server_name": "switchboard",
        "max_request_headers_kb": MAX_REQUEST_HEADERS_KB,
        "request_headers_timeout": "10s",
        "stream_idle_timeout": "60s",
        "request_timeout": "120s",
        "common_http_protocol_options": {"idle_timeout": "300s"},
        "http2_protocol_options": {
            "max_concurrent_streams": 100,
            "initial_stream_window_size": 65536,
            "initial_connection_window_size": 1048576,
        },
        "early_header_mutation_extensions": [strip_caller_trace_context()],
        "route_config": route_config(cfg, descriptor_set, api),
        "http_filters": http_filters(cfg, descriptor_set, api),
        "local_reply_config": local_reply_config(api),
    }
    if access_log is not None:
        hcm["access_log"] = [access_log_config(access_log)]
    clusters = [ingest_cluster(cfg)]
    if api is not None:
        clusters.append(control_cluster(api))
    bootstrap: JSON = {
        "node": {"id": "switchboard-edge", "cluster": "switchboard-edge"},
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": cfg.edge.admin_port}},
        },
        "static_resources": {
            "listeners": [
                {
                    "name": LISTENER_NAME,
                    "address": {"socket_address": listen_address(cfg.edge.bind, cfg.edge.https_port)},
                    "filter_chains": [
                        {
                            "transport_socket": downstream_tls(tls_cert, tls_key),
                            "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}],
                        }
                    ],
                }
            ],
            "clusters": clusters,
        },
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3"
                        ".DownstreamConnectionsConfig",
                        "max_active_downstream_connections": MAX_DOWNSTREAM_CONNECTIONS,
                    },
                },
                {
                    "name": FIXED_HEAP,
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig",
                        "max_heap_size_bytes": MAX_HEAP_BYTES,
                    },
                },
            ],
            "actions": [
                {"name": "envoy.overload_actions.shrink_heap", "triggers": [_heap_over(0.90)]},
                {"name": "envoy.overload_actions.stop_accepting_requests", "triggers": [_heap_over(0.98)]},
            ],
        },
    }
    if otlp_endpoint is not None:
        host, port = parse_otlp_endpoint(otlp_endpoint)
        clusters.append(otlp_cluster(host, port))
        hcm["tracing"] = tracing_config(cfg.tracing.sample_percent)
        # Query strings may carry tokens (the access log leaves them out too); ingest never reads them.
        hcm["http_filters"].insert(
            0,
            {
                "name": WEBHOOK_QUERY_STRIP,
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                    "default_source_code": {"inline_string": WEBHOOK_QUERY_STRIP_LUA},
                },
            },
        )
        bootstrap["layered_runtime"] = {
            "layers": [
                {
                    "name": "static",
                    "static_layer": {
                        # The default (5) flushes a batch every few spans and costs a quarter of the throughput;
                        # a batch still leaves at least once per flush interval (default 5 s).
                        "tracing.opentelemetry.min_flush_spans": OTEL_MIN_FLUSH_SPANS,
                        "tracing.opentelemetry.flush_interval_ms": OTEL_FLUSH_INTERVAL_MS,
                    },
                }
            ]
        }
    return bootstrap


FIXED_HEAP = "envoy.resource_monitors.fixed_heap"


def _heap_over(fraction: float) -> JSON:
    return {"name": FIXED_HEAP, "threshold": {"value": fraction}}


def write_envoy_config(
    cfg: PlatformConfig,
    path: Path | None = None,
    *,
    descriptor_set: Path,
    tls_cert: Path,
    tls_key: Path,
    access_log: Path | None = None,
    otlp_endpoint: str | None = None,
    api: ApiEdge | None = None,
) -> Path:
    """Render and write the bootstrap as JSON (atomically); default ``<data_dir>/envoy/envoy.json``."""
    out = path if path is not None else cfg.data_dir / "envoy" / "envoy.json"
    doc = render_envoy_config(
        cfg,
        descriptor_set=descriptor_set,
        tls_cert=tls_cert,
        tls_key=tls_key,
        access_log=access_log,
        otlp_endpoint=otlp_endpoint,
        api=api,
    )
    atomic_write(out, json.dumps(doc, indent=2) + "\n")
    return out


def listen_address(bind: str, port: int) -> JSON:
    """The listener's socket address. Bound to ``::``, Envoy takes IPv6 connections only unless told to map
    IPv4 ones (``ipv4_compat``): every IPv4 sender (most providers) could not connect (found in review)."""
    address: JSON = {"address": bind, "port_value": port}
    if ipaddress.ip_address(bind) == ipaddress.IPv6Address("::"):
        address["ipv4_compat"] = True
    return address
