"""Standard Webhooks (https://www.standardwebhooks.com/): ``webhook-id``, ``webhook-timestamp``,
``webhook-signature: v1,<base64> [v1,<base64> ...]`` (space separated; other versions such as ``v1a`` are
ignored).

Signed bytes are ``b"<id>.<timestamp>." + body``, HMAC-SHA256. The key is the base64 decoding of the secret
after its ``whsec_`` prefix (a secret without the prefix is decoded whole; missing padding is tolerated).
The timestamp must lie within ``tolerance_seconds`` (default 300) of the arrival time, either way.

Extracted: event id = ``webhook-id``, type = the payload's ``type`` ("" when the body is not a JSON object:
the id is the header's, so an authentic body of any kind is taken; refused, it was sent again until the sender
gave up, and lost), provider time = the signed timestamp.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets as _secrets
from collections.abc import Mapping, Sequence
from typing import Any

from switchboard.errors import ConfigError
from switchboard.signatures.base import (
    MacSet,
    Options,
    Verified,
    Verifier,
    as_text,
    check_tolerance,
    decode_base64,
    malformed,
    parse_unix_seconds,
    require,
    try_json,
)

SCHEME = "standard_webhooks"
ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
HEADER = "webhook-signature"
SECRET_PREFIX = "whsec_"  # noqa: S105 - the format tag, not a secret
_MAX_SIGNATURES = 32


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret. Raises ValueError (with no secret in it) if unusable."""
    text = secret.removeprefix(SECRET_PREFIX).strip()
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the secret is not base64 (after whsec_)") from None
    if not key:
        raise ValueError("the secret decodes to an empty key")
    return key


class StandardWebhooksVerifier(Verifier):
    __slots__ = ("_macs", "_tolerance")

    scheme = SCHEME
    SIGNATURE_HEADERS = frozenset({HEADER})

    def __init__(self, source: str, secrets: Sequence[str], *, tolerance_seconds: float = 300.0) -> None:
        super().__init__(source)
        keys = []
        for index, secret in enumerate(secrets):
            try:
                keys.append(secret_key(secret))
            except ValueError as exc:
                raise ConfigError(f"source {source!r}: secret #{index + 1}: {exc}") from None
        self._macs = MacSet(source, keys)
        self._tolerance = tolerance_seconds

    def verify(self, headers: Mapping[str, str], body: bytes, received_at: float) -> Verified:
        msg_id = require(headers, ID_HEADER)
        timestamp = require(headers, TIMESTAMP_HEADER)
        seconds = parse_unix_seconds(timestamp, TIMESTAMP_HEADER)
        candidates = parse_signatures(require(headers, HEADER))
        try:
            prefix = f"{msg_id}.{timestamp}.".encode()
        except UnicodeEncodeError:
            raise malformed(ID_HEADER, "the id is not valid text") from None
        self._macs.check(candidates, HEADER, prefix, body)
        check_tolerance(seconds, received_at, self._tolerance, TIMESTAMP_HEADER)

        payload = try_json(body)
        event_type = as_text(payload.get("type")) if isinstance(payload, dict) else ""
        return Verified(msg_id, event_type, float(seconds))


def parse_signatures(value: str) -> list[bytes]:
    """The ``v1`` signatures of a ``webhook-signature`` value; ``SIGNATURE_HEADER_MALFORMED`` if none."""
    candidates: list[bytes] = []
    for item in value.split():
        version, sep, signature = item.partition(",")
        if not sep:
            raise malformed(HEADER, "an entry is not <version>,<signature>")
        if version != "v1":
            continue
        raw = decode_base64(signature, 32)
        if raw is None:
            raise malformed(HEADER, "a v1 signature is not the base64 of 32 bytes")
        candidates.append(raw)
        if len(candidates) > _MAX_SIGNATURES:
            raise malformed(HEADER, "too many v1 signatures")
    if not candidates:
        raise malformed(HEADER, "no v1 signature")
    return candidates


def build(source: str, secrets: Sequence[str], options: Mapping[str, Any]) -> StandardWebhooksVerifier:
    opts = Options(source, SCHEME, options)
    tolerance = opts.tolerance()
    opts.finish()
    return StandardWebhooksVerifier(source, secrets, tolerance_seconds=tolerance)


def new_message_id() -> str:
    return "msg_" + _secrets.token_urlsafe(18)


def sign(
    secret: str,
    body: bytes,
    *,
    now: float,
    event_id: str | None = None,
    extra_secrets: Sequence[str] = (),
) -> dict[str, str]:
    """The three Standard Webhooks headers (one ``v1`` entry per secret); keys lowercase."""
    msg_id = event_id or new_message_id()
    timestamp = str(int(now))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    signatures = [
        "v1," + base64.b64encode(hmac.new(secret_key(key), signed, hashlib.sha256).digest()).decode("ascii")
        for key in (secret, *extra_secrets)
    ]
    return {ID_HEADER: msg_id, TIMESTAMP_HEADER: timestamp, HEADER: " ".join(signatures)}
