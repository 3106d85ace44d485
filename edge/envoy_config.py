"""Render the Envoy edge configuration from the platform configuration.

One HTTPS listener (``edge.bind:edge.https_port``) terminates TLS and turns provider webhooks
(``POST /webhook/<source>``, and ``POST /webhook`` for ``edge.default_source``) into the gRPC call
``webhooks.v1.Ingest/Receive`` on the ingest service. One route per source path carries that source's
allowlist, body limit and rate-limit key; everything else is answered by Envoy itself (404, 405, 415 for
native gRPC, 400 for percent-encoded query names). The HTTP filter chain, in order:

1. ``header_mutation`` strips ``grpc-*`` and ``x-envoy-upstream-*`` from every response (first in the chain,
   so last on the way out: it sees what the transcoder produced);
2. ``lua`` turns Envoy's replies to gRPC-typed requests, which Envoy always sends in gRPC form (HTTP 200 and
   ``grpc-status``), back into their HTTP status and JSON body (see ``_refuse_grpc_route``);
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
off; ``_strip_caller_trace_context``).

With an :class:`ApiEdge` the same listener also serves the REST API of ``webhooks.v1.Subscriptions`` (see
``_api_route``): ``/api/v1/...`` is transcoded to gRPC on the control service (cluster ``control``) and
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
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from switchboard.config import PlatformConfig, RateLimit, SourceConfig
from switchboard.errors import ERROR_DOMAIN
from switchboard.files import atomic_write

JSON = dict[str, Any]

INGEST_SERVICE = "webhooks.v1.Ingest"
INGEST_CLUSTER = "ingest"
SUBSCRIPTIONS_SERVICE = "webhooks.v1.Subscriptions"
CONTROL_CLUSTER = "control"
OTLP_CLUSTER = "otlp_collector"
LISTENER_NAME = "webhooks_https"
ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo"

# Filter names. Per-route configuration (``typed_per_filter_config``) is keyed by these names.
HEADER_MUTATION = "envoy.filters.http.header_mutation"
GRPC_LOCAL_REPLY = "envoy.filters.http.lua.grpc_local_reply"
WEBHOOK_QUERY_STRIP = "envoy.filters.http.lua.strip_webhook_query"
# First filter when tracing is on: a webhook's query string never reaches a span (Envoy's ``http.url`` tag is
# built from the request's final :path). Only /webhook paths: the API's list calls need their page tokens.
WEBHOOK_QUERY_STRIP_LUA = """
function envoy_on_request(handle)
  local path = handle:headers():get(":path")
  if path ~= nil and string.sub(path, 1, 8) == "/webhook" then
    local q = string.find(path, "?", 1, true)
    if q ~= nil then
      handle:headers():replace(":path", string.sub(path, 1, q - 1))
    end
  end
