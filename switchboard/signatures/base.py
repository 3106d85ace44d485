"""What every provider adapter shares: the result type, the verifier interface and small pure helpers.

Contract of ``Verifier.verify``: it either returns a ``Verified`` or raises ``SignatureError`` (the
signature or timestamp did not verify; ``reason`` names the check) or ``InvalidRequest`` (the request is
authentic but unusable, e.g. ``BODY_NOT_JSON``, ``EVENT_ID_MISSING``). No input may make it raise anything
else. The signature is always checked before the body is looked at, and no error ever carries a secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from switchboard.errors import ConfigError, InvalidRequest, SignatureError
from switchboard.headers import edge_owned

# Reasons carried by the errors raised here (``SwitchboardError.reason``).
SIGNATURE_HEADER_MISSING = "SIGNATURE_HEADER_MISSING"
SIGNATURE_HEADER_MALFORMED = "SIGNATURE_HEADER_MALFORMED"
SIGNATURE_MISMATCH = "SIGNATURE_MISMATCH"
TIMESTAMP_EXPIRED = "TIMESTAMP_EXPIRED"
TIMESTAMP_IN_FUTURE = "TIMESTAMP_IN_FUTURE"
SIGNATURE_SCHEME_REFUSED = "SIGNATURE_SCHEME_REFUSED"
BODY_NOT_JSON = "BODY_NOT_JSON"
EVENT_ID_MISSING = "EVENT_ID_MISSING"

DEFAULT_TOLERANCE_SECONDS = 300.0
# Timestamps outside [1970, 9999] are garbage, never a provider's clock.
_MAX_UNIX = 253_402_300_799.0
_MAX_INT64 = 2**63 - 1
_UNIX_SECONDS = re.compile(r"[0-9]{1,12}")
_HEX = re.compile(r"[0-9a-fA-F]+")


@dataclass(frozen=True, slots=True)
class Verified:
    """What the edge learnt from an authentic request.

    ``provider_time`` is the provider's own time for the event (unix seconds) when it gives one.
    ``entity_id``/``entity_version`` feed the out-of-order guard: ``""`` means no entity, ``0`` means the
    version is unknown. Versions are comparable only within one source and entity.
    """

    event_id: str
    event_type: str
    provider_time: float | None = None
    entity_id: str = ""
    entity_version: int = 0


class Verifier(ABC):
    """Verifies one source's requests. Built once (keys precomputed), then called per request.

    ``headers`` keys are lowercase; ``received_at`` is the arrival time (unix seconds), against which any
    timestamp tolerance is checked.
    """

    __slots__ = ("source",)

    scheme: ClassVar[str]
    # The headers that carry the signature: never stored with the event. Without a timestamp under the
    # signature (GitHub, Shopify, HMAC without one) a stored signature and body are a request anyone who can
    # read events could send again, under a new delivery id, as a new event.
    SIGNATURE_HEADERS: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, source: str) -> None:
        self.source = source

    @property
    def signature_headers(self) -> frozenset[str]:
        return self.SIGNATURE_HEADERS

    @abstractmethod
    def verify(self, headers: Mapping[str, str], body: bytes, received_at: float) -> Verified:
        """Check the request and extract the event's identity; see the module docstring for the contract."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} source={self.source!r}>"


class MacSet:
    """One HMAC per active secret (rotation: a signature under ANY of them is accepted).

    Each HMAC is keyed once at build time; a check only copies it, so no key schedule runs per request.
    """

    __slots__ = ("_macs",)

    def __init__(self, source: str, keys: Iterable[bytes], digestmod: str = "sha256") -> None:
        unique = tuple(dict.fromkeys(keys))
        if not unique:
            raise ConfigError(f"source {source!r}: no secrets configured; refusing to run unverified")
        self._macs = tuple(hmac.new(key, digestmod=digestmod) for key in unique)

    def __len__(self) -> int:
        return len(self._macs)

    def __repr__(self) -> str:
        return f"<MacSet secrets={len(self._macs)}>"

    def digests(self, *parts: bytes) -> list[bytes]:
        """The MAC of the concatenated ``parts`` under every active secret."""
        out = []
        for base in self._macs:
            mac = base.copy()
            for part in parts:
                mac.update(part)
            out.append(mac.digest())
        return out

    def check(self, candidates: Sequence[bytes], header: str, *parts: bytes) -> None:
        """Accept if any candidate equals the MAC under any secret (constant-time compares), else
        ``SIGNATURE_MISMATCH``."""
        if not candidates:
            raise malformed(header, "carries no signature")
        for expected in self.digests(*parts):
            for candidate in candidates:
                if hmac.compare_digest(expected, candidate):
                    return
        raise SignatureError(
            f"{header}: no signature matches the request under any active secret",
            reason=SIGNATURE_MISMATCH,
            metadata={"header": header},
        )


