"""The listener's pieces: downstream TLS, the HTTP filter chain (order and reasons in ``edge.envoy_config``),
the transcoder, JWT, rate limits and the access log."""

from __future__ import annotations

import math
from pathlib import Path

from edge.base import (
    BUFFER,
    CLIENT_HEADER,
    GRPC_LOCAL_REPLY,
    HEADER_MUTATION,
    INGEST_SERVICE,
    IP_DESCRIPTOR,
    JSON,
    JWT_AUTHN,
    JWT_CLOCK_SKEW_SECONDS,
    JWT_PROVIDER,
    JWT_REQUIREMENT,
    MAX_DYNAMIC_DESCRIPTORS,
    METADATA_NAMESPACE,
    PER_IP_RATELIMIT,
    PER_SOURCE_RATELIMIT,
    RBAC,
    ROUTER,
    SOURCE_DESCRIPTOR,
    STRIP_IDENTITY,
    TRANSCODER,
    TRANSCODER_BODY_HEADROOM,
    ApiEdge,
    duration,
    transcoder_max_body_bytes,
)
from edge.local_replies import (
    GRPC_LOCAL_REPLY_LUA,
    PATH_BOUND_FIELDS,
    STRIPPED_RESPONSE_HEADER_PREFIXES,
)
from switchboard.config import PlatformConfig, RateLimit
from switchboard.headers import EDGE_HEADER_PREFIX

# --- listener pieces -------------------------------------------------------------------------------------


def downstream_tls(cert: Path, key: Path) -> JSON:
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


def http_filters(cfg: PlatformConfig, descriptor_set: Path, api: ApiEdge | None) -> list[JSON]:
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
        {"name": TRANSCODER, "typed_config": transcoder(descriptor_set, transcoder_max_body_bytes(cfg))},
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


def transcoder(
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
        # rate limit and the body limit of the path's source were applied (see also edge.routes._odd_query_route).
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
                    actions=[{"masked_remote_address": {"v4_prefix_mask_len": 32, "v6_prefix_mask_len": 64}}],
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
        "fill_interval": duration(interval),
    }


def access_log_config(path: Path) -> JSON:
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