end
"""
RBAC = "envoy.filters.http.rbac"
# Two instances of envoy.filters.http.local_ratelimit (the extension is named by typed_config).
PER_IP_RATELIMIT = "envoy.filters.http.local_ratelimit.per_ip"
PER_SOURCE_RATELIMIT = "envoy.filters.http.local_ratelimit.per_source"
BUFFER = "envoy.filters.http.buffer"
TRANSCODER = "envoy.filters.http.grpc_json_transcoder"
# Only with an ApiEdge: a second header_mutation (request side) and the JWT filter.
STRIP_IDENTITY = "envoy.filters.http.header_mutation.strip_identity"
JWT_AUTHN = "envoy.filters.http.jwt_authn"
ROUTER = "envoy.filters.http.router"

# Route metadata namespace (the source a route serves).
METADATA_NAMESPACE = "switchboard"
# Rate limit descriptor keys.
IP_DESCRIPTOR = "remote_address"
SOURCE_DESCRIPTOR = "source"
# Per-IP buckets kept at once (least recently used are dropped).
MAX_DYNAMIC_DESCRIPTORS = 100_000

UPSTREAM_CONNECT_TIMEOUT = "1s"
# Added to ingest.confirm_timeout_seconds for the route timeout: verification, publishing, the network.
ROUTE_TIMEOUT_MARGIN_SECONDS = 3.0
# The deadline sent to the ingest service (grpc-timeout) is this much shorter than the route timeout.
UPSTREAM_DEADLINE_SLACK_SECONDS = 0.5
# Room for the gRPC framing and the HttpBody fields around a body: the stream's buffer limit is the body
# limit plus this. The filter-level transcoder limit (unused by source routes, which have their own) is
# the largest body limit plus this too.
TRANSCODER_BODY_HEADROOM = 64 * 1024
MAX_DOWNSTREAM_CONNECTIONS = 50_000
OTEL_MIN_FLUSH_SPANS = 512
OTEL_FLUSH_INTERVAL_MS = 1000
# Trace context a caller may send; removed at the edge (``_strip_caller_trace_context``).
CALLER_TRACE_HEADERS = ("traceparent", "tracestate", "x-client-trace-id", "b3", "x-b3-traceid", "x-b3-sampled")

# The REST API (webhooks.v1.Subscriptions through the transcoder), when render_envoy_config gets an ApiEdge.
API_PREFIX = "/api/v1/"
API_MAX_BODY_BYTES = 64 * 1024
# A CreateSubscription may probe the callback (a HEAD of up to 5 s) besides its writes.
API_ROUTE_TIMEOUT_SECONDS = 15.0
# Request fields bound from the API's paths; a query parameter of the same name is ignored, never bound.
API_PATH_BOUND_FIELDS = ("id", "subscription_id")
JWT_PROVIDER = "switchboard"
JWT_REQUIREMENT = "api"
JWT_CLOCK_SKEW_SECONDS = 30
# Headers only the edge sets: every request header with this prefix is removed on arrival (before jwt_authn
# runs), then jwt_authn sets CLIENT_HEADER to the verified token's ``sub`` and the API route VIA_EDGE_HEADER.
EDGE_HEADER_PREFIX = "x-switchboard-"
CLIENT_HEADER = "x-switchboard-client"
VIA_EDGE_HEADER = "x-switchboard-via-edge"


@dataclass(frozen=True)
class ApiEdge:
    """The REST API at the edge: who signs its bearer tokens, and where the control service listens."""

    jwks_json: str  # the public JWKS (``{"keys": [...]}``) the tokens are verified against
    issuer: str
    audience: str
    control_host: str
    control_port: int

    def __post_init__(self) -> None:
        try:
            keys = json.loads(self.jwks_json)["keys"]
        except (ValueError, KeyError, TypeError):
            raise ValueError("ApiEdge.jwks_json must be a JWKS: a JSON object with a 'keys' list") from None
        if not isinstance(keys, list) or not keys:
            raise ValueError("ApiEdge.jwks_json has no keys")
        if not self.issuer or not self.audience:
            raise ValueError("ApiEdge needs an issuer and an audience")
        if not 0 < self.control_port < 65536:
            raise ValueError(f"ApiEdge.control_port {self.control_port} is not a port")


@dataclass(frozen=True)
class LocalReplyError:
    """How one of Envoy's own HTTP replies is presented as a ``google.rpc.Status``."""

    http_status: int
    grpc_code: int
    reason: str


# gRPC codes: 3 INVALID_ARGUMENT, 4 DEADLINE_EXCEEDED, 5 NOT_FOUND, 7 PERMISSION_DENIED,
# 8 RESOURCE_EXHAUSTED, 12 UNIMPLEMENTED, 13 INTERNAL, 14 UNAVAILABLE, 16 UNAUTHENTICATED.
LOCAL_REPLY_ERRORS: tuple[LocalReplyError, ...] = (
    LocalReplyError(400, 3, "BAD_REQUEST"),
    # jwt_authn: no token, or one that does not verify (signature, issuer, expiry).
    LocalReplyError(401, 16, "UNAUTHENTICATED"),
    LocalReplyError(403, 7, "IP_NOT_ALLOWED"),
    LocalReplyError(404, 5, "NOT_FOUND"),
    LocalReplyError(405, 12, "METHOD_NOT_ALLOWED"),
    LocalReplyError(408, 4, "TIMEOUT"),
    LocalReplyError(413, 3, "PAYLOAD_TOO_LARGE"),
    LocalReplyError(415, 3, "UNSUPPORTED_MEDIA_TYPE"),
    LocalReplyError(429, 8, "RATE_LIMITED"),
    LocalReplyError(431, 3, "HEADERS_TOO_LARGE"),
    LocalReplyError(500, 13, "EDGE_INTERNAL"),
    LocalReplyError(502, 14, "UPSTREAM_UNAVAILABLE"),
    LocalReplyError(503, 14, "UPSTREAM_UNAVAILABLE"),
    LocalReplyError(504, 4, "TIMEOUT"),
)
# A 403 of Envoy's on an API path is jwt_authn's (a valid token not meant for this API: its audience); no
# RBAC policy applies there. Checked before LOCAL_REPLY_ERRORS.
API_FORBIDDEN = LocalReplyError(403, 7, "PERMISSION_DENIED")
# Any other local reply of status 400 or more.
FALLBACK_LOCAL_REPLY = LocalReplyError(0, 2, "EDGE_ERROR")
# A query whose parameter names (not values) contain a percent sign.
ENCODED_QUERY_NAME_RE = r"^[^?]*\?([^&]*&)*[^=&]*%.*"
# ReceiveRequest fields bound from the path; never from the query string.
PATH_BOUND_FIELDS = ("source",)

