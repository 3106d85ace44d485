"""Envoy's own replies (400, 401, 403, 404, ...) as JSON ``google.rpc.Status`` bodies with an ``ErrorInfo``
reason, whatever the request's content type; and the Lua filter that undoes Envoy's gRPC form of a local reply
to a gRPC-typed request (see ``edge.routes._refuse_grpc_route``)."""

from __future__ import annotations

from dataclasses import dataclass

from edge.base import API_PREFIX, ERROR_INFO_TYPE, JSON, ApiEdge
from switchboard.errors import ERROR_DOMAIN


@dataclass(frozen=True)
class LocalReplyError:
    """How one of Envoy's own HTTP replies is presented as a ``google.rpc.Status``."""

    http_status: int
    grpc_code: int
    reason: str
    # The body's message; None: Envoy's own text (%LOCAL_REPLY_BODY%). Set where that text tells a caller
    # about the platform's inside ("upstream connect error ... delayed connect error: Connection refused").
    message: str | None = None


UNAVAILABLE_MESSAGE = "the webhook service is unavailable; retry later"
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
    LocalReplyError(500, 13, "EDGE_INTERNAL", "internal error at the edge; retry later"),
    LocalReplyError(502, 14, "UPSTREAM_UNAVAILABLE", UNAVAILABLE_MESSAGE),
    LocalReplyError(503, 14, "UPSTREAM_UNAVAILABLE", UNAVAILABLE_MESSAGE),
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


def local_reply_config(api: ApiEdge | None) -> JSON:
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
            "message": "%LOCAL_REPLY_BODY%" if err.message is None else err.message,
            "details": [{"@type": ERROR_INFO_TYPE, "reason": err.reason, "domain": ERROR_DOMAIN}],
        },
        "content_type": "application/json",
    }
