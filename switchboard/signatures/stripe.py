"""Stripe: ``Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>...]``.

Signed bytes are ``b"<t>." + body``, HMAC-SHA256 keyed with the whole ``whsec_...`` string as UTF-8; hex.
Several ``v1`` entries appear while Stripe rolls a secret; other schemes (``v0``) are ignored. The timestamp
must lie within ``tolerance_seconds`` (default 300) of the arrival time, in either direction.

Extracted: ``id``, ``type``, ``created`` (provider time) and ``data.object.id`` (entity). The entity
version is in microseconds: ``data.object.updated`` when the object has it, else the event's ``created``
(Stripe's own ordering of the events about one object), times 1_000_000. The object's ``created`` is not
used: it is the same for every event about the object and would order nothing.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from typing import Any

from switchboard.signatures.base import (
    MacSet,
    Options,
    Verified,
    Verifier,
    as_id,
    as_text,
    as_unix,
    check_tolerance,
    decode_hex,
    event_id_missing,
    load_json_object,
    malformed,
    parse_unix_seconds,
    require,
    unix_to_micros,
    utf8_keys,
)

SCHEME = "stripe"
HEADER = "stripe-signature"
_MAX_SIGNATURES = 32


class StripeVerifier(Verifier):
    __slots__ = ("_macs", "_tolerance")

    scheme = SCHEME
    SIGNATURE_HEADERS = frozenset({HEADER})

    def __init__(self, source: str, secrets: Sequence[str], *, tolerance_seconds: float = 300.0) -> None:
        super().__init__(source)
        self._macs = MacSet(source, utf8_keys(source, secrets))
        self._tolerance = tolerance_seconds

    def verify(self, headers: Mapping[str, str], body: bytes, received_at: float) -> Verified:
        timestamp, candidates = parse_header(require(headers, HEADER))
        self._macs.check(candidates, HEADER, timestamp.encode(), b".", body)
        check_tolerance(int(timestamp), received_at, self._tolerance, HEADER)

        event = load_json_object(body)
        event_id = as_id(event.get("id"))
        if not event_id:
            raise event_id_missing("id")
        created = as_unix(event.get("created"))
        entity_id, version = "", 0
        data = event.get("data")
        obj: Any = data.get("object") if isinstance(data, dict) else None
        if isinstance(obj, dict):
            entity_id = as_id(obj.get("id"))
            if entity_id:
                updated = as_unix(obj.get("updated"))
                version = unix_to_micros(updated if updated is not None else created)
        return Verified(event_id, as_text(event.get("type")), created, entity_id, version)


def parse_header(value: str) -> tuple[str, list[bytes]]:
    """``(t as digits, [v1 signatures as bytes])``; ``SIGNATURE_HEADER_MALFORMED`` when unusable."""
    timestamp: str | None = None
    candidates: list[bytes] = []
    for item in value.split(","):
        key, sep, val = item.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            if timestamp is not None:
                raise malformed(HEADER, "more than one timestamp (t=)")
            parse_unix_seconds(val, HEADER)
            timestamp = val
        elif key == "v1":
            raw = decode_hex(val, 32)
            if raw is None:
                raise malformed(HEADER, "a v1 signature is not 64 hex digits")
            candidates.append(raw)
            if len(candidates) > _MAX_SIGNATURES:
                raise malformed(HEADER, "too many v1 signatures")
    if timestamp is None:
        raise malformed(HEADER, "no timestamp (t=)")
    if not candidates:
        raise malformed(HEADER, "no v1 signature")
    return timestamp, candidates


def build(source: str, secrets: Sequence[str], options: Mapping[str, Any]) -> StripeVerifier:
    opts = Options(source, SCHEME, options)
    tolerance = opts.tolerance()
    opts.finish()
    return StripeVerifier(source, secrets, tolerance_seconds=tolerance)


def sign(secret: str, body: bytes, *, now: float, extra_secrets: Sequence[str] = ()) -> dict[str, str]:
    """The header Stripe sends (one ``v1`` per secret, as while it rolls a secret); keys lowercase."""
    t = str(int(now))
    signed = t.encode() + b"." + body
    parts = [f"t={t}"]
    for key in (secret, *extra_secrets):
        parts.append("v1=" + hmac.new(key.encode("utf-8"), signed, hashlib.sha256).hexdigest())
    return {HEADER: ",".join(parts)}
