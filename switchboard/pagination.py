"""Opaque page tokens: a small JSON object (the query it belongs to and the cursor), URL-safe base64. The
services check that a token comes back with the same query; anything else is ``PAGE_TOKEN_INVALID``."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from switchboard.errors import InvalidRequest


def encode_token(fields: Mapping[str, Any]) -> str:
    raw = json.dumps(fields, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_token(token: str) -> dict[str, Any]:
    try:
        value = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise invalid_token()
    return value


def invalid_token() -> InvalidRequest:
    return InvalidRequest("page_token is not a token this service issued", reason="PAGE_TOKEN_INVALID")


def mismatched_token() -> InvalidRequest:
    return InvalidRequest("page_token belongs to another query", reason="PAGE_TOKEN_MISMATCH")
