"""``switchboard replay ...`` and ``switchboard dlq ...``: the Replay and DeadLetters services of the control
service's gRPC port, with a progress bar for the long ones."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from webhooks.v1 import dead_letters_pb2 as dl
from webhooks.v1 import dead_letters_pb2_grpc, event_pb2, replay_pb2, replay_pb2_grpc

from switchboard.config import PlatformConfig
from switchboard_cli.args import INT32_MAX, LIST_CALLS, MAX_MINUTES, MAX_PAGE, number, whole
from switchboard_cli.channels import open_channel

BAR = 30


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    replay = sub.add_parser("replay", help="process stored events again, or redeliver them", parents=[common])
    r = replay.add_subparsers(dest="action", required=True)
    one = r.add_parser("event", help="replay one event")
    one.add_argument("source")
    one.add_argument("event_id")
    one.add_argument("--subscription", default="", help="only redeliver to this subscription")
    one.add_argument("--reason", default="")
    many = r.add_parser("range", help="replay a source's events in a time range (a job, with a progress bar)")
    many.add_argument("source")
    many.add_argument(
        "--minutes", type=number(0, MAX_MINUTES, above_low=True), required=True, help="the last N minutes"
    )
    many.add_argument("--types", nargs="*", default=[], help="event type globs")
    many.add_argument("--status", choices=["processed", "retrying", "failed", "stale"])
    many.add_argument("--subscription", default="")
    many.add_argument("--rate", type=number(0, 1e6), default=0.0, help="events per second at most")
    many.add_argument("--max", type=whole(0, INT32_MAX), default=0, help="at most this many events")
    many.add_argument("--dry-run", action="store_true")
    many.add_argument(
        "--force",
        action="store_true",
        help="allow a range over the configured cap, and --max up to ten times control.replay_max_events",
    )
    many.add_argument("--reason", default="")
    for name in ("get", "cancel"):
        r.add_parser(name).add_argument("replay_id")

    dlq = sub.add_parser("dlq", help="dead letters: list, show, redrive, purge", parents=[common])
    d = dlq.add_subparsers(dest="action", required=True)
    lst = d.add_parser("list", help="as a table, newest first within each kind (processing, then delivery)")
    _filters(lst)
    lst.add_argument("--limit", type=whole(1, MAX_PAGE), default=50)
    d.add_parser("show").add_argument("id")
    red = d.add_parser("redrive", help="back to their stream with a fresh attempt budget (progress bar)")
    red.add_argument("ids", nargs="*")
    _filters(red)
    red.add_argument("--all", action="store_true", help="every dead letter")
    red.add_argument("--dry-run", action="store_true")
    purge = d.add_parser("purge", help="mark dead letters purged (nothing is deleted)")
    purge.add_argument("ids", nargs="*")
    _filters(purge)
    purge.add_argument("--yes", action="store_true", help="confirm")


def _filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", choices=["processing", "delivery"])
    p.add_argument("--source", default="")
    p.add_argument("--subscription", default="")
    p.add_argument("--type", dest="event_type", default="", help="event type glob")
    p.add_argument("--reason", default="")


@contextmanager
def stubs(cfg: PlatformConfig) -> Iterator[tuple[Any, Any]]:
    channel = open_channel(cfg.control.host, cfg.control.port)
    try:
        yield replay_pb2_grpc.ReplayStub(channel), dead_letters_pb2_grpc.DeadLettersStub(channel)
    finally:
        channel.close()


def run(cfg: PlatformConfig, args: argparse.Namespace) -> int:
    try:
        with stubs(cfg) as (replay, dead):
            return _replay(replay, args) if args.command == "replay" else _dlq(dead, args)
    except grpc.RpcError as exc:
        print(f"\nswitchboard: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1


def _replay(stub: Any, args: argparse.Namespace) -> int:
    if args.action == "event":
        reply = stub.ReplayEvent(
            replay_pb2.ReplayEventRequest(
                source=args.source, event_id=args.event_id, subscription_id=args.subscription, reason=args.reason
            ),
            timeout=30,
        )
        print(f"replay {reply.replay_id} queued")
        return 0
    if args.action in ("get", "cancel"):
        if args.action == "get":
            progress = stub.GetReplay(replay_pb2.GetReplayRequest(replay_id=args.replay_id), timeout=10).progress
        else:
            progress = stub.CancelReplay(replay_pb2.CancelReplayRequest(replay_id=args.replay_id), timeout=30).progress
        _print(progress)
        return 0
    now = int(time.time())
    request = replay_pb2.ReplayEventsRequest(
        source=args.source,
        event_types=args.types,
        status=event_pb2.EventStatus.Value(f"EVENT_STATUS_{args.status.upper()}") if args.status else 0,
        subscription_id=args.subscription,
        reason=args.reason,
        dry_run=args.dry_run,
        max_events=args.max,
        rate_per_second=args.rate,
        force=args.force,
    )
    # Up to the next second (this second's events included), and exactly --minutes long: the end of the
    # range at now + 1 and its start at now made --minutes 10080 (the 168 h limit) one second too long.
    request.end_time.FromSeconds(now + 1)
    request.start_time.FromSeconds(now + 1 - round(args.minutes * 60))
    last = None
    for reply in stub.ReplayEvents(request):
        last = reply.progress
        _bar(
            f"replay {last.replay_id}",
            last.done + last.failed,
            last.matched,
            f"queued {last.queued}, failed {last.failed}",
        )
    print()
    if last is None:
        return 1
    _print(last)
    # Scripts can tell: 0 only for a job that ended DONE with every event it queued done (a dry run: DONE).
    settled = args.dry_run or last.done == last.queued
    return 0 if last.state == replay_pb2.REPLAY_STATE_DONE and not last.failed and settled else 1


def _dlq(stub: Any, args: argparse.Namespace) -> int:
    if args.action == "show":
        _print(stub.GetDeadLetter(dl.GetDeadLetterRequest(id=args.id), timeout=10).dead_letter)
        return 0
    f = dl.DeadLetterFilter(
        kind=dl.DeadLetterKind.Value(f"DEAD_LETTER_KIND_{args.kind.upper()}") if args.kind else 0,
        source=args.source,
        subscription_id=args.subscription,
        event_type=args.event_type,
        reason=args.reason,
    )
    if args.action == "list":
        found, token = _dead_letters(stub, f, args.limit)
        print(f"{'id':28} {'kind':10} {'state':9} {'source':10} {'event':32} {'type':24} {'tries':>5}  last error")
        for d in found:
            kind = dl.DeadLetterKind.Name(d.kind).removeprefix("DEAD_LETTER_KIND_").lower()
            state = dl.DeadLetterState.Name(d.state).removeprefix("DEAD_LETTER_STATE_").lower()
            print(
                f"{d.id:28} {kind:10} {state:9} {d.source[:10]:10} {d.event_id[:32]:32} {d.event_type[:24]:24} "
                f"{d.attempts:5d}  {d.last_error[:60]}"
            )
        if token:
            print("(more: narrow the filter or raise --limit)")
        return 0
    if args.action == "purge":
        reply = stub.PurgeDeadLetters(dl.PurgeDeadLettersRequest(ids=args.ids, filter=f, confirm=args.yes), timeout=60)
        print(f"{reply.purged} dead letters marked purged")
        return 0
    request = dl.RedriveDeadLettersRequest(ids=args.ids, filter=f, all=args.all, dry_run=args.dry_run)
    failed = 0
    for p in stub.RedriveDeadLetters(request):
        _bar("redrive", p.redriven + p.failed, p.matched, f"redriven {p.redriven}, failed {p.failed} {p.message}")
        failed = p.failed
    print()
    return 1 if failed else 0  # scripts can tell a redrive that left some behind


def _dead_letters(stub: Any, f: Any, limit: int) -> tuple[list[Any], str]:
    """Up to ``limit`` dead letters, following the service's pages (a page ends early once its messages reach
    ~3 MiB, and a filtered one can come back short with a token); the token of what is left."""
    found: list[Any] = []
    token = ""
    for _ in range(LIST_CALLS):
        request = dl.ListDeadLettersRequest(filter=f, page_size=limit - len(found), page_token=token)
        page = stub.ListDeadLetters(request, timeout=30)
        found += page.dead_letters
        token = page.next_page_token
        if not token or len(found) >= limit:
            break
    return found, token


def _bar(label: str, done: int, total: int, detail: str) -> None:
    filled = BAR if total == 0 else min(BAR, BAR * done // max(total, 1))
    sys.stdout.write(f"\r{label} [{'#' * filled}{'.' * (BAR - filled)}] {done}/{total} {detail}   ")
    sys.stdout.flush()


def _print(message: Any) -> None:
    print(json.dumps(MessageToDict(message, preserving_proto_field_name=True), indent=2))
