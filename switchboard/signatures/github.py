"""GitHub: ``X-Hub-Signature-256: sha256=<hex>``, HMAC-SHA256 of the raw body keyed with the secret.

The legacy ``X-Hub-Signature: sha1=<hex>`` is refused (``SIGNATURE_SCHEME_REFUSED``) unless the source sets
``allow_sha1 = true``; when both headers are present the SHA-256 one is the one checked. GitHub signs no
timestamp and no header: a faithful re-send is caught by deduplicating on ``X-GitHub-Delivery`` (the event
id), but whoever holds one signed body (GitHub shows recent deliveries to the hook's admins) can send it again
under a new delivery id or ``X-GitHub-Event`` type, and it is taken as a new event. Restrict the source with
``allow_cidrs`` to GitHub's hook addresses. The body is never
parsed (GitHub may send form-encoded payloads), so there is no entity or provider time.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from switchboard.signatures.base import (
    MacSet,
    Options,
    Verified,
    Verifier,
    decode_hex,
    event_id_missing,
    header_value,
    malformed,
    missing,
    refused,
    utf8_keys,
)

SCHEME = "github"
HEADER = "x-hub-signature-256"
SHA1_HEADER = "x-hub-signature"
DELIVERY_HEADER = "x-github-delivery"
EVENT_HEADER = "x-github-event"


class GitHubVerifier(Verifier):
    __slots__ = ("_macs", "_sha1")

    scheme = SCHEME
    SIGNATURE_HEADERS = frozenset({HEADER, SHA1_HEADER})

    def __init__(self, source: str, secrets: Sequence[str], *, allow_sha1: bool = False) -> None:
        super().__init__(source)
        keys = utf8_keys(source, secrets)
        self._macs = MacSet(source, keys)
        self._sha1 = MacSet(source, keys, "sha1") if allow_sha1 else None

    def verify(self, headers: Mapping[str, str], body: bytes, received_at: float) -> Verified:
        value = header_value(headers, HEADER)
        if value:
            self._macs.check([_signature(value, HEADER, "sha256=", 32)], HEADER, body)
        else:
            legacy = header_value(headers, SHA1_HEADER)
            if not legacy:
                raise missing(HEADER)
            if self._sha1 is None:
                raise refused(SHA1_HEADER, "SHA-1 signatures are not accepted for this source")
            self._sha1.check([_signature(legacy, SHA1_HEADER, "sha1=", 20)], SHA1_HEADER, body)

        delivery = header_value(headers, DELIVERY_HEADER)
        if not delivery:
            raise event_id_missing(DELIVERY_HEADER)
        return Verified(delivery, header_value(headers, EVENT_HEADER), None)


def _signature(value: str, header: str, prefix: str, size: int) -> bytes:
    if value[: len(prefix)].lower() != prefix:
        raise malformed(header, f"does not start with {prefix}")
    raw = decode_hex(value[len(prefix) :], size)
    if raw is None:
        raise malformed(header, f"the signature is not {2 * size} hex digits")
    return raw


def build(source: str, secrets: Sequence[str], options: Mapping[str, Any]) -> GitHubVerifier:
    opts = Options(source, SCHEME, options)
    allow_sha1 = opts.boolean("allow_sha1", False)
    opts.finish()
    return GitHubVerifier(source, secrets, allow_sha1=allow_sha1)


def sign(
    secret: str,
    body: bytes,
    *,
    now: float,
    event_id: str | None = None,
    event_type: str = "push",
    sha1: bool = True,
) -> dict[str, str]:
    """The headers GitHub sends (keys lowercase): both signatures (as GitHub does), event and delivery."""
    key = secret.encode("utf-8")
    headers = {
        HEADER: "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest(),
        EVENT_HEADER: event_type,
        DELIVERY_HEADER: event_id or str(uuid.uuid4()),
    }
    if sha1:
        headers[SHA1_HEADER] = "sha1=" + hmac.new(key, body, hashlib.sha1).hexdigest()
    return headers