# --- errors ---------------------------------------------------------------------------------------


def missing(header: str) -> SignatureError:
    return SignatureError(
        f"the {header} header is missing", reason=SIGNATURE_HEADER_MISSING, metadata={"header": header}
    )


def malformed(header: str, what: str) -> SignatureError:
    return SignatureError(f"{header}: {what}", reason=SIGNATURE_HEADER_MALFORMED, metadata={"header": header})


def refused(header: str, what: str) -> SignatureError:
    return SignatureError(f"{header}: {what}", reason=SIGNATURE_SCHEME_REFUSED, metadata={"header": header})


def event_id_missing(where: str) -> InvalidRequest:
    return InvalidRequest(f"the event id ({where}) is missing", reason=EVENT_ID_MISSING, metadata={"field": where})


# --- header values ----------------------------------------------------------------------------------


def require(headers: Mapping[str, str], header: str) -> str:
    """The header's value, stripped; ``SIGNATURE_HEADER_MISSING`` when absent or blank."""
    value = headers.get(header)
    if not isinstance(value, str):
        raise missing(header)
    value = value.strip()
    if not value:
        raise missing(header)
    return value


def header_value(headers: Mapping[str, str], header: str) -> str:
    """The header's value stripped, or ``""`` (also for one UTF-8 cannot encode)."""
    value = headers.get(header)
    return value.strip() if isinstance(value, str) and _encodable(value) else ""


def parse_unix_seconds(value: str, header: str) -> int:
    """A unix-seconds header: ASCII digits only (no sign, no fraction)."""
    if _UNIX_SECONDS.fullmatch(value) is None:
        raise malformed(header, "the timestamp is not unix seconds")
    return int(value)


def check_tolerance(timestamp: float, received_at: float, tolerance: float, header: str) -> None:
    """Reject a timestamp further than ``tolerance`` seconds from the arrival time, in either direction."""
    if timestamp < received_at - tolerance:
        raise SignatureError(
            f"{header}: the timestamp is more than {tolerance:g} s older than the arrival time",
            reason=TIMESTAMP_EXPIRED,
            metadata={"header": header},
        )
    if timestamp > received_at + tolerance:
        raise SignatureError(
            f"{header}: the timestamp is more than {tolerance:g} s ahead of the arrival time",
            reason=TIMESTAMP_IN_FUTURE,
            metadata={"header": header},
        )


def decode_hex(value: str, size: int) -> bytes | None:
    """``size`` bytes from hex text (either case), or None if it is not exactly that."""
    if len(value) != 2 * size or _HEX.fullmatch(value) is None:
        return None
    return bytes.fromhex(value)


def decode_base64(value: str, size: int) -> bytes | None:
    """``size`` bytes from standard base64 text (padded), or None if it is not exactly that."""
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == size else None


# --- body -----------------------------------------------------------------------------------------


def load_json(body: bytes) -> Any:
    """The parsed body, or ``InvalidRequest(BODY_NOT_JSON)`` (also for absurd nesting or numbers)."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise InvalidRequest("the body is not valid JSON", reason=BODY_NOT_JSON) from None


def load_json_object(body: bytes) -> dict[str, Any]:
    obj = load_json(body)
    if not isinstance(obj, dict):
        raise InvalidRequest("the body is not a JSON object", reason=BODY_NOT_JSON)
    return obj


def try_json(body: bytes) -> Any:
    """The parsed body, or None when it is not JSON (for optional fields)."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def compile_path(path: str) -> tuple[str, ...]:
    """``"data.object.id"`` → ``("data", "object", "id")``; done once at build time."""
    parts = tuple(path.split("."))
    if not path or any(not part for part in parts):
        raise ValueError(f"invalid JSON field path {path!r}")
    return parts


def json_field(obj: Any, path: tuple[str, ...]) -> Any:
    """The value at a compiled dotted path (objects by key, arrays by decimal index), or None."""
    for part in path:
        if isinstance(obj, dict):
            obj = obj.get(part)
        elif isinstance(obj, list) and part.isdecimal() and part.isascii():
            index = int(part)
            obj = obj[index] if index < len(obj) else None
        else:
            return None
    return obj


def content_id(body: bytes) -> str:
    """The fallback event id: ``"sha256:" + hex digest of the body``."""
    return "sha256:" + hashlib.sha256(body).hexdigest()


# --- value coercion (never raises) ----------------------------------------------------------------


def as_id(value: Any) -> str:
    """A non-empty string or an integer (not a bool) as an id string, else ``""`` (a string UTF-8 cannot encode
    included: ``json.loads`` lets lone surrogates such as ``"\\ud800"`` through)."""
    if isinstance(value, str):
        return value if _encodable(value) else ""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value) if -_MAX_INT64 <= value <= _MAX_INT64 else ""
    return ""


