"""Secrets as small value objects that never print their value."""

from __future__ import annotations

import base64
import logging
import os
import re
import secrets as _secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

from switchboard.errors import ConfigError
from switchboard.files import create_new

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Secret:
    """A secret value with the place it came from. ``repr``/``str`` never show the value."""

    value: str = field(repr=False)
    origin: str = "literal"

    def reveal(self) -> str:
        return self.value

    def __str__(self) -> str:
        return f"<secret from {self.origin}>"


@dataclass(frozen=True)
class SecretRef:
    """Where a secret lives: an environment variable or a file, stripped; one line (a file with a second line,
    a note or a second key, is refused rather than read whole into a key that verifies nothing: several
    secrets are several entries). A file its group or others may write is refused (``chmod 600``): a webhook
    secret or the key that seals signing secrets is no one else's to replace. One others may read is taken
    with a warning: orchestrators mount secrets 0644 (Kubernetes' default) or 0444 (Docker's) into containers
    of their own, where that is the norm; on a shared machine, ``chmod 600`` it."""

    env: str | None = None
    file: Path | None = None
    # For local/demo use only: create the file with a random secret if it does not exist.
    generate: str | None = None

    def describe(self) -> str:
        return f"env:{shown(self.env, env=True)}" if self.env else f"file:{shown(str(self.file))}"

    def resolve(self) -> Secret:
        if self.env:
            value = os.environ.get(self.env, "").strip()
            where = f"secret environment variable {shown(self.env, env=True)}"
            if not value:
                raise ConfigError(f"{where} is not set or empty")
            _one_line(value, where)
            return Secret(value, f"env:{shown(self.env, env=True)}")
        assert self.file is not None
        if not self.file.exists() and self.generate:
            generate_secret_file(self.file, self.generate)
        path = shown(str(self.file))
        try:
            check_private_file(self.file, "secret file", path)
            value = self.file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read secret file {path}: {exc.strerror}") from None
        if not value:
            hint = (
                " (an interrupted first start before it was written atomically? remove it to have a new one "
                "generated: an empty secret never signed or sealed anything)"
                if self.generate
                else ""
            )
            raise ConfigError(f"secret file {path} is empty{hint}")
        _one_line(value, f"secret file {path}")
        return Secret(value, f"file:{path}")


def check_private_file(file: Path, kind: str, name: str) -> None:
    """A file holding a secret (``kind``: a webhook secret, the sealing key, the edge's TLS key; ``name``: its
    path as messages show it): refused (``ConfigError``) if its group or others may write it (no one else's to
    replace); taken with a warning if every user may read it (orchestrators mount secrets 0644 or 0444 into
    containers of their own). Raises ``OSError`` if it cannot be looked at."""
    mode = stat.S_IMODE(file.stat().st_mode)
    if mode & 0o004:
        log.warning(f"{kind} readable by every user", extra={"file": name, "mode": f"{mode:04o}"})
    if mode & 0o022:
        raise ConfigError(
            f"{kind} {name} is writable by its group or others (mode {mode:04o}): run chmod 600 {name} (and "
            "consider rotating the secret)"
        )


_SECRET_PREFIXES = (
    "whsec_", "sk_live_", "sk_test_", "rk_live_", "rk_test_", "shpss_", "shpat_", "ghp_", "gho_", "ghs_", "github_pat_",
    "xoxb-",
)  # fmt: skip
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEX = re.compile(r"[0-9a-fA-F]+")


def _random_looking(text: str) -> bool:
    """16 characters or more with digits, all hex or of both cases: how generated secrets look, and names
    (``STRIPE_WEBHOOK_SECRET_2``, ``my_shop_secret_2024``) do not."""
    if len(text) < 16 or not any(c.isdigit() for c in text):
        return False
    return bool(_HEX.fullmatch(text)) or (any(c.islower() for c in text) and any(c.isupper() for c in text))


def shown(name: str, *, env: bool = False) -> str:
    """``name`` (a variable's name, ``env``, or a file's path) as messages and logs show it, unless it looks like
    a secret pasted where the name belongs: a provider's prefix, a variable name no shell takes (base64's
    ``+/=``), or random-looking (``_random_looking``; for a path, its last part, without an extension); then its
    first characters only. ``{ env = "whsec_..." }`` put the secret itself in the refusal to start, on stderr
    and in the JSON log."""
    if env:
        if name.startswith(_SECRET_PREFIXES) or not _ENV_NAME.fullmatch(name) or _random_looking(name):
            return _redacted(name)
        return name
    path = Path(name)
    if path.name.startswith(_SECRET_PREFIXES) or ("." not in path.name and _random_looking(path.name)):
        return str(path.parent / _redacted(path.name)) if path.parent != Path() else _redacted(path.name)
    return name


def _redacted(text: str) -> str:
    return f"{text[:4]}... ({len(text)} characters: a secret where a name belongs?)"


def _one_line(value: str, where: str) -> None:
    if len(value.splitlines()) > 1:
        raise ConfigError(f"{where} holds more than one line: one secret each (several secrets: several entries)")


GENERATED_KINDS = ("whsec", "hex", "fernet")


def generate_secret_file(path: Path, kind: str) -> None:
    """Write a new random secret readable by the owner only: ``whsec_`` + base64 of 32 bytes, 64 hex digits,
    or a Fernet key (URL-safe base64 of 32 bytes). The file appears whole or not at all (``create_new``: a
    crash never leaves it empty), and never replaces one a concurrent start wrote first: a Fernet key that
    sealed secrets must not be swapped for another."""
    raw = _secrets.token_bytes(32)
    if kind == "whsec":
        value = "whsec_" + base64.b64encode(raw).decode()
    elif kind == "fernet":
        value = base64.urlsafe_b64encode(raw).decode()
    else:
        value = raw.hex()
    create_new(path, value + "\n", mode=0o600)


class SecretBox:
    """Encrypts small secrets for storage (Fernet: AES-128-CBC with HMAC-SHA256, authenticated) under a key
    that never leaves the configuration. ``open`` raises ``ConfigError`` when a value was sealed under
    another key."""

    def __init__(self, key: Secret) -> None:
        from cryptography.fernet import Fernet

        try:
            self._fernet = Fernet(key.reveal().encode())
        except ValueError:
            raise ConfigError(f"the key from {key.origin} is not a Fernet key (URL-safe base64 of 32 bytes)") from None

    def seal(self, value: str) -> bytes:
        return bytes(self._fernet.encrypt(value.encode()))

    def open(self, sealed: bytes) -> str:
        from cryptography.fernet import InvalidToken

        try:
            return str(self._fernet.decrypt(sealed).decode())
        except InvalidToken:
            raise ConfigError("a stored secret does not open with the configured key (was the key replaced?)") from None

    def __repr__(self) -> str:
        return "<SecretBox>"