# Set by local_reply_config on each of Envoy's own replies to the HTTP status it chose (%RESPONSE_CODE%): a
# header survives Envoy's rewriting of a local reply into gRPC form, which replaces the status with 200.
LOCAL_REPLY_STATUS_HEADER = "x-switchboard-local-reply-status"

# Removed from every response: the gRPC status travels as the HTTP status and the JSON body, never as
# headers, and upstream timing is nobody's business outside. (The Lua filter already removes the local
# reply's status header; it is listed in case it did not run.)
STRIPPED_RESPONSE_HEADER_PREFIXES = ("grpc-", "x-envoy-upstream-", LOCAL_REPLY_STATUS_HEADER)

# Envoy answers every local reply to a request it classes as gRPC (content type exactly application/grpc
# or application/grpc+...) in gRPC form: HTTP 200, content-type application/grpc, grpc-status, and the body
# (here the JSON google.rpc.Status) percent-encoded in grpc-message. On the way out this puts back the HTTP
# status local_reply_config chose and the body, byte for byte what any other client gets (the JSON
# formatter's final newline, which Envoy drops from the header, included). Upstream responses carry no
# LOCAL_REPLY_STATUS_HEADER and pass untouched.
GRPC_LOCAL_REPLY_LUA = f"""
local STATUS_HEADER = "{LOCAL_REPLY_STATUS_HEADER}"

local function percent_decode(s)
  return (s:gsub("%%(%x%x)", function(hex) return string.char(tonumber(hex, 16)) end))
end

function envoy_on_response(response_handle)
  local headers = response_handle:headers()
  local status = headers:get(STATUS_HEADER)
  if status == nil then
    return
  end
  headers:remove(STATUS_HEADER)
  if headers:get(":status") ~= "200" or headers:get("content-type") ~= "application/grpc" then
    return
  end
  local message = headers:get("grpc-message")
  headers:replace(":status", status)
  headers:replace("content-type", "application/json")
  headers:remove("grpc-status")
  headers:remove("grpc-message")
  if message ~= nil then
    -- Envoy sends no grpc-message (so no body here) for HEAD.
    response_handle:body(true):setBytes(percent_decode(message) .. "\\n")
  end
end
"""


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
    without a tracer (``_strip_caller_trace_context``).

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
        "request_headers_timeout": "10s",
        "stream_idle_timeout": "60s",
        "request_timeout": "120s",
        "common_http_protocol_options": {"idle_timeout": "300s"},
        "http2_protocol_options": {
            "max_concurrent_streams": 100,
            "initial_stream_window_size": 65536,
            "initial_connection_window_size": 1048576,
        },
        "early_header_mutation_extensions": [_strip_caller_trace_context()],
        "route_config": _route_config(cfg, descriptor_set, api),
        "http_filters": _http_filters(cfg, descriptor_set, api),
        "local_reply_config": _local_reply_config(api),
    }
    if access_log is not None:
        hcm["access_log"] = [_access_log(access_log)]
    clusters = [_ingest_cluster(cfg)]
    if api is not None:
        clusters.append(_control_cluster(api))
    bootstrap: JSON = {
        "node": {"id": "switchboard-edge", "cluster": "switchboard-edge"},
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": cfg.edge.admin_port}},
        },
        "static_resources": {
            "listeners": [
                {
                    "name": LISTENER_NAME,
                    "address": {"socket_address": {"address": cfg.edge.bind, "port_value": cfg.edge.https_port}},
                    "filter_chains": [
                        {
                            "transport_socket": _downstream_tls(tls_cert, tls_key),
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
                }
            ]
        },
    }
    if otlp_endpoint is not None:
        host, port = _parse_otlp_endpoint(otlp_endpoint)
        clusters.append(_otlp_cluster(host, port))
        hcm["tracing"] = _tracing(cfg.tracing.sample_percent)
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


def route_timeout_seconds(cfg: PlatformConfig) -> float:
    return cfg.ingest.confirm_timeout_seconds + ROUTE_TIMEOUT_MARGIN_SECONDS


def upstream_deadline_ms(cfg: PlatformConfig) -> int:
    return round((route_timeout_seconds(cfg) - UPSTREAM_DEADLINE_SLACK_SECONDS) * 1000)


def transcoder_max_body_bytes(cfg: PlatformConfig) -> int:
    largest = max([cfg.edge.max_body_bytes, *(s.max_body_bytes for s in cfg.sources)])
    return largest + TRANSCODER_BODY_HEADROOM


# --- listener pieces -------------------------------------------------------------------------------------


def _downstream_tls(cert: Path, key: Path) -> JSON:
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "common_tls_context": {
                "alpn_protocols": ["h2", "http/1.1"],
                "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
                "tls_certificates": [
                    {
                        "certificate_chain": {"filename": str(cert)},
                        "private_key": {"filename": str(key)},
                    }
                ],
            },
        },
    }


