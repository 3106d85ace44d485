"""Request headers the edge owns: it removes or replaces them before the ingest service sees a webhook, so no
source may be configured to read one (``switchboard.signatures.base.Options.header``). ``edge`` renders its
filters from these names. And the headers never stored with an event (``never_stored``): the ingest service
drops them, and a replay drops them from an event stored before the rule covered them."""

from __future__ import annotations

import functools
import re

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


# Request headers never stored with an event: transport internals and credentials (and, per source, the
# signature: ``ingest_service.ingestor.select_headers``' ``drop``).
_DROP_PREFIXES = ("grpc-", "x-envoy-", ":")
_DROP = frozenset(
    {
        "te",
        "content-type",
        "authorization",
        "proxy-authorization",
        "cookie",
        "content-length",
        "accept-encoding",
        "user-agent-grpc",
        "traceparent",
        "tracestate",
    }
)
# Nor any header whose name says it carries a credential (senders add their own: ``x-api-key``,
# ``x-webhook-token``, ``x-functions-key``, ``X-ClientSecret``, ...): headers are stored for the retention and
# returned by GetEvent. Long stems count anywhere in the name (names run words together: ``x-webhooksecret``);
# short ones only as a word (split at ``-``, ``_``, ``.``) or a word's start, so ``x-author`` is kept; a word
# ending in ``key`` counts, except the few known not to be secrets (Bitbucket's ``X-Event-Key``).
_CREDENTIAL_STEMS = ("secret", "password", "passwd", "passphrase", "signature", "session", "cookie",
                     "credential", "token", "hmac", "apikey", "bearer", "private", "jwt")  # fmt: skip
_CREDENTIAL_WORDS = frozenset({"auth", "authorization", "authentication", "oauth", "pass", "sig", "otp"})
_NOT_CREDENTIALS = frozenset({"x-event-key", "x-idempotency-key", "idempotency-key"})
_WORD_SPLIT = re.compile(r"[-_.]")


@functools.lru_cache(maxsize=4096)  # every request asks for the same few names: decided once per name
def never_stored(name: str) -> bool:
    """Whether a request header (``name`` lowercased) is never stored with an event: a transport internal or a
    binary one, or a credential by its name."""
    if name in _DROP or name.startswith(_DROP_PREFIXES) or name.endswith("-bin"):
        return True
    if name in _NOT_CREDENTIALS:
        return False
    if any(stem in name for stem in _CREDENTIAL_STEMS):
        return True
    for word in _WORD_SPLIT.split(name):
        if (
            word in _CREDENTIAL_WORDS
            or word.endswith("key")
            or (word.startswith("auth") and not word.startswith("author"))
        ):
            return True
    return False
