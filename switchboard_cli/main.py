"""The ``switchboard`` command.

switchboard stack up [--config FILE] [--processors N] [--with-prometheus]   start the whole local platform
switchboard status [--window S] [--json]                health, rates, queues, dead letters, p99s, alerts
switchboard send [--source NAME] [--type TYPE]          sign and send a realistic sample event
switchboard events get SOURCE EVENT_ID                  read a stored event through the Query service
switchboard events list SOURCE [--minutes N] [--status S]  a source's events of the last N minutes, oldest first
switchboard events entity SOURCE ENTITY_ID              the latest applied state of a provider entity
switchboard subs create URL [--types G...] [--condition CEL] ...   a subscription; prints its secret once
switchboard subs list | get ID | delete ID | enable ID | disable ID | rotate ID [--overlap S]
switchboard deliveries list SUB [--status S] | attempts SUB [--delivery ID]
switchboard listen [--port N] (--subscribe [--types G...] | --secret whsec_...)   receive deliveries locally
switchboard token --client ID [--ttl S]                 a development JWT for the REST API
switchboard replay event SOURCE ID [--subscription S] | range SOURCE --minutes N [...] | get ID | cancel ID
switchboard dlq list [filters] | show ID | redrive [IDS] [filters|--all] | purge [IDS] [filters] --yes
switchboard trace EVENT_ID [--source S] | --trace-id ID   the event's spans, Envoy to Cassandra, as a tree
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import ssl
import sys
import threading
import time
from pathlib import Path
from typing import Any

from switchboard.addresses import host_port
from switchboard.config import PlatformConfig, load_config
from switchboard.config.platform import CONFIG_ENV
from switchboard.errors import ConfigError, StackError, SwitchboardError
from switchboard.runtime.logs import setup_logging
from switchboard_cli import listen, operations, status, subs, trace
from switchboard_cli.args import LIST_CALLS, MAX_MINUTES, MAX_PAGE, whole
from switchboard_cli.channels import open_channel
from switchboard_devstack.paths import DevPaths

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser (every subcommand)."""
    parser = argparse.ArgumentParser(prog="switchboard", description="Switchboard webhook platform")
    parser.add_argument("--config", type=Path, default=None, help="configuration file (default: switchboard.toml)")
    sub = parser.add_subparsers(dest="command", required=True)

    stack = sub.add_parser("stack", help="run the local platform")
    stack_sub = stack.add_subparsers(dest="action", required=True)
    up = stack_sub.add_parser("up", help="start RabbitMQ, Cassandra, Envoy and the services; Ctrl-C stops them")
    up.add_argument("--config", type=Path, default=None, dest="sub_config")
    up.add_argument("--processors", type=whole(1, 64), default=None, help="processor processes (default: from config)")
    up.add_argument(
        "--with-prometheus", action="store_true", help="also run Prometheus (scrapes everything, evaluates alerts)"
    )

    send = sub.add_parser("send", help="sign and send a sample event for a configured source")
    send.add_argument("--config", type=Path, default=None, dest="sub_config")
    send.add_argument("--source", default=None, help="source name (default: the edge's default source)")
    send.add_argument("--type", dest="event_type", default=None, help="event type (default: a typical one)")
    send.add_argument(
        "--size", type=whole(0, 16 * 2**20), default=None, help="pad the payload to about this many bytes"
    )
    send.add_argument("--url", default=None, help="edge base URL (default: from config)")
    send.add_argument("--count", type=whole(1, 10**7), default=1, help="how many events to send")

    events = sub.add_parser("events", help="read stored events through the Query service")
    events.add_argument("--config", type=Path, default=None, dest="sub_config")
    ev_sub = events.add_subparsers(dest="action", required=True)
    get = ev_sub.add_parser("get")
    get.add_argument("source")
    get.add_argument("event_id")
    lst = ev_sub.add_parser("list")
    lst.add_argument("source")
    lst.add_argument("--minutes", type=whole(1, MAX_MINUTES), default=60)
    lst.add_argument("--limit", type=whole(1, MAX_PAGE), default=20)
    lst.add_argument("--status", choices=["processed", "retrying", "failed", "stale"], help="only events in it")
    lst.add_argument("--page-token", default="", help="go on where a listing's next_page_token left off")
    ent = ev_sub.add_parser("entity")
    ent.add_argument("source")
    ent.add_argument("entity_id")

    tok = sub.add_parser("token", help="mint a development JWT for the REST API (/api/v1/webhooks)")
    tok.add_argument("--config", type=Path, default=None, dest="sub_config")
    tok.add_argument("--client", required=True, dest="client_id", help="client id (the token's subject)")
    tok.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default: 3600)")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=None, dest="sub_config")
    subs.add_parsers(sub, common)
    listen.add_parser(sub, common)
    operations.add_parsers(sub, common)
    status.add_parser(sub, common)
    trace.add_parser(sub, common)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        # As the services: --config, else $SWITCHBOARD_CONFIG, else the checkout's switchboard.toml.
        chosen = getattr(args, "sub_config", None) or args.config or os.environ.get(CONFIG_ENV)
        cfg = load_config(chosen or DevPaths.default().default_config)
    except ConfigError as exc:
        print(f"switchboard: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a directory, no permission
        print(f"switchboard: cannot read the configuration: {exc}", file=sys.stderr)
        return 2
    try:
        return _dispatch(cfg, args)
    except KeyboardInterrupt:
        print("switchboard: interrupted", file=sys.stderr)
        return 130


def _dispatch(cfg: PlatformConfig, args: argparse.Namespace) -> int:
    if args.command == "stack":
        return stack_up(cfg, args.processors, with_prometheus=args.with_prometheus)
    if args.command == "send":
        return send_events(cfg, args.source, args.event_type, args.size, args.url, args.count)
    if args.command == "token":
        from switchboard_cli.token import run_token

        return run_token(cfg, args.client_id, args.ttl)
    if args.command in ("subs", "deliveries"):
        return subs.run(cfg, args)
    if args.command == "listen":
        return listen.run(cfg, args)
    if args.command in ("replay", "dlq"):
        return operations.run(cfg, args)
    if args.command == "status":
        return status.run(cfg, args)
    if args.command == "trace":
        return trace.run(cfg, args)
    return query_events(cfg, args)


def stack_up(cfg: PlatformConfig, processors: int | None, *, with_prometheus: bool = False) -> int:
    """Starts the stack and supervises it until SIGINT, SIGTERM or SIGHUP (a closed terminal). A signal while it
    starts stops what started at once (it used to be noticed only once everything was up, after up to three
    minutes per component); a second one while it stops SIGKILLs every process group it started. The handler
    only sets flags (``Stack.stop``): raised from it, an exception could land between a spawn and its being
    listed, leaving a component nothing stops. What it prints may fail (a closed terminal's tty answers EIO):
    the components are stopped first."""
    from switchboard_devstack.stack import Stack

    setup_logging("stack", cfg.log_level)
    stop_requested = threading.Event()
    stack = Stack(cfg, processors=processors, with_prometheus=with_prometheus, stop=stop_requested)
    phase = "starting"
    received: list[str] = []

    def on_signal(signum: int, _frame: Any) -> None:
        nonlocal phase
        received.append(signal.Signals(signum).name)
        if phase != "stopping":
            phase = "stopping"
            stop_requested.set()
            return
        _say("switchboard: stopping now: SIGKILL to every process started", sys.stderr)
        stack.kill()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        try:
            stack.up()
        except SwitchboardError as exc:  # StackError, ConfigError; StoreUnavailable when stopped during its wait
            if received:
                _say(f"switchboard: {received[0]} while starting; stopping what started", sys.stderr)
                return 130
            _say(f"switchboard: the stack did not start: {exc}", sys.stderr)
            return 1
        if phase == "stopping":
            return 130
        phase = "running"
        _say(stack.describe(), sys.stdout)
        try:
            stack.supervise(lambda: phase == "stopping")
        except StackError as exc:
            _say(f"switchboard: {exc}", sys.stderr)
            return 1
        return 0
    finally:  # whatever happened, stop everything this command started, and nothing else
        phase = "stopping"
        _say("stopping... (again: kill at once)", sys.stdout)
        stack.down()
        _say("stopped.", sys.stdout)


def _say(text: str, stream: Any) -> None:
    """Prints ``text``; a closed terminal (EIO, a broken pipe) is no reason not to go on stopping."""
    with contextlib.suppress(OSError):
        print(text, file=stream, flush=True)


def _sign(
    cfg: PlatformConfig, source_name: str, event_type: str | None, size: int | None
) -> tuple[bytes, dict[str, str]]:
    from switchboard.signatures import sign
    from switchboard_devstack.samples import sample_event

    source = cfg.source(source_name)
    if source is None:
        raise ConfigError(f"no source named {source_name!r} in {cfg.path}")
    body, headers = sample_event(source.scheme, event_type=event_type, size=size)
    secret = source.secrets[0].resolve().reveal()
    headers.update(sign(source.scheme, secret, body, now=time.time(), options=source.options, event_type=event_type))
    return body, headers


def send_events(
    cfg: PlatformConfig,
    source: str | None,
    event_type: str | None,
    size: int | None,
    url: str | None,
    count: int,
) -> int:
    import httpx

    name = source or cfg.edge.default_source or (cfg.sources[0].name if cfg.sources else None)
    if not name:
        print("switchboard: no source configured", file=sys.stderr)
        return 2
    base = url or f"https://{host_port(cfg.edge.bind, cfg.edge.https_port)}"
    ca = cfg.tls_dir / "ca.pem"
    verify: Any = ssl.create_default_context(cafile=ca) if ca.exists() and not url else True
    worst = 0
    with httpx.Client(verify=verify, timeout=10) as client:
        for _ in range(count):
            try:
                body, headers = _sign(cfg, name, event_type, size)
            except ConfigError as exc:
                print(f"switchboard: {exc}", file=sys.stderr)
                return 2
            try:
                resp = client.post(f"{base}/webhook/{name}", content=body, headers=headers)
            except httpx.HTTPError as exc:
                print(f"switchboard: cannot reach {base}: {exc}", file=sys.stderr)
                return 1
            print(f"{resp.status_code} {resp.text}")
            if resp.status_code != 200:
                worst = 1
    return worst


def _list_events(stub: Any, args: argparse.Namespace) -> Any:
    """Up to ``--limit`` events of the last ``--minutes``, oldest first, following the service's pages (a
    status-filtered page can come back short or empty with a token: the service scans a bounded number of rows
    per call); the reply's ``next_page_token`` continues with ``--page-token``."""
    from google.protobuf.timestamp_pb2 import Timestamp
    from webhooks.v1 import event_pb2, query_pb2

    start = Timestamp()
    start.FromSeconds(int(time.time()) - args.minutes * 60)
    status = event_pb2.EventStatus.Value(f"EVENT_STATUS_{args.status.upper()}") if args.status else 0
    reply = query_pb2.ListEventsResponse(next_page_token=args.page_token)
    for _ in range(LIST_CALLS):
        request = query_pb2.ListEventsRequest(
            source=args.source,
            page_size=args.limit - len(reply.events),
            status=status,
            page_token=reply.next_page_token,
        )
        if not reply.next_page_token:  # a token holds the range its first page pinned
            request.start_time.CopyFrom(start)
        page = stub.ListEvents(request, timeout=10)
        reply.events.extend(page.events)
        reply.next_page_token = page.next_page_token
        if not page.next_page_token or len(reply.events) >= args.limit:
            break
    return reply


def query_events(cfg: PlatformConfig, args: argparse.Namespace) -> int:
    import grpc
    from google.protobuf.json_format import MessageToDict
    from webhooks.v1 import query_pb2, query_pb2_grpc

    with open_channel(cfg.query.host, cfg.query.port) as channel:
        stub = query_pb2_grpc.QueryStub(channel)
        try:
            if args.action == "get":
                reply: Any = stub.GetEvent(
                    query_pb2.GetEventRequest(source=args.source, event_id=args.event_id), timeout=10
                )
            elif args.action == "entity":
                reply = stub.GetEntity(
                    query_pb2.GetEntityRequest(source=args.source, entity_id=args.entity_id), timeout=10
                )
            else:
                reply = _list_events(stub, args)
        except grpc.RpcError as exc:
            print(f"switchboard: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    print(json.dumps(MessageToDict(reply, preserving_proto_field_name=True), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
