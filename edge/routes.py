"""The routes: one per source path (allowlist, body limit, rate-limit key, deadline), the API route, and the
ones Envoy answers itself (gRPC refused, percent-encoded query names, 404, 405)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from edge.base import (
    API_MAX_BODY_BYTES,
    API_PATH_BOUND_FIELDS,
    API_PREFIX,
    API_ROUTE_TIMEOUT_SECONDS,
    BUFFER,
    CONTROL_CLUSTER,
    HEADER_MUTATION,
    INGEST_CLUSTER,
    JSON,
    JWT_AUTHN,
    JWT_REQUIREMENT,
    METADATA_NAMESPACE,
    RBAC,
    SUBSCRIPTIONS_SERVICE,
    TRANSCODER,
    TRANSCODER_BODY_HEADROOM,
    UPSTREAM_DEADLINE_SLACK_SECONDS,
    VIA_EDGE_HEADER,
    ApiEdge,
    duration,
    route_timeout_seconds,
    upstream_deadline_ms,
)
from edge.filters import transcoder
from edge.local_replies import (
    ENCODED_QUERY_NAME_RE,
)
from switchboard.config import PlatformConfig, SourceConfig

# --- routes ----------------------------------------------------------------------------------------------


def route_config(cfg: PlatformConfig, descriptor_set: Path, api: ApiEdge | None) -> JSON:
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
        TRANSCODER: transcoder(descriptor_set, src.max_body_bytes),
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
                "timeout": duration(route_timeout_seconds(cfg)),
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
        "route": {"cluster": CONTROL_CLUSTER, "timeout": duration(API_ROUTE_TIMEOUT_SECONDS)},
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
            TRANSCODER: transcoder(
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
