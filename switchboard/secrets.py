"""Secrets as small value objects that never print their value."""

from __future__ import annotations

import os
import secrets as _secrets
from dataclasses import dataclass, field
from pathlib import Path

from switchboard.errors import ConfigError


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
    """Where a secret lives: an environment variable or a file (first line, stripped)."""

    env: str | None = None
    file: Path | None = None
    # For local/demo use only: create the file with a random secret if it does not exist.
    generate: str | None = None

    def describe(self) -> str:
        return f"env:{self.env}" if self.env else f"file:{self.file}"

    def resolve(self) -> Secret:
        if self.env:
            value = os.environ.get(self.env, "").strip()
            if not value:
                raise ConfigError(f"secret environment variable {self.env} is not set or empty")
            return Secret(value, f"env:{self.env}")
        assert self.file is not None
        if not self.file.exists() and self.generate:
            generate_secret_file(self.file, self.generate)
        try:
            value = self.file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read secret file {self.file}: {exc.strerror}") from None
        if not value:
            raise ConfigError(f"secret file {self.file} is empty")
        return Secret(value, f"file:{self.file}")


def generate_secret_file(path: Path, kind: str) -> None:
    """Write a new random secret (``whsec_`` + base64 of 32 bytes, or hex) readable by the owner only."""
    import base64

    raw = _secrets.token_bytes(32)
    value = "whsec_" + base64.b64encode(raw).decode() if kind == "whsec" else raw.hex()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
