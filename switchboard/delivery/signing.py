"""Standard Webhooks signing of outbound deliveries.

Contract
--------
:func:`delivery_headers` returns the headers Switchboard adds to every delivery attempt of a body:

* ``webhook-id``: the delivery id (:func:`switchboard.delivery.ids.delivery_id`), the same on every retry,
  so receivers can deduplicate;
* ``webhook-timestamp``: ``now`` as whole Unix seconds (signed, so it must be the time of THIS attempt:
  receivers refuse timestamps more than about 5 minutes off);
* ``webhook-signature``: ``v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`` once per active
  secret, space-separated, in the order given (during a rotation the new and the old secret both sign, so a
  receiver holding either one verifies);
* ``user-agent`` is the sender's (``delivery.user_agent``, by default :data:`USER_AGENT`,
  ``Switchboard-Webhooks/<version>``), not set here.

The body is signed as the exact bytes sent; the caller sends those bytes and passes the event's
``content-type`` through itself. Signing is :func:`switchboard.signatures.standard_webhooks.sign`, the same
code the inbound verifier is tested against. Secrets are ``whsec_`` + base64 of the key:
:func:`new_secret` draws 32 random bytes; :func:`check_secret` vets one supplied by a subscriber (key of
24 to 64 bytes, as Svix accepts) and raises ``InvalidRequest(reason="SIGNING_SECRET_INVALID",
metadata={"field": "secret"})``. :func:`delivery_headers` refuses an empty id, an id or secret it cannot
sign with, and an empty or oversized secret list with ``SwitchboardError(reason="SIGNING_FAILED")``: those are
bugs upstream, never a subscriber's input, and no secret ever appears in a message.
"""

from __future__ import annotations

import base64
import math
import re
import secrets as _secrets
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Final

from switchboard.errors import InvalidRequest, SwitchboardError
from switchboard.signatures import standard_webhooks

__all__ = ["MAX_OVERLAP_SECONDS", "MAX_SECRETS", "USER_AGENT", "check_secret", "delivery_headers", "new_secret"]


def _version() -> str:
    try:
        return version("switchboard")
    except PackageNotFoundError:  # pragma: no cover - running from a checkout that was never installed
        return "0+unknown"


USER_AGENT: Final = f"Switchboard-Webhooks/{_version()}"
# Our own verifier (standard_webhooks.parse_signatures) accepts at most 32 v1 entries.
MAX_SECRETS: Final = 32
# The longest a rotated-out secret keeps signing beside the new one (a rotation's overlap, or
# delivery.secret_overlap_seconds for a rotation that names none).
MAX_OVERLAP_SECONDS: Final = 30 * 86_400
_MIN_KEY_BYTES = 24
_MAX_KEY_BYTES = 64
# A header-safe token: 1 to 255 visible ASCII characters (no spaces, no CR/LF).
_ID = re.compile(r"[!-~]{1,255}")


def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` + base64 of 32 random bytes."""
    return standard_webhooks.SECRET_PREFIX + base64.b64encode(_secrets.token_bytes(32)).decode("ascii")


def check_secret(secret: str) -> str:
    """Vet a subscriber-supplied secret; returns it unchanged."""
    error = InvalidRequest(
        "secret: must be 'whsec_' followed by the base64 of 24 to 64 random bytes",
        reason="SIGNING_SECRET_INVALID",
        metadata={"field": "secret"},
    )
    if not isinstance(secret, str) or not secret.startswith(standard_webhooks.SECRET_PREFIX):
        raise error
    try:
        key = standard_webhooks.secret_key(secret)
    except ValueError:
        raise error from None
    if not _MIN_KEY_BYTES <= len(key) <= _MAX_KEY_BYTES:
        raise error
    return secret


def delivery_headers(delivery_id: str, body: bytes, secrets: Sequence[str], now: float) -> dict[str, str]:
    """The signing and identification headers of one attempt (keys lowercase); see the module docstring."""
    if not isinstance(delivery_id, str) or not _ID.fullmatch(delivery_id):
        raise SwitchboardError("delivery id is empty or not a header-safe token", reason="SIGNING_FAILED")
    if not isinstance(now, int | float) or not math.isfinite(now) or now < 0:
        raise SwitchboardError("now must be a finite, non-negative Unix time", reason="SIGNING_FAILED")
    if isinstance(secrets, str):
        raise SwitchboardError("secrets must be a sequence of secrets, not one string", reason="SIGNING_FAILED")
    active = list(dict.fromkeys(secrets))  # a secret listed twice signs once
    if not active:
        raise SwitchboardError("no signing secret", reason="SIGNING_FAILED")
    if len(active) > MAX_SECRETS:
        raise SwitchboardError(f"more than {MAX_SECRETS} signing secrets", reason="SIGNING_FAILED")
    try:
        headers = standard_webhooks.sign(
            active[0], bytes(body), now=now, event_id=delivery_id, extra_secrets=active[1:]
        )
    except ValueError as exc:  # secret_key's message never contains the secret
        raise SwitchboardError(f"cannot sign: {exc}", reason="SIGNING_FAILED") from None
    return headers