def _http_filters(cfg: PlatformConfig, descriptor_set: Path, api: ApiEdge | None) -> list[JSON]:
    return [
        {
            "name": HEADER_MUTATION,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
                "mutations": {
                    "response_mutations": _strip_headers(),
                    "response_trailers_mutations": _strip_headers(),
                },
            },
        },
        {
            # Right after header_mutation, so just before it on the way out: it must read grpc-message.
            "name": GRPC_LOCAL_REPLY,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                "default_source_code": {"inline_string": GRPC_LOCAL_REPLY_LUA},
            },
        },
        *([_strip_identity()] if api is not None else []),
        {
            # No rules here: routes of sources with an allowlist carry their own policy.
            "name": RBAC,
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"},
        },
        *_rate_limit_filters(cfg),
        *([_jwt_authn(api)] if api is not None else []),
        {"name": TRANSCODER, "typed_config": _transcoder(descriptor_set, transcoder_max_body_bytes(cfg))},
        {
            # After the transcoder: it only lifts the stream's buffer limit above the transcoder's own
            # (exact) body limit, so that the gRPC framing around a body of exactly the limit still fits.
            "name": BUFFER,
            "typed_config": _buffer(transcoder_max_body_bytes(cfg) + TRANSCODER_BODY_HEADROOM),
        },
        {
            "name": ROUTER,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
                "suppress_envoy_headers": True,
            },
        },
    ]


def _transcoder(
    descriptor_set: Path,
    max_body_bytes: int,
    *,
    service: str = INGEST_SERVICE,
    path_bound_fields: tuple[str, ...] = PATH_BOUND_FIELDS,
    strict: bool = False,
) -> JSON:
    """The transcoder for ``service``; ``strict`` (the API) refuses (400) a query parameter that names no
    request field and a body field that repeats one bound from the path (``PATCH /api/v1/webhooks/a`` with
    ``{"id": "b"}`` would otherwise reach the service as ``b``)."""
    doc: JSON = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
        "proto_descriptor": str(descriptor_set),
        "services": [service],
        # Keep the route picked on /webhook/<source>: the transcoded path (/webhooks.v1.Ingest/Receive)
        # must not be routed again.
        "match_incoming_request_route": True,
        # Else `?x=1` is not transcoded and ends as a 503.
        "ignore_unknown_query_parameters": True,
        # `?source=other` would otherwise replace the source bound from the path, after the allowlist, the
        # rate limit and the body limit of the path's source were applied (see also _odd_query_route).
        "ignored_query_parameters": list(path_bound_fields),
        # Else a path or method the API does not map goes upstream untranscoded (503), instead of a 404.
        "request_validation_options": {"reject_unknown_method": True},
        "convert_grpc_status": True,
        "print_options": {
            "preserve_proto_field_names": True,
            "always_print_primitive_fields": False,
            "add_whitespace": False,
        },
        # The request body (not the gRPC message) above this answers 413.
        "max_request_body_size": max_body_bytes,
    }
    if strict:
        # Without reject_unknown_query_parameters, an unknown parameter would go upstream untranscoded (503).
        doc["ignore_unknown_query_parameters"] = False
        doc["request_validation_options"] = {
            "reject_unknown_method": True,
            "reject_unknown_query_parameters": True,
            "reject_binding_body_field_collisions": True,
        }
    return doc


def _strip_identity() -> JSON:
    """Request side only: no client may send the headers the edge sets (forged ones never reach upstream).

    A filter of its own (not the response-side header_mutation above, which the gRPC-refusal route turns
    off), before jwt_authn, which then sets ``CLIENT_HEADER`` from a verified token only."""
    return {
        "name": STRIP_IDENTITY,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
            "mutations": {"request_mutations": [{"remove_on_match": {"key_matcher": {"prefix": EDGE_HEADER_PREFIX}}}]},
        },
    }


def _jwt_authn(api: ApiEdge) -> JSON:
    """Bearer tokens for the API, verified against the inline JWKS; required by routes that name
    ``JWT_REQUIREMENT`` in their per-route configuration (the API route), by nothing else (no ``rules``).

    Failures are local replies (401: missing, bad signature, wrong issuer, expired; 403: wrong audience),
    presented as JSON by local_reply_config like every other."""
    provider = {
        "issuer": api.issuer,
        "audiences": [api.audience],
        "local_jwks": {"inline_string": api.jwks_json},
        # Only here: with from_headers set, Envoy no longer looks at ?access_token= (nor its other defaults).
        "from_headers": [{"name": "Authorization", "value_prefix": "Bearer "}],
        # The token stops at the edge: the control service gets the verified subject, not the credential.
        "forward": False,
        "require_expiration": True,
        "clock_skew_seconds": JWT_CLOCK_SKEW_SECONDS,
        "claim_to_headers": [{"header_name": CLIENT_HEADER, "claim_name": "sub"}],
    }
    return {
        "name": JWT_AUTHN,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {JWT_PROVIDER: provider},
            "requirement_map": {JWT_REQUIREMENT: {"provider_name": JWT_PROVIDER}},
        },
    }


