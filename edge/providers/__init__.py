"""Inbound signature verification, one small module per provider scheme (pure logic, no I/O per request).

``build_verifier(source)`` resolves the source's secrets and options once, at start-up; the returned
``Verifier.verify(headers, body, received_at)`` is then called per request and either returns a
``Verified`` or raises ``SignatureError`` / ``InvalidRequest`` (see ``edge.providers.base``).
``sign(...)`` produces the headers a real provider would send, for our CLI, tests and benchmark.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edge.providers import github, shopify, standard_webhooks, stripe
from edge.providers import hmac as generic_hmac
from edge.providers.base import Builder, Verified, Verifier
from switchboard.config import SourceConfig
from switchboard.errors import ConfigError

__all__ = ["SCHEMES", "Verified", "Verifier", "build_verifier", "sign"]

_BUILDERS: dict[str, Builder] = {
    stripe.SCHEME: stripe.build,
    github.SCHEME: github.build,
    shopify.SCHEME: shopify.build,
    standard_webhooks.SCHEME: standard_webhooks.build,
    generic_hmac.SCHEME: generic_hmac.build,
}
SCHEMES = tuple(_BUILDERS)


def build_verifier(source: SourceConfig) -> Verifier:
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
            secrets.append(ref.resolve().reveal())
        except ConfigError as exc:
            raise ConfigError(f"source {name!r}: {exc.message}", reason=exc.reason) from None
        except ValueError:  # e.g. a secret file that is not valid text; the error text may quote bytes
            raise ConfigError(f"source {name!r}: secret #{index + 1} ({ref.describe()}) is not valid text") from None
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
