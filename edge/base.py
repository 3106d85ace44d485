"""Names, limits and small helpers shared by the pieces of the Envoy edge configuration (``edge.envoy_config``
assembles them): filter, cluster and header names, timeouts, the :class:`ApiEdge` value object."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from switchboard.config import PlatformConfig

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
# The client's address, an IPv6 one masked to its /64 (one subscriber's block: with the full address, one /64
# was endless buckets, each evicting real clients' from the filter's bounded table).
IP_DESCRIPTOR = "masked_remote_address"
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
# Envoy's heap: past 90% it returns freed memory to the system, past 98% it answers new requests 503 (retry)
# instead of buffering more bodies. Each webhook stream buffers its whole body (up to its source's limit),
# so slow uploads on many streams (100 per HTTP/2 connection) could otherwise run it out of memory.
MAX_HEAP_BYTES = 1024 * 1024 * 1024
OTEL_MIN_FLUSH_SPANS = 512
OTEL_FLUSH_INTERVAL_MS = 1000

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


def route_timeout_seconds(cfg: PlatformConfig) -> float:
    return cfg.ingest.confirm_timeout_seconds + ROUTE_TIMEOUT_MARGIN_SECONDS


def upstream_deadline_ms(cfg: PlatformConfig) -> int:
    return round((route_timeout_seconds(cfg) - UPSTREAM_DEADLINE_SLACK_SECONDS) * 1000)


def transcoder_max_body_bytes(cfg: PlatformConfig) -> int:
    largest = max([cfg.edge.max_body_bytes, *(s.max_body_bytes for s in cfg.sources)])
    return largest + TRANSCODER_BODY_HEADROOM


def http2_only() -> JSON:
    return {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }


def socket_address(host: str, port: int) -> JSON:
    return {"socket_address": {"address": host, "port_value": port}}


def duration(seconds: float) -> str:
    return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"
