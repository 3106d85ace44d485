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
import json
import signal
import ssl
import sys
import time
from typing import Any

import grpc
from aiohttp import web

from switchboard.config import PlatformConfig
from switchboard.errors import ConfigError, SignatureError
from switchboard.signatures.standard_webhooks import StandardWebhooksVerifier
from switchboard_cli.args import whole
from switchboard_devstack.tls import ensure_local_tls

MAX_PRINTED = 2000


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    listen = sub.add_parser("listen", help="receive deliveries locally, verify and print them", parents=[common])
    listen.add_argument("--port", type=whole(1, 65535), default=4400)
    listen.add_argument("--secret", default="", help="verify with this whsec_ secret")
    listen.add_argument("--subscribe", action="store_true", help="create a subscription to this listener")
    listen.add_argument("--types", nargs="+", default=["*"], help="event type globs for --subscribe")
    listen.add_argument("--status", type=whole(200, 599), default=200, help="the HTTP status to answer with")


def run(cfg: PlatformConfig, args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_listen(cfg, args))
    except KeyboardInterrupt:
        return 130


async def _listen(cfg: PlatformConfig, args: argparse.Namespace) -> int:
    """Listens first, then subscribes (a subscription is never left behind by a listener that could not start),
    and deletes the subscription it made whatever ends it."""
    from switchboard_cli import subs

    if not args.secret and not args.subscribe:
        print("switchboard: give --secret or --subscribe", file=sys.stderr)
        return 2
    verifier: list[StandardWebhooksVerifier] = []

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            if not verifier:
                raise SignatureError("no secret yet", reason="NOT_READY")
            verifier[0].verify(headers, body, time.time())
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

    url = f"https://127.0.0.1:{args.port}/"
    app = web.Application()
    app.router.add_post("/{tail:.*}", receive)
    runner = web.AppRunner(app, access_log=None)
    subscription_id = ""
    try:
        _, cert, key = ensure_local_tls(cfg.tls_dir)
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(str(cert), str(key))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", args.port, ssl_context=tls).start()
    except (OSError, ssl.SSLError) as exc:
        await runner.cleanup()
        print(f"switchboard: cannot listen on {url}: {exc}", file=sys.stderr)
        return 1
    # Before the subscription exists: a terminal closed (SIGHUP) or a SIGTERM left it behind, pointing at a port
    # nobody listens on (every matching event a failing delivery for a day, then a dead letter). A signal that
    # comes while the subscription is being made is handled once it is: the cleanup below deletes it.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if sig == signal.SIGHUP and signal.getsignal(sig) is signal.SIG_IGN:
            continue  # started under nohup: it outlives its terminal, as asked
        loop.add_signal_handler(sig, stop.set)
    try:
        secret = args.secret
        if args.subscribe:
            try:
                secret, subscription_id = subs.create_for_listener(cfg, url, args.types)
            except grpc.RpcError as exc:
                print(f"switchboard: no subscription: {exc.code().name}: {exc.details()}", file=sys.stderr)
                return 1
            print(f"subscription {subscription_id} → {url} (event types {', '.join(args.types)})", flush=True)
        try:
            verifier.append(StandardWebhooksVerifier("listen", [secret], tolerance_seconds=300))
        except ConfigError as exc:
            print(f"switchboard: {exc}", file=sys.stderr)
            return 2
        print(f"listening on {url} (Ctrl-C stops)", flush=True)
        await stop.wait()
        return 0
    finally:
        await runner.cleanup()
        if subscription_id:
            try:
                subs.delete(cfg, subscription_id)
                print(f"subscription {subscription_id} deleted", flush=True)
            except grpc.RpcError as exc:
                print(
                    f"switchboard: subscription {subscription_id} not deleted ({exc.code().name}): "
                    f"delete it with `switchboard subs delete {subscription_id}`",
                    file=sys.stderr,
                )
