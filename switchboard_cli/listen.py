"""``switchboard listen``: a local HTTPS receiver that verifies each delivery's Standard Webhooks signature
and prints it (what ``stripe listen`` does for Stripe).

With ``--subscribe`` it creates a subscription pointing at itself (through the control service), uses that
subscription's secret, and deletes the subscription when it stops (Ctrl-C). With ``--secret`` it verifies
against a secret you already have. It listens on 127.0.0.1 with the local stack's certificate (var/tls/), so
the delivery workers trust it through ``delivery.ca_file`` and the loopback allowlist of the local default.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import ssl
import sys
import time
from typing import Any

from aiohttp import web

from switchboard.config import PlatformConfig
from switchboard.errors import SignatureError
from switchboard.signatures.standard_webhooks import StandardWebhooksVerifier
from switchboard_devstack.tls import ensure_local_tls

MAX_PRINTED = 2000


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    listen = sub.add_parser("listen", help="receive deliveries locally, verify and print them", parents=[common])
    listen.add_argument("--port", type=int, default=4400)
    listen.add_argument("--secret", default="", help="verify with this whsec_ secret")
    listen.add_argument("--subscribe", action="store_true", help="create a subscription to this listener")
    listen.add_argument("--types", nargs="+", default=["*"], help="event type globs for --subscribe")
    listen.add_argument("--status", type=int, default=200, help="the HTTP status to answer with")


def run(cfg: PlatformConfig, args: argparse.Namespace) -> int:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_listen(cfg, args))
    return 0


async def _listen(cfg: PlatformConfig, args: argparse.Namespace) -> None:
    from switchboard_cli import subs

    url = f"https://127.0.0.1:{args.port}/"
    secret, subscription_id = args.secret, ""
    if args.subscribe:
        created = subs.create_for_listener(cfg, url, args.types)
        secret, subscription_id = created
        print(f"subscription {subscription_id} → {url} (event types {', '.join(args.types)})", flush=True)
    if not secret:
        print("switchboard: give --secret or --subscribe", file=sys.stderr)
        return
    verifier = StandardWebhooksVerifier("listen", [secret], tolerance_seconds=300)

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            verifier.verify(headers, body, time.time())
            verdict = "signature ok"
        except SignatureError as exc:
            verdict = f"SIGNATURE REJECTED ({exc.reason})"
        try:
            shown = json.dumps(json.loads(body), indent=2)
        except ValueError:
            shown = body.decode("utf-8", "replace")
        print(f"--> {headers.get('webhook-id')}  {verdict}  {len(body)} bytes", flush=True)
        print(shown[:MAX_PRINTED], flush=True)
        return web.Response(status=args.status, text="ok")

    _, cert, key = ensure_local_tls(cfg.tls_dir)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(str(cert), str(key))
    app = web.Application()
    app.router.add_post("/{tail:.*}", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port, ssl_context=tls).start()
    print(f"listening on {url} (Ctrl-C stops)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        if subscription_id:
            subs.delete(cfg, subscription_id)
            print(f"subscription {subscription_id} deleted", flush=True)