def as_text(value: Any) -> str:
    """A string UTF-8 can encode, else ``""``."""
    return value if isinstance(value, str) and _encodable(value) else ""


def _encodable(value: str) -> bool:
    if value.isascii():
        return True
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def as_unix(value: Any) -> float | None:
    """A JSON number of unix seconds within [1970, 9999], else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, int):
        return float(value) if 0 <= value <= _MAX_UNIX else None
    return value if math.isfinite(value) and 0.0 <= value <= _MAX_UNIX else None


def unix_to_micros(seconds: float | int | None) -> int:
    """Unix seconds → integer microseconds, 0 when unknown or out of range."""
    if seconds is None:
        return 0
    micros = seconds * 1_000_000 if isinstance(seconds, int) else round(seconds * 1_000_000)
    return micros if 0 < micros <= _MAX_INT64 else 0


def parse_iso8601(value: Any) -> float | None:
    """ISO 8601 date-time text → unix seconds (a naive time is taken as UTC), or None."""
    if not isinstance(value, str) or not 10 <= len(value) <= 64:
        return None
    try:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        seconds = parsed.timestamp()
    except (ValueError, OverflowError, OSError):
        return None
    return as_unix(seconds)


def format_iso8601(unix: float) -> str:
    """Unix seconds → ``2024-01-31T12:00:00.123Z``-style UTC text (millisecond precision)."""
    return datetime.fromtimestamp(unix, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- options ----------------------------------------------------------------------------------------


class Options:
    """Reads a source's ``options`` table: typed getters, then ``finish()`` refuses unknown keys.

    Every problem is a ``ConfigError`` naming the source and the key. Option values are configuration,
    never secrets.
    """

    __slots__ = ("_options", "_scheme", "_seen", "_source")

    def __init__(self, source: str, scheme: str, options: Mapping[str, Any]) -> None:
        self._source = source
        self._scheme = scheme
        self._options = options
        self._seen: set[str] = set()

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"source {self._source!r}: option {key!r} {problem}")

    def _get(self, key: str) -> Any:
        self._seen.add(key)
        return self._options.get(key)

    def string(self, key: str, default: str | None = None, *, choices: Sequence[str] = ()) -> str | None:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.error(key, "must be a string")
        if choices and value not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)} (got {value[:40]!r})")
        return value

    def header(self, key: str, *, required: bool = False) -> str | None:
        """An HTTP header name, returned lowercase (as the edge passes headers)."""
        value = self.string(key)
        if value is None:
            if required:
                raise self.error(key, f"is required for scheme {self._scheme}")
            return None
        if re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}", value) is None:
            raise self.error(key, f"is not a valid HTTP header name (got {value[:40]!r})")
        if edge_owned(value.lower()):
            # x-request-id: Envoy's own id on every request, so every retry was a new event, applied again;
            # traceparent, x-envoy-*...: removed, so every request was refused 401
            raise self.error(key, f"names {value.lower()!r}, which the edge removes or replaces: ingest never sees it")
        return value.lower()

    def json_path(self, key: str) -> tuple[str, ...] | None:
        value = self.string(key)
        if value is None:
            return None
        try:
            return compile_path(value)
        except ValueError:
            raise self.error(key, f"is not a dotted JSON path (got {value[:40]!r})") from None

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(key, "must be true or false")
        return value

    def tolerance(self, key: str = "tolerance_seconds") -> float:
        value = self._get(key)
        if value is None:
            return DEFAULT_TOLERANCE_SECONDS
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, "must be a number of seconds")
        if not (math.isfinite(value) and 0 < value <= 86_400 * 365):
            raise self.error(key, "must be more than 0 and at most a year")
        return float(value)

    def finish(self) -> None:
        unknown = sorted(str(key) for key in self._options if key not in self._seen)
        if unknown:
            known = ", ".join(sorted(self._seen)) or "none"
            raise ConfigError(
                f"source {self._source!r}: option {unknown[0]!r} is unknown for scheme {self._scheme} (known: {known})"
            )


def utf8_keys(source: str, secrets: Iterable[str]) -> list[bytes]:
    """Secrets as UTF-8 key bytes (undecodable bytes read from the environment come back as they were)."""
    keys = []
    for index, secret in enumerate(secrets):
        try:
            keys.append(secret.encode("utf-8", "surrogateescape"))
        except UnicodeEncodeError:
            raise ConfigError(f"source {source!r}: secret #{index + 1} is not valid text") from None
    return keys


# The factory every scheme module exposes as ``build``.
Builder = Callable[[str, Sequence[str], Mapping[str, Any]], Verifier]
