"""Reading one TOML table into one frozen dataclass, each default stated once: on the dataclass field.

``Table(raw, where, SomeConfig)`` refuses keys that are not fields of ``SomeConfig`` (plus ``extra``), and its
typed getters return the value from the file or, when absent, the field's own default. Every problem is a
``ConfigError`` naming the key, so that services refuse to start rather than guess. Every number a getter
returns is finite: TOML has ``nan`` and ``inf``, and a NaN timeout expires at once in asyncio while an infinite
one never does.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from switchboard.errors import ConfigError
from switchboard.secrets import GENERATED_KINDS, SecretRef

_MISSING = dataclasses.MISSING


def table(raw: Mapping[str, Any], key: str, where: str = "") -> Mapping[str, Any]:
    """The sub-table ``raw[key]`` (empty when absent)."""
    value = raw.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"[{where + '.' if where else ''}{key}] must be a table")
    return value


def known(t: Mapping[str, Any], where: str, keys: Collection[str]) -> None:
    unknown = set(t) - set(keys)
    if unknown:
        raise ConfigError(f"{where or 'top level'}: unknown key(s) {sorted(unknown)}")


class Table:
    """Typed access to one table whose keys are the fields of ``cls``."""

    def __init__(self, raw: Mapping[str, Any], where: str, cls: type, *, extra: Collection[str] = ()) -> None:
        self.raw = raw
        self.where = where
        self._fields = {f.name: f for f in dataclasses.fields(cls)}
        known(raw, where, set(self._fields) | set(extra))

    def _key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def default(self, name: str) -> Any:
        f = self._fields[name]
        if f.default is not _MISSING:
            return f.default
        if f.default_factory is not _MISSING:
            return f.default_factory()
        raise ConfigError(f"{self._key(name)} is required")

    def get(self, name: str) -> Any:
        return self.raw[name] if name in self.raw else self.default(name)

    def present(self, name: str) -> bool:
        return name in self.raw

    def error(self, name: str, problem: str) -> ConfigError:
        return ConfigError(f"{self._key(name)}: {problem}")

    # -- typed getters --------------------------------------------------------------------------------
    def string(self, name: str, *, choices: Collection[str] = (), upper: bool = False) -> str:
        v = self.get(name)
        if not isinstance(v, str):
            raise self.error(name, f"must be a string, got {v!r}")
        v = v.upper() if upper else v
        if choices and v not in choices:
            raise self.error(name, f"must be one of {', '.join(sorted(choices))}, got {v!r}")
        return v

    def optional_string(self, name: str) -> str | None:
        v = self.get(name)
        if v is None or v == "":
            return None
        if not isinstance(v, str):
            raise self.error(name, f"must be a string, got {v!r}")
        return v

    def boolean(self, name: str) -> bool:
        v = self.get(name)
        if not isinstance(v, bool):
            raise self.error(name, f"must be true or false, got {v!r}")
        return v

    def ip(self, name: str) -> str:
        v = self.get(name)
        try:
            ipaddress.ip_address(str(v))
        except ValueError:
            raise self.error(name, f"{v!r} is not an IP address") from None
        return str(v)

    def port(self, name: str) -> int:
        v = self.get(name)
        if not isinstance(v, int) or isinstance(v, bool) or not 0 < v < 65536:
            raise self.error(name, f"{v!r} is not a TCP port")
        return v

    def pos_int(self, name: str) -> int:
        v = self.get(name)
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise self.error(name, f"must be a positive integer, got {v!r}")
        return v

    def int_between(self, name: str, low: int, high: int) -> int:
        v = self.get(name)
        if not isinstance(v, int) or isinstance(v, bool) or not low <= v <= high:
            raise self.error(name, f"must be an integer between {low} and {high}, got {v!r}")
        return v

    def pos_float(self, name: str, *, at_most: float | None = None) -> float:
        """A finite number above 0 (and at most ``at_most``)."""
        v = self.get(name)
        if not _finite(v) or v <= 0:
            raise self.error(name, f"must be a positive finite number, got {v!r}")
        if at_most is not None and v > at_most:
            raise self.error(name, f"must be at most {at_most:g}, got {v!r}")
        return float(v)

    def float_between(self, name: str, low: float, high: float) -> float:
        v = self.get(name)
        if not _finite(v) or not low <= v <= high:
            raise self.error(name, f"must be a number between {low:g} and {high:g}, got {v!r}")
        return float(v)

    def strings(self, name: str) -> tuple[str, ...]:
        v = self.get(name)
        if not isinstance(v, list | tuple) or not all(isinstance(x, str) for x in v):
            raise self.error(name, f"must be a list of strings, got {v!r}")
        return tuple(v)

    def path(self, name: str, base: Path) -> Path:
        return resolve_path(base, self.get(name))

    def optional_path(self, name: str, base: Path) -> Path | None:
        v = self.get(name)
        return resolve_path(base, v) if v else None


def _finite(v: Any) -> bool:
    """``v`` is an int or a float (not a bool) and neither NaN nor infinite."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return False
    return isinstance(v, int) or math.isfinite(v)


def resolve_path(base: Path, v: Any) -> Path:
    """``v`` as a path; relative paths are relative to ``base`` (the configuration file's directory)."""
    p = Path(str(v)).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def parse_secret_ref(ref: Any, where: str, base: Path) -> SecretRef:
    """``{ env = "VAR" }`` or ``{ file = "path", generate = "whsec" | "hex" | "fernet" }``; never a literal."""
    if not isinstance(ref, Mapping):
        raise ConfigError(f'{where}: a secret is referenced as {{ env = "VAR" }} or {{ file = "path" }}')
    t = Table(ref, where, SecretRef)
    if bool(ref.get("env")) == bool(ref.get("file")):
        raise ConfigError(f"{where}: give exactly one of env or file (literal secrets are not accepted)")
    if t.get("generate") not in (None, *GENERATED_KINDS):
        raise ConfigError(f"{where}.generate: must be one of {', '.join(GENERATED_KINDS)}")
    if ref.get("env") and t.get("generate") is not None:  # it was dropped without a word
        raise ConfigError(f"{where}: generate creates a file; with env it would be ignored (use file)")
    if ref.get("env"):
        return SecretRef(env=str(ref["env"]))
    return SecretRef(file=resolve_path(base, ref["file"]), generate=t.get("generate"))