def _buffer(max_bytes: int) -> JSON:
    return {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
        "max_request_bytes": max_bytes,
    }


def _strip_headers() -> list[JSON]:
    return [{"remove_on_match": {"key_matcher": {"prefix": prefix}}} for prefix in STRIPPED_RESPONSE_HEADER_PREFIXES]


def _rate_limit_filters(cfg: PlatformConfig) -> list[JSON]:
    """Per client address first, then per source: two filters, so that a request refused for its address
    never takes a token from its source's bucket (one filter would drain the slower bucket first)."""
    filters: list[JSON] = []
    if cfg.edge.per_ip_rate_limit is not None:
        # An entry without a value matches every client address: one bucket per address, shared by all
        # sources (the least recently used are dropped beyond max_dynamic_descriptors).
        filters.append(
            {
                "name": PER_IP_RATELIMIT,
                "typed_config": _local_ratelimit(
                    "per_ip",
                    descriptors=[
                        {"entries": [{"key": IP_DESCRIPTOR}], "token_bucket": _token_bucket(cfg.edge.per_ip_rate_limit)}
                    ],
                    actions=[{"remote_address": {}}],
                    x_ratelimit_headers=True,
                ),
            }
        )
    limited = [src for src in cfg.sources if src.rate_limit is not None]
    if limited:
        filters.append(
            {
                "name": PER_SOURCE_RATELIMIT,
                "typed_config": _local_ratelimit(
                    "per_source",
                    descriptors=[
                        {
                            "entries": [{"key": SOURCE_DESCRIPTOR, "value": src.name}],
                            "token_bucket": _token_bucket(src.rate_limit),
                        }
                        for src in limited
                        if src.rate_limit is not None
                    ],
                    # The source of the route the request matched (routes of other paths have none).
                    actions=[
                        {
                            "metadata": {
                                "descriptor_key": SOURCE_DESCRIPTOR,
                                "metadata_key": {"key": METADATA_NAMESPACE, "path": [{"key": "source"}]},
                                "source": "ROUTE_ENTRY",
                                "skip_if_absent": True,
                            }
                        }
                    ],
                    # One set of x-ratelimit-* headers per response: the client's own budget when there is
                    # a per-address limit (a per-source 429 still says Retry-After).
                    x_ratelimit_headers=cfg.edge.per_ip_rate_limit is None,
                ),
            }
        )
    return filters


def _local_ratelimit(kind: str, *, descriptors: list[JSON], actions: list[JSON], x_ratelimit_headers: bool) -> JSON:
    enabled = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}
    return {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        "stat_prefix": f"ratelimit_{kind}",
        "status": {"code": "TooManyRequests"},
        "filter_enabled": {**enabled, "runtime_key": f"switchboard.ratelimit.{kind}.enabled"},
        "filter_enforced": {**enabled, "runtime_key": f"switchboard.ratelimit.{kind}.enforced"},
        "descriptors": descriptors,
        "rate_limits": [{"actions": actions}],
        # No default bucket: a request matching no descriptor is not limited by this filter.
        "always_consume_default_token_bucket": False,
        "local_rate_limit_per_downstream_connection": False,
        "enable_x_ratelimit_headers": "DRAFT_VERSION_03" if x_ratelimit_headers else "OFF",
        "enable_retry_after_header": True,
        "max_dynamic_descriptors": MAX_DYNAMIC_DESCRIPTORS,
    }


def _token_bucket(limit: RateLimit) -> JSON:
    """A bucket of ``requests`` tokens refilled smoothly at ``requests / per_seconds``.

    Envoy refills at most every 50 ms, so fast rates add several tokens per refill.
    """
    per_fill = max(1, math.ceil(limit.requests * 0.05 / limit.per_seconds))
    interval = limit.per_seconds * per_fill / limit.requests
    return {
        "max_tokens": limit.requests,
        "tokens_per_fill": per_fill,
        "fill_interval": _duration(interval),
    }


