"""Request headers the edge owns: it removes or replaces them before the ingest service sees a webhook, so no
source may be configured to read one (``switchboard.signatures.base.Options.header``). ``edge`` renders its
filters from these names."""

from __future__ import annotations

# Trace context a caller may send; removed at the edge (``edge.clusters.strip_caller_trace_context``).
CALLER_TRACE_HEADERS = (
    "traceparent",
    "tracestate",
    "x-client-trace-id",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "x-ot-span-context",
    "grpc-trace-bin",
    "baggage",
)
# Headers only the edge sets: every request header with this prefix is removed on arrival (before jwt_authn
# runs), then jwt_authn sets CLIENT_HEADER to the verified token's ``sub`` and the API route VIA_EDGE_HEADER.
EDGE_HEADER_PREFIX = "x-switchboard-"
# Replaced by Envoy for a request from outside (``x-request-id``: its own id, ``x-forwarded-*``: what it saw,
# ``x-forwarded-client-cert`` sanitized, ``x-envoy-*``: removed), by the call to ingest (the gRPC framing's own
# content type, length and ``te``, ``host`` as ``:authority``; the webhook's content type travels in the request
# message), or hop-by-hop headers HTTP/2 does not carry.
EDGE_REPLACED_HEADERS = (
    "x-request-id",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-client-cert",
    "content-type",
    "content-length",
    "te",
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
)
EDGE_REPLACED_PREFIXES = ("x-envoy-", "grpc-", EDGE_HEADER_PREFIX)


def edge_owned(name: str) -> bool:
    """Whether the ingest service never sees the sender's value of header ``name`` (lowercase)."""
    return name in CALLER_TRACE_HEADERS or name in EDGE_REPLACED_HEADERS or name.startswith(EDGE_REPLACED_PREFIXES)
