"""``[[sources]]``: who may post webhooks, under which signature scheme and secrets."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from switchboard.config._table import Table, parse_secret_ref
from switchboard.config.edge import DEFAULT_MAX_BODY_BYTES, MAX_BODY_BYTES, RateLimit, parse_rate_limit
from switchboard.errors import ConfigError
from switchboard.secrets import SecretRef
from switchboard.signatures import SCHEMES

SOURCE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


@dataclass(frozen=True)
class SourceConfig:
    name: str
    scheme: str
    secrets: tuple[SecretRef, ...]
    # Scheme-specific settings (header, algorithm, encoding, prefix, tolerance_seconds, ...).
    options: Mapping[str, Any] = field(default_factory=dict)
    # When absent from the file: edge.max_body_bytes.
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    # CIDRs allowed to post to this source; empty means any address.
    allow_cidrs: tuple[str, ...] = ()
    rate_limit: RateLimit | None = None
    # The event types this source sends (the catalogue subscriptions' type globs are checked against);
    # empty: not declared, any type is possible.
    event_types: tuple[str, ...] = ()


def parse_sources(raw: Any, base: Path, edge_max_body: int) -> tuple[SourceConfig, ...]:
    if not isinstance(raw, list):
        raise ConfigError("sources: must be an array of tables ([[sources]])")
    sources = tuple(_source(s, idx, base, edge_max_body) for idx, s in enumerate(raw))
    names = [s.name for s in sources]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ConfigError(f"sources: duplicate source name(s) {sorted(dupes)}")
    return sources


def _source(s: Any, idx: int, base: Path, edge_max_body: int) -> SourceConfig:
    where = f"sources[{idx}]"
    if not isinstance(s, Mapping):
        raise ConfigError(f"{where}: must be a table")
    name = s.get("name")
    if not isinstance(name, str) or not SOURCE_NAME.fullmatch(name):
        raise ConfigError(f"{where}.name: {name!r} must match {SOURCE_NAME.pattern}")
    where = f"source {name!r}"
    t = Table(s, where, SourceConfig)
    scheme = s.get("scheme")
    if scheme not in SCHEMES:
        raise ConfigError(f"{where}: scheme {scheme!r} is unknown (one of {', '.join(SCHEMES)}); refusing to start")
    refs = s.get("secrets")
    if not isinstance(refs, list) or not refs:
        raise ConfigError(f"{where}: no secrets configured; a source is never accepted unverified")
    options = t.get("options")
    if not isinstance(options, Mapping):
        raise ConfigError(f"{where}.options: must be a table")
    cidrs = t.strings("allow_cidrs")
    for cidr in cidrs:
        try:
            ipaddress.ip_network(cidr)  # strict: 10.1.2.3/8 (a typo for /32?) is refused, not widened to 10.0.0.0/8
        except ValueError:
            raise ConfigError(f"{where}.allow_cidrs: {cidr!r} is not a CIDR (with no host bits set)") from None
    return SourceConfig(
        name=name,
        scheme=scheme,
        secrets=tuple(parse_secret_ref(ref, f"{where}.secrets[{j}]", base) for j, ref in enumerate(refs)),
        options=dict(options),
        max_body_bytes=t.int_between("max_body_bytes", 1, MAX_BODY_BYTES)
        if t.present("max_body_bytes")
        else edge_max_body,
        allow_cidrs=cidrs,
        rate_limit=parse_rate_limit(t.get("rate_limit"), f"{where}.rate_limit"),
        event_types=t.strings("event_types"),
    )