def _local_reply_config(api: ApiEdge | None) -> JSON:
    """Envoy's own replies as JSON ``google.rpc.Status`` bodies.

    Only local replies pass through here: the transcoder's translation of an upstream gRPC error is an
    upstream response and keeps its body. Each reply also carries its HTTP status in
    ``LOCAL_REPLY_STATUS_HEADER``: Envoy then rewrites a reply to a gRPC-typed request into gRPC form (HTTP
    200, this JSON in ``grpc-message``), and the Lua filter puts the status and the body back.
    """
    mappers: list[JSON] = []
    if api is not None:
        on_api = {"header_filter": {"header": {"name": ":path", "string_match": {"prefix": API_PREFIX}}}}
        api_forbidden = {"and_filter": {"filters": [_status_filter("EQ", API_FORBIDDEN.http_status), on_api]}}
        mappers.append(_mapper(api_forbidden, API_FORBIDDEN))
    mappers += [_mapper(_status_filter("EQ", err.http_status), err) for err in LOCAL_REPLY_ERRORS]
    mappers.append(_mapper(_status_filter("GE", 400), FALLBACK_LOCAL_REPLY))
    return {"mappers": mappers}


def _mapper(status_filter: JSON, err: LocalReplyError) -> JSON:
    return {
        "filter": status_filter,
        "body_format_override": _error_body(err),
        "headers_to_add": [
            {
                "header": {"key": LOCAL_REPLY_STATUS_HEADER, "value": "%RESPONSE_CODE%"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ],
    }


def _status_filter(op: str, status: int) -> JSON:
    value = {"default_value": status, "runtime_key": f"switchboard.local_reply.{status}"}
    return {"status_code_filter": {"comparison": {"op": op, "value": value}}}


def _error_body(err: LocalReplyError) -> JSON:
    return {
        "json_format": {
            "code": err.grpc_code,
            "message": "%LOCAL_REPLY_BODY%",
            "details": [{"@type": ERROR_INFO_TYPE, "reason": err.reason, "domain": ERROR_DOMAIN}],
        },
        "content_type": "application/json",
    }


def _access_log(path: Path) -> JSON:
    # No request bodies and no signature headers: only what is needed to follow a request.
    fields = {
        "time": "%START_TIME%",
        "client": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
        "method": "%REQ(:METHOD)%",
        "path": "%PATH(NQ:ORIG_OR_PATH)%",  # without the query string: it may carry tokens
        "protocol": "%PROTOCOL%",
        "status": "%RESPONSE_CODE%",
        "details": "%RESPONSE_CODE_DETAILS%",
        "flags": "%RESPONSE_FLAGS%",
        "source": "%METADATA(ROUTE:switchboard:source)%",
        "bytes_in": "%BYTES_RECEIVED%",
        "bytes_out": "%BYTES_SENT%",
        "duration_ms": "%DURATION%",
        # Until the first byte of the answer (the ingest service's, or Envoy's own).
        "response_ms": "%RESPONSE_DURATION%",
        "request_id": "%REQ(X-REQUEST-ID)%",
        "traceparent": "%REQ(TRACEPARENT)%",
        "user_agent": "%REQ(USER-AGENT)%",
    }
    return {
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": str(path),
            "log_format": {"json_format": fields},
        },
    }


# --- routes ----------------------------------------------------------------------------------------------


def _route_config(cfg: PlatformConfig, descriptor_set: Path, api: ApiEdge | None) -> JSON:
    routes: list[JSON] = [_refuse_grpc_route(), _odd_query_route()]
    for src in cfg.sources:
        routes.extend(_source_routes(cfg, src, f"/webhook/{src.name}", descriptor_set))
        if src.name == cfg.edge.default_source:
            routes.extend(_source_routes(cfg, src, "/webhook", descriptor_set))
    if api is not None:
        routes.append(_api_route(descriptor_set))
    routes.append(
        {
            "name": "not_found",
            "match": {"prefix": "/"},
            "direct_response": {"status": 404, "body": {"inline_string": "no webhook endpoint at this path"}},
            "typed_per_filter_config": _direct_response_filters(),
        }
    )
    return {"name": "webhooks", "virtual_hosts": [{"name": "webhooks", "domains": ["*"], "routes": routes}]}


def _source_routes(cfg: PlatformConfig, src: SourceConfig, path: str, descriptor_set: Path) -> list[JSON]:
    suffix = src.name if path != "/webhook" else "default"
    per_filter: JSON = {
        # The source's body limit, exact: the transcoder counts the request body itself. The buffer
        # filter after it leaves room for the gRPC framing around a body of exactly the limit.
        TRANSCODER: _transcoder(descriptor_set, src.max_body_bytes),
        BUFFER: {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute",
            "buffer": {"max_request_bytes": src.max_body_bytes + TRANSCODER_BODY_HEADROOM},
        },
    }
    if src.allow_cidrs:
        per_filter[RBAC] = _rbac_allowlist(src)
    return [
        {
            "name": f"source_{suffix}",
            "match": {"path": path, "headers": [{"name": ":method", "string_match": {"exact": "POST"}}]},
            "route": {
                "cluster": INGEST_CLUSTER,
                "timeout": _duration(route_timeout_seconds(cfg)),
            },
            # The ingest service gets a deadline a little shorter than the route timeout, so that its own
            # DEADLINE_EXCEEDED (504 with its message) wins over Envoy's.
            "request_headers_to_add": [
                {
                    "header": {"key": "grpc-timeout", "value": f"{upstream_deadline_ms(cfg)}m"},
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                }
            ],
            # Read by the per-source rate limit and the access log.
            "metadata": {"filter_metadata": {METADATA_NAMESPACE: {"source": src.name}}},
            "typed_per_filter_config": per_filter,
        },
        {
            "name": f"method_not_allowed_{suffix}",
            "match": {"path": path},
            "direct_response": {"status": 405, "body": {"inline_string": "only POST is accepted here"}},
            "response_headers_to_add": [{"header": {"key": "allow", "value": "POST"}}],
            "typed_per_filter_config": _direct_response_filters(),
        },
    ]


def api_upstream_deadline_ms() -> int:
    return round((API_ROUTE_TIMEOUT_SECONDS - UPSTREAM_DEADLINE_SLACK_SECONDS) * 1000)


def _api_route(descriptor_set: Path) -> JSON:
    """``/api/v1/...``: a valid bearer token, then the transcoder maps method and path to a
    ``webhooks.v1.Subscriptions`` RPC on the control service (a path or method it does not map: 404).

    By then the client's own ``x-switchboard-*`` headers are gone (``STRIP_IDENTITY``) and jwt_authn has set
    ``CLIENT_HEADER``; the route adds ``VIA_EDGE_HEADER`` (the control service tells REST through the edge
    from internal gRPC calls by it). gRPC-typed requests never get here: ``_refuse_grpc_route`` is first.
    """
    return {
        "name": "api",
        "match": {"prefix": API_PREFIX},
        "route": {"cluster": CONTROL_CLUSTER, "timeout": _duration(API_ROUTE_TIMEOUT_SECONDS)},
        "request_headers_to_add": [
            {
                "header": {"key": "grpc-timeout", "value": f"{api_upstream_deadline_ms()}m"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            },
            {"header": {"key": VIA_EDGE_HEADER, "value": "1"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
        ],
        "typed_per_filter_config": {
            JWT_AUTHN: {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig",
                "requirement_name": JWT_REQUIREMENT,
            },
            TRANSCODER: _transcoder(
                descriptor_set,
                API_MAX_BODY_BYTES,
                service=SUBSCRIPTIONS_SERVICE,
                path_bound_fields=API_PATH_BOUND_FIELDS,
                strict=True,
            ),
            BUFFER: {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute",
                "buffer": {"max_request_bytes": API_MAX_BODY_BYTES + TRANSCODER_BODY_HEADROOM},
            },
        },
    }


def _refuse_grpc_route() -> JSON:
    """Native gRPC (and gRPC-Web) is not served at the edge: 415 with the JSON body, over HTTP/1.1 and HTTP/2.

    Why a plain 415 here is not enough: Envoy classes a request as gRPC (content type exactly
    ``application/grpc`` or ``application/grpc+...``, case-sensitive; not ``application/grpc-web``) once,
    from the headers as received, at the very start of the connection manager's ``decodeHeaders``
    (``FilterManager::requestHeadersInitialized`` sets ``is_grpc_request_``), before early header mutation,
    routing or any filter. Every local reply to such a request (this direct response, but also RBAC,
    rate-limit, 404, ... replies) goes through ``Http::Utility::sendLocalReply``, which first applies
    ``local_reply_config`` (its body, headers, even a mapper's ``status_code``) and then, for a gRPC request,
    overwrites ``:status`` with 200, sets ``content-type: application/grpc`` and ``grpc-status`` (2, UNKNOWN,
    for 415) and moves the body into ``grpc-message`` (a trailers-only gRPC response). So a 415 direct
    response, a local_reply_config mapper with ``status_code: 415`` and an ``early_header_mutation`` that
    rewrites the content type all still answered HTTP 200 (the last one also let the request past this route
    to the ingest service), and the usual stripping of ``grpc-*`` would have left a bare, empty 200, which a
    sender takes for "queued".

    What fixes it: encoder filters still see the reply after that rewrite. ``local_reply_config`` tags every
    local reply with its real status (``LOCAL_REPLY_STATUS_HEADER``, which survives the rewrite), and the Lua
    filter (``GRPC_LOCAL_REPLY_LUA``) turns a gRPC-form local reply back into that status and the JSON body.
    header_mutation stays off on this route: should the Lua filter not run, a gRPC client still sees a
    ``grpc-status`` error rather than a bare 200.

    The request never reaches the ingest service: this route is first and matches any content type starting
    with ``application/grpc`` (any case), a superset of what Envoy classes as gRPC, on every path, and it
    answers at once, without reading the body.
    """
    return {
        "name": "refuse_grpc",
        "match": {
            "prefix": "/",
            "headers": [{"name": "content-type", "string_match": {"prefix": "application/grpc", "ignore_case": True}}],
        },
        "direct_response": {
            "status": 415,
            "body": {"inline_string": "gRPC is not served here; POST the webhook body over HTTP"},
        },
        # Without header_mutation here (a route's own mutations add to the filter's, they cannot drop them).
        "typed_per_filter_config": {**_direct_response_filters(), HEADER_MUTATION: _DISABLED},
    }


def _odd_query_route() -> JSON:
    """Query parameter names with percent-encoding are refused (400).

    The transcoder compares ``ignored_query_parameters`` with the raw name but binds the decoded one, so
    ``?sourc%65=other`` would still replace the source taken from the path.
    """
    return {
        "name": "refuse_encoded_query_names",
        "match": {
            "prefix": "/",
            "headers": [{"name": ":path", "string_match": {"safe_regex": {"regex": ENCODED_QUERY_NAME_RE}}}],
        },
        "direct_response": {
            "status": 400,
            "body": {"inline_string": "percent-encoded query parameter names are not accepted"},
        },
        "typed_per_filter_config": _direct_response_filters(),
    }


def _direct_response_filters() -> JSON:
    """Routes answered by Envoy itself skip the transcoder (it would answer 404 first) and buffering."""
    return {TRANSCODER: _DISABLED, BUFFER: _DISABLED}


_DISABLED: JSON = {"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "disabled": True}


def _rbac_allowlist(src: SourceConfig) -> JSON:
    principals = []
    for cidr in src.allow_cidrs:
        net = ipaddress.ip_network(cidr, strict=False)
        # remote_ip is the address Envoy trusts: with use_remote_address and no trusted hops it is the
        # connection's peer; X-Forwarded-For from the client does not change it.
        principals.append({"remote_ip": {"address_prefix": str(net.network_address), "prefix_len": net.prefixlen}})
    return {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute",
        "rbac": {
            "rules": {
                "action": "ALLOW",
                "policies": {f"allow_{src.name}": {"permissions": [{"any": True}], "principals": principals}},
            }
        },
    }


# --- clusters and tracing --------------------------------------------------------------------------------


def _ingest_cluster(cfg: PlatformConfig) -> JSON:
    return {
        "name": INGEST_CLUSTER,
        "type": "STATIC",
        "connect_timeout": UPSTREAM_CONNECT_TIMEOUT,
        "lb_policy": "ROUND_ROBIN",
        "typed_extension_protocol_options": _http2_only(),
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
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket(cfg.ingest.host, cfg.ingest.port)}}]}],
        },
    }


