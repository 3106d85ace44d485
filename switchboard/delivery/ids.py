"""Deterministic delivery ids.

Contract
--------
``delivery_id(source, event_id, subscription_id)`` is ``"msg_"`` + the lowercase, unpadded base32 of the
first 16 bytes (128 bits) of ``SHA-256("switchboard.delivery.v1\\0" + source + "\\0" + event_id + "\\0" +
subscription_id)`` (UTF-8, lone surrogates kept with ``surrogatepass``): 30 characters, ``[a-z2-7]`` after
the prefix. The same inputs give the same id in every process, on every retry and after a redrive, so it is
the Standard Webhooks ``webhook-id`` receivers deduplicate on; different inputs give different ids up to
hash collisions. ``source`` and ``subscription_id`` must be non-empty and free of NUL, which makes the
encoding injective (the event id, the only free text, sits between the two NULs that delimit it); a bad
input raises ``SwitchboardError(reason="DELIVERY_ID_INVALID")`` (a bug upstream, not a client's input).

Collision odds: with n ids the chance of any collision is about n² / 2^129: 1.5e-15 for a trillion
(10^12) deliveries, 1.5e-21 for a billion; one specific pair collides with probability 2^-128.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Final

from switchboard.errors import SwitchboardError

__all__ = ["DELIVERY_ID_PREFIX", "delivery_id"]

DELIVERY_ID_PREFIX: Final = "msg_"
_DOMAIN = b"switchboard.delivery.v1\0"
_DIGEST_BYTES = 16


def delivery_id(source: str, event_id: str, subscription_id: str) -> str:
    """The id of the delivery of event (``source``, ``event_id``) to ``subscription_id``."""
    for name, value in (("source", source), ("subscription_id", subscription_id)):
        if not isinstance(value, str) or not value or "\0" in value:
            raise SwitchboardError(f"{name} must be a non-empty string without NUL", reason="DELIVERY_ID_INVALID")
    if not isinstance(event_id, str) or not event_id:
        raise SwitchboardError("event_id must be a non-empty string", reason="DELIVERY_ID_INVALID")
    material = "\0".join((source, event_id, subscription_id)).encode("utf-8", "surrogatepass")
    digest = hashlib.sha256(_DOMAIN + material).digest()[:_DIGEST_BYTES]
    return DELIVERY_ID_PREFIX + base64.b32encode(digest).decode("ascii").rstrip("=").lower()
