"""Webhook signatures, verify and sign, one small module per scheme (pure logic, no I/O per request).

Ingest verifies what providers send; outbound delivery signs what it sends with the same code.

``build_verifier(source)`` resolves the source's secrets and options once, at start-up; the returned
``Verifier.verify(headers, body, received_at)`` is then called per request and either returns a
``Verified`` or raises ``SignatureError`` / ``InvalidRequest`` (see ``switchboard.signatures.base``).
``sign(...)`` produces the headers a sender using a scheme puts on a request: the CLI, the tests and the
benchmark sign like providers, and delivery signs with ``standard_webhooks.sign``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from switchboard.errors import ConfigError
from switchboard.secrets import SecretRef
from switchboard.signatures import github, shopify, standard_webhooks, stripe
from switchboard.signatures import hmac as generic_hmac
from switchboard.signatures.base import Builder, Verified, Verifier

__all__ = ["SCHEMES", "SourceSpec", "Verified", "Verifier", "build_verifier", "check_distinct_secrets", "sign"]

_BUILDERS: dict[str, Builder] = {
    stripe.SCHEME: stripe.build,
    github.SCHEME: github.build,
    shopify.SCHEME: shopify.build,
    standard_webhooks.SCHEME: standard_webhooks.build,
    generic_hmac.SCHEME: generic_hmac.build,
}
# The shortest inbound secret taken (characters, after a ``whsec_`` prefix). Providers' own secrets are longer
# (Stripe's and Standard Webhooks' 32 bytes and more, Shopify's 32 hex digits); a sender's own choice (GitHub's,
# a generic HMAC's) may not be.
MIN_SECRET_CHARS = 16
SCHEMES = tuple(_BUILDERS)  # the one list of schemes; the configuration validates against it


class SourceSpec(Protocol):
    """What a verifier is built from (``switchboard.config.SourceConfig`` is one)."""

    @property
    def name(self) -> str: ...
    @property
    def scheme(self) -> str: ...
    @property
    def secrets(self) -> Sequence[SecretRef]: ...
    @property
    def options(self) -> Mapping[str, Any]: ...


def build_verifier(source: SourceSpec) -> Verifier:
    """The verifier for ``source``; ``ConfigError`` naming the source (never showing a secret) when the
    scheme is unknown, a secret is missing or unreadable, or an option is unknown or invalid."""
    name = source.name
    builder = _BUILDERS.get(source.scheme) if isinstance(source.scheme, str) else None
    if builder is None:
        raise ConfigError(
            f"source {name!r}: scheme {str(source.scheme)[:40]!r} is unknown (one of {', '.join(SCHEMES)});"
            " refusing to start"
        )
    if not source.secrets:
        raise ConfigError(f"source {name!r}: no secrets configured; a source is never accepted unverified")
    if not isinstance(source.options, Mapping):
        raise ConfigError(f"source {name!r}: options must be a table")
    secrets = []
    for index, ref in enumerate(source.secrets):
        try:
            secret = ref.resolve().reveal()
        except ConfigError as exc:
            raise ConfigError(f"source {name!r}: {exc.message}", reason=exc.reason) from None
        except ValueError:  # e.g. a secret file that is not valid text; the error text may quote bytes
            raise ConfigError(f"source {name!r}: secret #{index + 1} ({ref.describe()}) is not valid text") from None
        if len(secret.removeprefix("whsec_")) < MIN_SECRET_CHARS:
            # One signed request captured, a short key is found offline and every webhook of the source forged.
            raise ConfigError(
                f"source {name!r}: secret #{index + 1} ({ref.describe()}) is shorter than {MIN_SECRET_CHARS} "
                "characters (after any whsec_ prefix): too short to keep forged webhooks out; set a long random "
                "secret at the provider and here"
            )
        secrets.append(secret)
    return builder(name, secrets, source.options)


def sign(
    scheme: str,
    secret: str,
    body: bytes,
    *,
    now: float,
    options: Mapping[str, Any] | None = None,
    event_id: str | None = None,
    event_type: str | None = None,
) -> dict[str, str]:
    """The signature (and id/type) headers a provider using ``scheme`` would send with ``body``.

    ``options`` are the source's options (only the generic ``hmac`` scheme needs them). For Stripe and
    Standard Webhooks the type lives in the body; for Stripe the id too.
    """
    if scheme == stripe.SCHEME:
        return stripe.sign(secret, body, now=now)
    if scheme == github.SCHEME:
        return github.sign(secret, body, now=now, event_id=event_id, event_type=event_type or "push")
    if scheme == shopify.SCHEME:
        return shopify.sign(secret, body, now=now, event_id=event_id, event_type=event_type or "orders/updated")
    if scheme == standard_webhooks.SCHEME:
        return standard_webhooks.sign(secret, body, now=now, event_id=event_id)
    if scheme == generic_hmac.SCHEME:
        return generic_hmac.sign(secret, body, now=now, event_id=event_id, event_type=event_type, **dict(options or {}))
    raise ConfigError(f"scheme {scheme[:40]!r} is unknown (one of {', '.join(SCHEMES)})")


def check_distinct_secrets(sources: Sequence[SourceSpec]) -> None:
    """No signing secret serves two sources: no scheme signs the source's name, so a request signed for one
    would verify at the other and, keyed by that source, be taken as a new event (applied and delivered
    again). Compared by digest, never shown."""
    owners: dict[bytes, tuple[str, int]] = {}
    for source in sources:
        for index, ref in enumerate(source.secrets, start=1):
            # ``whsec_`` labels a Standard Webhooks key (its base64 follows, padding optional): not part of it.
            digest = hashlib.sha256(ref.resolve().reveal().removeprefix("whsec_").rstrip("=").encode()).digest()
            other, other_index = owners.setdefault(digest, (source.name, index))
            if other != source.name:
                raise ConfigError(
                    f"sources {other!r} (secret #{other_index}) and {source.name!r} (secret #{index}) share a "
                    "signing secret: a request signed for one would be taken by the other as a new event; give "
                    "each source a secret of its own; refusing to start"
                )
