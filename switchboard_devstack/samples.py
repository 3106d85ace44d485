"""Realistic sample events per provider scheme, for ``switchboard send`` and the benchmark.

``sample_event`` returns the body and the headers a provider sends besides its signature (content type,
user agent, and for GitHub/Shopify the event id/type headers). Sign with ``switchboard.signatures.sign`` and merge
its headers over these (``headers | signature_headers``); ``signed_event`` does both. Every call makes fresh
ids. ``size`` pads a free-text field so that the body is about that many bytes (never less than the
unpadded event).
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from switchboard.signatures import sign
from switchboard.signatures.base import format_iso8601

_LOREM = (
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore "
    "et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris nisi ut "
    "aliquip ex ea commodo consequat. "
)
_PAD = "\x00PAD\x00"  # placeholder, replaced by filler text after the first serialisation
_JSON = {"content-type": "application/json"}


def _rand(n: int = 14) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(n))


def _filler(n: int) -> str:
    return (_LOREM * (n // len(_LOREM) + 1))[:n]


def _render(event: Mapping[str, Any], size: int | None, *, indent: int | None = None) -> bytes:
    """Serialise, then grow the placeholder field so that the body is ``size`` bytes (ASCII filler)."""
    text = json.dumps(event, indent=indent, separators=None if indent else (",", ":"))
    placeholder = json.dumps(_PAD)[1:-1]
    fill = max(0, (size or 0) - (len(text) - len(placeholder)))
    return text.replace(placeholder, _filler(fill), 1).encode()


def _stripe(event_type: str | None, size: int | None, entity_id: str | None) -> tuple[bytes, dict[str, str]]:
    now = int(time.time())
    invoice_id = entity_id or "in_" + _rand(24)
    amount = secrets.randbelow(100_000) + 100
    event = {
        "id": "evt_" + _rand(24),
        "object": "event",
        "api_version": "2024-06-20",
        "created": now,
        "data": {
            "object": {
                "id": invoice_id,
                "object": "invoice",
                "account_country": "US",
                "amount_due": amount,
                "amount_paid": amount,
                "amount_remaining": 0,
                "attempt_count": 1,
                "billing_reason": "subscription_cycle",
                "collection_method": "charge_automatically",
                "created": now - 3600,
                "currency": "usd",
                "customer": "cus_" + _rand(14),
                "customer_email": "jenny.rosen@example.com",
                "description": _PAD,
                "hosted_invoice_url": f"https://invoice.stripe.com/i/acct_{_rand(16)}/test_{_rand(24)}",
                "lines": {
                    "object": "list",
                    "data": [
                        {
                            "id": "il_" + _rand(24),
                            "object": "line_item",
                            "amount": amount,
                            "currency": "usd",
                            "description": "1 x Pro plan (at $%.2f / month)" % (amount / 100),
                            "period": {"start": now - 3600, "end": now + 30 * 86400},
                            "quantity": 1,
                        }
                    ],
                    "has_more": False,
                    "url": f"/v1/invoices/{invoice_id}/lines",
                },
                "livemode": False,
                "metadata": {"order_ref": _rand(10)},
                "number": f"{_rand(8).upper()}-0001",
                "paid": True,
                "status": "paid",
                "subscription": "sub_" + _rand(24),
                "total": amount,
            }
        },
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type or "invoice.paid",
    }
    headers = {**_JSON, "user-agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)"}
    return _render(event, size, indent=2), headers


def _github(event_type: str | None, size: int | None, entity_id: str | None) -> tuple[bytes, dict[str, str]]:
    now = time.time()
    repo = entity_id or "octo-org/hello-world"
    owner, _, name = repo.partition("/")
    after, before = secrets.token_hex(20), secrets.token_hex(20)
    author = {"name": "Mona Lisa", "email": "mona@example.com", "username": "monalisa"}
    commit = {
        "id": after,
        "tree_id": secrets.token_hex(20),
        "distinct": True,
        "message": _PAD,
        "timestamp": format_iso8601(now),
        "url": f"https://github.com/{repo}/commit/{after}",
        "author": author,
        "committer": author,
        "added": [],
        "removed": [],
        "modified": ["README.md"],
    }
    user = {"login": "monalisa", "id": 583231, "type": "User", "site_admin": False}
    event = {
        "ref": "refs/heads/main",
        "before": before,
        "after": after,
        "repository": {
            "id": secrets.randbelow(10**9),
            "name": name or owner,
            "full_name": repo,
            "private": False,
            "owner": {"login": owner, "id": 9919, "type": "Organization"},
            "html_url": f"https://github.com/{repo}",
            "default_branch": "main",
        },
        "pusher": {"name": "monalisa", "email": "mona@example.com"},
        "sender": user,
        "created": False,
        "deleted": False,
        "forced": False,
        "compare": f"https://github.com/{repo}/compare/{before[:12]}...{after[:12]}",
        "commits": [commit],
        "head_commit": {k: v for k, v in commit.items() if k != "message"} | {"message": "Update README"},
    }
    headers = {
        **_JSON,
        "user-agent": "GitHub-Hookshot/" + secrets.token_hex(4)[:7],
        "x-github-event": event_type or "push",
        "x-github-delivery": str(uuid.uuid4()),
        "x-github-hook-id": str(secrets.randbelow(10**9)),
    }
    return _render(event, size), headers


def _shopify(event_type: str | None, size: int | None, entity_id: str | None) -> tuple[bytes, dict[str, str]]:
    now = time.time()
    order_id: int | str = secrets.randbelow(9 * 10**12) + 10**12
    if entity_id is not None:
        order_id = int(entity_id) if entity_id.isdecimal() and entity_id.isascii() else entity_id
    price = f"{secrets.randbelow(50_000) / 100 + 1:.2f}"
    event = {
        "id": order_id,
        "admin_graphql_api_id": f"gid://shopify/Order/{order_id}",
        "email": "jon@example.com",
        "created_at": format_iso8601(now - 86400),
        "updated_at": format_iso8601(now),
        "currency": "USD",
        "financial_status": "paid",
        "fulfillment_status": None,
        "name": f"#{secrets.randbelow(9000) + 1000}",
        "note": _PAD,
        "total_price": price,
        "subtotal_price": price,
        "line_items": [
            {
                "id": secrets.randbelow(10**13),
                "title": "IPod Nano - 8GB",
                "quantity": 1,
                "price": price,
                "sku": "IPOD2008PINK",
            }
        ],
        "customer": {"id": secrets.randbelow(10**13), "email": "jon@example.com", "first_name": "Jon"},
    }
    headers = {
        **_JSON,
        "user-agent": "Shopify-Captain-Hook",
        "x-shopify-topic": event_type or "orders/updated",
        "x-shopify-webhook-id": str(uuid.uuid4()),
        "x-shopify-event-id": str(uuid.uuid4()),
        "x-shopify-triggered-at": format_iso8601(now),
        "x-shopify-shop-domain": "example.myshopify.com",
        "x-shopify-api-version": "2024-07",
    }
    return _render(event, size), headers


def _standard_webhooks(event_type: str | None, size: int | None, entity_id: str | None) -> tuple[bytes, dict[str, str]]:
    event = {
        "type": event_type or "invoice.paid",
        "timestamp": format_iso8601(time.time()),
        "data": {
            "id": entity_id or "inv_" + _rand(20),
            "customer_id": "cust_" + _rand(16),
            "amount": secrets.randbelow(100_000),
            "currency": "EUR",
            "status": "paid",
            "notes": _PAD,
        },
    }
    return _render(event, size), {**_JSON, "user-agent": "Svix-Webhooks/1.24"}


def _generic(event_type: str | None, size: int | None, entity_id: str | None) -> tuple[bytes, dict[str, str]]:
    event = {
        "id": str(uuid.uuid4()),
        "type": event_type or "order.created",
        "created_at": format_iso8601(time.time()),
        "data": {
            "id": entity_id or "ord_" + _rand(16),
            "total": secrets.randbelow(100_000),
            "currency": "EUR",
            "comment": _PAD,
        },
    }
    return _render(event, size), {**_JSON, "user-agent": "switchboard-sample/1"}


_SAMPLES: dict[str, Callable[[str | None, int | None, str | None], tuple[bytes, dict[str, str]]]] = {
    "stripe": _stripe,
    "github": _github,
    "shopify": _shopify,
    "standard_webhooks": _standard_webhooks,
    "hmac": _generic,
}


def sample_event(
    scheme: str, *, event_type: str | None = None, size: int | None = None, entity_id: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """A fresh realistic ``(body, headers)`` for ``scheme``, headers lowercase and without the signature.

    ``entity_id`` sets the object the event is about (Stripe invoice id, GitHub repository full name,
    Shopify order id, ``data.id`` otherwise). ValueError for an unknown scheme.
    """
    make = _SAMPLES.get(scheme)
    if make is None:
        raise ValueError(f"no sample for scheme {scheme!r} (one of {', '.join(_SAMPLES)})")
    return make(event_type, size, entity_id)


def signed_event(
    scheme: str,
    secret: str,
    *,
    now: float | None = None,
    options: Mapping[str, Any] | None = None,
    event_type: str | None = None,
    size: int | None = None,
    entity_id: str | None = None,
) -> tuple[bytes, dict[str, str]]:
    """``sample_event`` signed with ``secret`` as the provider would, all headers merged."""
    body, headers = sample_event(scheme, event_type=event_type, size=size, entity_id=entity_id)
    event_id = headers.get("x-github-delivery") or headers.get("x-shopify-webhook-id")
    signature = sign(
        scheme,
        secret,
        body,
        now=time.time() if now is None else now,
        options=options,
        event_id=event_id,
        event_type=headers.get("x-github-event") or headers.get("x-shopify-topic") or event_type,
    )
    return body, headers | signature
