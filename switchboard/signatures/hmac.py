"""Generic HMAC senders, described by options::

    header            the signature header (required)
    algorithm         sha256 | sha512                        (default sha256)
    encoding          hex | base64                           (default hex)
    prefix            text before the signature, e.g. "sha256=" (default ""; compared case-insensitively)
    timestamp_header  optional; when set, the signed bytes are b"<ts>." + body, the timestamp (unix
                      seconds) must lie within tolerance_seconds of the arrival time and is the provider time
    tolerance_seconds default 300 (only with timestamp_header)
    id_header / id_field      where the event id is (header first, then dotted JSON path)
    type_header / type_field  where the event type is (header first, then dotted JSON path)

Without a signed timestamp, replays are caught only by deduplicating on the event id, which falls back to
the content hash ``sha256:<hex of the body>``; the type falls back to ``""``. An id or type read from a
header is not signed: a signed body sent again with another ``id_header`` value (within the tolerance, if a
timestamp is signed) is a new event. Take them from the body (``id_field``, ``type_field``) where the sender
puts them there. The body is parsed only when a
JSON field is configured, and a body that is not JSON just falls back. No header option may name a header the
edge removes or replaces (``switchboard.headers``: ``x-request-id``, trace context, ``x-envoy-*``...).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from switchboard.signatures.base import (
    DEFAULT_TOLERANCE_SECONDS,
    MacSet,
    Options,
    Verified,
    Verifier,
    as_id,
    as_text,
    check_tolerance,
    content_id,
    decode_base64,
    decode_hex,
    header_value,
    json_field,
    malformed,
    parse_unix_seconds,
    require,
    try_json,
    utf8_keys,
)

SCHEME = "hmac"
ALGORITHMS = ("sha256", "sha512")
ENCODINGS = ("hex", "base64")


@dataclass(frozen=True, slots=True)
class HmacSettings:
    header: str
    algorithm: str = "sha256"
    encoding: str = "hex"
    prefix: str = ""
    timestamp_header: str | None = None
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS
    id_header: str | None = None
    id_field: tuple[str, ...] | None = None
    type_header: str | None = None
    type_field: tuple[str, ...] | None = None

    @classmethod
    def parse(cls, source: str, options: Mapping[str, Any]) -> HmacSettings:
        opts = Options(source, SCHEME, options)
        header = opts.header("header", required=True)
        assert header is not None
        algorithm = opts.string("algorithm", "sha256", choices=ALGORITHMS)
        encoding = opts.string("encoding", "hex", choices=ENCODINGS)
        prefix = opts.string("prefix", "") or ""
        if not prefix.isascii() or not prefix.isprintable():
            raise opts.error("prefix", "must be printable ASCII")
        timestamp_header = opts.header("timestamp_header")
        tolerance = opts.tolerance()
        if timestamp_header is None and "tolerance_seconds" in options:
            raise opts.error("tolerance_seconds", "has no effect without timestamp_header")
        settings = cls(
            header=header,
            algorithm=algorithm or "sha256",
            encoding=encoding or "hex",
            prefix=prefix,
            timestamp_header=timestamp_header,
            tolerance_seconds=tolerance,
            id_header=opts.header("id_header"),
            id_field=opts.json_path("id_field"),
            type_header=opts.header("type_header"),
            type_field=opts.json_path("type_field"),
        )
        opts.finish()
        return settings


class HmacVerifier(Verifier):
    __slots__ = ("_macs", "_needs_json", "_prefix", "_settings", "_signature_headers", "_size")

    scheme = SCHEME

    @property
    def signature_headers(self) -> frozenset[str]:
        return self._signature_headers

    def __init__(self, source: str, secrets: Sequence[str], settings: HmacSettings) -> None:
        super().__init__(source)
        self._settings = settings
        self._signature_headers = frozenset({settings.header})  # built once: ingest asks on every request
        self._prefix = settings.prefix.lower()
        self._macs = MacSet(source, utf8_keys(source, secrets), settings.algorithm)
        self._size = hashlib.new(settings.algorithm).digest_size
        self._needs_json = settings.id_field is not None or settings.type_field is not None

    def verify(self, headers: Mapping[str, str], body: bytes, received_at: float) -> Verified:
        s = self._settings
        value = require(headers, s.header)
        prefix = self._prefix
        if prefix:
            if value[: len(prefix)].lower() != prefix:
                raise malformed(s.header, f"does not start with {s.prefix}")
            value = value[len(prefix) :]
        raw = decode_hex(value, self._size) if s.encoding == "hex" else decode_base64(value, self._size)
        if raw is None:
            raise malformed(s.header, f"the signature is not a {s.encoding} {s.algorithm} digest")

        provider_time: float | None = None
        if s.timestamp_header is None:
            self._macs.check([raw], s.header, body)
        else:
            timestamp = require(headers, s.timestamp_header)
            seconds = parse_unix_seconds(timestamp, s.timestamp_header)
            self._macs.check([raw], s.header, timestamp.encode(), b".", body)
            check_tolerance(seconds, received_at, s.tolerance_seconds, s.timestamp_header)
            provider_time = float(seconds)

        event_id = header_value(headers, s.id_header) if s.id_header else ""
        event_type = header_value(headers, s.type_header) if s.type_header else ""
        if self._needs_json and not (event_id and event_type):
            payload = try_json(body)
            if not event_id and s.id_field is not None:
                event_id = as_id(json_field(payload, s.id_field))
            if not event_type and s.type_field is not None:
                event_type = as_text(json_field(payload, s.type_field))
        return Verified(event_id or content_id(body), event_type, provider_time)


def build(source: str, secrets: Sequence[str], options: Mapping[str, Any]) -> HmacVerifier:
    return HmacVerifier(source, secrets, HmacSettings.parse(source, options))


def sign(
    secret: str,
    body: bytes,
    *,
    now: float,
    event_id: str | None = None,
    event_type: str | None = None,
    **options: Any,
) -> dict[str, str]:
    """The headers a sender configured with ``options`` (the source's options) sends; keys lowercase.

    The id/type headers are included when configured (a fresh id when ``event_id`` is not given).
    """
    s = HmacSettings.parse("<sign>", options)
    signed = body
    headers: dict[str, str] = {}
    if s.timestamp_header is not None:
        timestamp = str(int(now))
        headers[s.timestamp_header] = timestamp
        signed = timestamp.encode() + b"." + body
    digest = hmac.new(secret.encode("utf-8"), signed, s.algorithm).digest()
    encoded = digest.hex() if s.encoding == "hex" else base64.b64encode(digest).decode("ascii")
    headers[s.header] = s.prefix + encoded
    if s.id_header is not None:
        headers[s.id_header] = event_id or str(uuid.uuid4())
    if s.type_header is not None and event_type:
        headers[s.type_header] = event_type
    return headers