def _control_cluster(api: ApiEdge) -> JSON:
    return {
        "name": CONTROL_CLUSTER,
        "type": _cluster_type(api.control_host),
        "connect_timeout": UPSTREAM_CONNECT_TIMEOUT,
        "lb_policy": "ROUND_ROBIN",
        "typed_extension_protocol_options": _http2_only(),
        "load_assignment": {
            "cluster_name": CONTROL_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket(api.control_host, api.control_port)}}]}],
        },
    }


def _cluster_type(host: str) -> str:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return "STRICT_DNS"
    return "STATIC"


def _otlp_cluster(host: str, port: int) -> JSON:
    return {
        "name": OTLP_CLUSTER,
        "type": _cluster_type(host),
        "connect_timeout": UPSTREAM_CONNECT_TIMEOUT,
        "lb_policy": "ROUND_ROBIN",
        "typed_extension_protocol_options": _http2_only(),
        "load_assignment": {
            "cluster_name": OTLP_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket(host, port)}}]}],
        },
    }


def _strip_caller_trace_context() -> JSON:
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


def _tracing(sample_percent: float) -> JSON:
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


def _parse_otlp_endpoint(endpoint: str) -> tuple[str, int]:
    parts = urlsplit(endpoint if "://" in endpoint else f"//{endpoint}")
    if parts.scheme not in ("", "http", "grpc") or not parts.hostname or parts.port is None:
        raise ValueError(f"OTLP endpoint {endpoint!r}: expected host:port or http://host:port (OTLP/gRPC)")
    return parts.hostname, parts.port


def _http2_only() -> JSON:
    return {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }


def _socket(host: str, port: int) -> JSON:
    return {"socket_address": {"address": host, "port_value": port}}


def _duration(seconds: float) -> str:
    return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"
