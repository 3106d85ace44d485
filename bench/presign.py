"""Pre-signed requests for ``bench/load.lua`` (wrk): N Stripe-style ~5 KB events (invoices with random line
items), each a complete HTTP/1.1 request (request line, headers, body), signed the way Stripe signs, written
to one file wrk's LuaJIT loads with two reads per request.

A share of the requests (``dup_share``, 2% by default) are re-sends of an earlier event of the same file: the
same body and id with a freshly computed signature, as a provider retrying a delivery would send. They create
the duplicates the processors must record and not apply again.

Stripe signatures carry their timestamp and the platform refuses those older than 300 s: generate a file
right before the load that uses it.

File format (``SBREQ1``)::

    SBREQ1 <count>\\n
    then per request:  <event_id> <0|1 re-send> <byte length>\\n<that many bytes: the raw HTTP request>

    python -m bench.presign --out /tmp/req.bin --count 1000 --secret-file stripe.secret --port 8443
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from switchboard.addresses import host_port
from switchboard.signatures import sign

MAGIC = b"SBREQ1"
PATH = "/webhook/shop"


@dataclass
class Presigned:
    """What a file holds, for the verification afterwards: the event id of every request in file order and
    the positions of the re-sends."""

    path: Path
    ids: list[str] = field(default_factory=list)
    resend: list[bool] = field(default_factory=list)
    nbytes: int = 0
    signed_at: float = 0.0

    @property
    def count(self) -> int:
        return len(self.ids)

    @property
    def resends(self) -> int:
        return sum(self.resend)


_PRODUCTS = (
    "Starter plan",
    "Growth plan",
    "Enterprise seat",
    "Extra storage (100 GB)",
    "API calls overage",
    "Priority support",
    "SMS credits",
    "Analytics add-on",
)
_LINES = '"__lines__"'


def make_body(size: int, now: float, tag: str) -> tuple[str, bytes]:
    """A Stripe ``invoice.paid`` event of about ``size`` bytes (never less than one line item, ~1.3 KB) with a
    unique event id and a unique entity (invoice) id, so that no event is ever stale against another.

    The invoice has as many line items as fit, each with its own random ids, quantity and price, so that a
    body compresses about as well as a real one (zstd or zlib: ~3.8x at 5 KB) and not like padding would
    (~50x): what the platform stores, and how much that costs, depends on it."""
    rnd = random.Random(secrets.randbits(64))

    def hexid(prefix: str, n: int) -> str:
        return f"{prefix}{rnd.getrandbits(4 * n):0{n}x}"

    event_id = f"evt_{tag}{secrets.token_hex(10)}"
    created = int(now)
    start = created - 30 * 86_400
    sub = hexid("sub_", 24)
    lines: list[str] = []
    total = 0
    used = 1000  # the envelope and invoice fields around the line items
    while not lines or used < size:
        qty = rnd.randint(1, 20)
        unit = rnd.choice((500, 1200, 2900, 4900, 9900, 19900))
        total += qty * unit
        product = rnd.choice(_PRODUCTS)
        lines.append(
            f'{{"id":"{hexid("il_", 24)}","object":"line_item","amount":{qty * unit},"currency":"usd",'
            f'"description":"{qty} \\u00d7 {product} (at ${unit / 100:.2f} / month)","discountable":true,'
            f'"livemode":false,"period":{{"start":{start},"end":{created}}},"price":{{"id":"{hexid("price_", 24)}",'
            f'"object":"price","active":true,"currency":"usd","product":"{hexid("prod_", 14)}",'
            f'"recurring":{{"interval":"month","interval_count":1}},"type":"recurring","unit_amount":{unit}}},'
            f'"proration":false,"quantity":{qty},"subscription":"{sub}","subscription_item":"{hexid("si_", 14)}",'
            f'"type":"subscription"}}'
        )
        used += len(lines[-1]) + 1
    invoice_id = hexid("in_", 24)
    envelope = {
        "id": event_id,
        "object": "event",
        "api_version": "2024-06-20",
        "created": created,
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": hexid("req_", 14), "idempotency_key": hexid("", 32)},
        "type": "invoice.paid",
        "data": {
            "object": {
                "id": invoice_id,
                "object": "invoice",
                "account_country": "US",
                "amount_due": total,
                "amount_paid": total,
                "amount_remaining": 0,
                "billing_reason": "subscription_cycle",
                "collection_method": "charge_automatically",
                "currency": "usd",
                "customer": hexid("cus_", 14),
                "customer_email": f"billing+{hexid('', 8)}@example.com",
                "hosted_invoice_url": f"https://invoice.example.com/i/{hexid('acct_', 16)}/{hexid('', 32)}",
                "lines": {
                    "object": "list",
                    "data": "__lines__",
                    "has_more": False,
                    "url": f"/v1/invoices/{invoice_id}/lines",
                },
                "metadata": {"order_ref": hexid("", 12)},
                "number": f"{hexid('', 8).upper()}-{rnd.randint(1, 9999):04d}",
                "paid": True,
                "period_end": created,
                "period_start": start,
                "status": "paid",
                "subscription": sub,
                "total": total,
            }
        },
    }
    body = json.dumps(envelope, separators=(",", ":")).replace(_LINES, "[" + ",".join(lines) + "]", 1)
    return event_id, body.encode()


def _request(host: str, body: bytes, signature: str) -> bytes:
    head = (
        f"POST {PATH} HTTP/1.1\r\n"
        f"Host: {host}\r\n"
        "Content-Type: application/json\r\n"
        f"Stripe-Signature: {signature}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    )
    return head.encode() + body


def resend_positions(count: int, share: float, *, min_gap: int = 64) -> set[int]:
    """Evenly spread positions (exactly ``round(count * share)`` of them where the file is long enough) that
    re-send an earlier event; none in the first ``min_gap`` requests so that an original always exists."""
    if share <= 0 or count <= min_gap:
        return set()
    wanted = round(count * share)
    usable = count - min_gap
    wanted = min(wanted, usable // 2)
    if wanted <= 0:
        return set()
    step = usable / wanted
    return {min_gap + int(i * step + step / 2) for i in range(wanted)}


def presign(
    out: Path,
    count: int,
    secret: str,
    *,
    host: str,
    size: int = 5000,
    dup_share: float = 0.02,
    now: float | None = None,
    tag: str = "",
    min_gap: int = 64,
    max_gap: int = 4000,
) -> Presigned:
    """Writes ``count`` requests to ``out``; a re-send repeats an original between ``min_gap`` and ``max_gap``
    positions earlier (so it is usually sent after its original was answered). ``tag`` goes into every event
    id (a phase's letter, to tell phases apart in the store)."""
    signed_at = time.time() if now is None else now
    resends = resend_positions(count, dup_share, min_gap=min_gap)
    rng = secrets.SystemRandom()
    recent: deque[tuple[str, bytes]] = deque(maxlen=max_gap)  # the last originals, oldest first
    info = Presigned(out, signed_at=signed_at)
    with open(out, "wb") as f:
        f.write(MAGIC + b" %d\n" % count)
        for i in range(count):
            if i in resends and recent:
                # an original at least min_gap originals back (when there are that many)
                event_id, body = recent[rng.randrange(0, max(1, len(recent) - min_gap))]
                is_resend = True
            else:
                event_id, body = make_body(size, signed_at, tag)
                recent.append((event_id, body))
                is_resend = False
            headers = sign("stripe", secret, body, now=signed_at)
            req = _request(host, body, headers["stripe-signature"])
            f.write(b"%s %d %d\n" % (event_id.encode(), int(is_resend), len(req)))
            f.write(req)
            info.ids.append(event_id)
            info.resend.append(is_resend)
            info.nbytes += len(req)
    return info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--secret-file", type=Path, required=True, help="the Stripe source's secret")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="the HTTPS edge's port (Host header)")
    parser.add_argument("--size", type=int, default=5000)
    parser.add_argument("--dup-share", type=float, default=0.02)
    args = parser.parse_args()
    started = time.perf_counter()
    info = presign(
        args.out,
        args.count,
        args.secret_file.read_text().strip(),
        host=host_port(args.host, args.port),
        size=args.size,
        dup_share=args.dup_share,
    )
    print(
        f"{args.out}: {info.count} requests ({info.resends} re-sends), {info.nbytes / 1e6:.1f} MB"
        f" in {time.perf_counter() - started:.1f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
