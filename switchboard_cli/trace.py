"""``switchboard trace EVENT_ID``: the span tree of an event's trace, with timings.

The event's trace id comes from the stored event (``GetEvent``: the ``traceparent`` ingest kept); the spans
from the local trace receiver's store (``[tracing] endpoint = "local"``, under ``<data_dir>/traces``). An
event Envoy did not sample has a trace id but no spans: the command says so, with the sampling rate. With an
external collector, the command prints the trace id to look up there.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from switchboard.config import PlatformConfig
from switchboard.observability.tracing import sampled
from switchboard_cli.args import number
from switchboard_cli.channels import open_channel
from switchboard_devstack.traces import read_trace, render_tree


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("trace", help="print the span tree of an event's trace", parents=[common])
    p.add_argument("event_id", nargs="?", help="the event's id (its trace id is read from the stored event)")
    p.add_argument("--source", default=None, help="the event's source (default: the edge's default source)")
    p.add_argument("--trace-id", default=None, help="a trace id (32 hex digits) instead of an event")
    p.add_argument("--wait", type=number(0, 600), default=5.0, help="seconds to wait for spans still being exported")


def run(cfg: PlatformConfig, args: argparse.Namespace) -> int:
    trace_id = (args.trace_id or "").lower()
    if not trace_id:
        if not args.event_id:
            print("switchboard: give an EVENT_ID or --trace-id", file=sys.stderr)
            return 2
        source = args.source or cfg.edge.default_source
        if not source:
            print("switchboard: --source is required (no default source configured)", file=sys.stderr)
            return 2
        found = traceparent_of_event(cfg, source, args.event_id)
        if isinstance(found, int):
            return found
        if not sampled(found):
            print(
                f"event {source}/{args.event_id}: trace {found[3:35]} was not sampled (Envoy traces"
                f" {cfg.tracing.sample_percent:g}% of requests; [tracing] sample_percent = 100 traces all)"
            )
            return 1
        trace_id = found[3:35]
    if len(trace_id) != 32 or any(c not in "0123456789abcdef" for c in trace_id):
        print(f"switchboard: {trace_id!r} is not a trace id (32 hex digits)", file=sys.stderr)
        return 2
    if not cfg.tracing.local:
        where = cfg.tracing.target() or "nowhere: tracing is off"
        print(f"trace {trace_id}: spans were exported to {where}; look it up there")
        return 0
    deadline = time.monotonic() + args.wait
    spans = read_trace(cfg.traces_db, trace_id)
    while not spans and time.monotonic() < deadline:
        time.sleep(0.5)
        spans = read_trace(cfg.traces_db, trace_id)
    if not spans:
        print(f"trace {trace_id}: no spans in {cfg.traces_db} (not exported yet, or older than the retention)")
        return 1
    print("\n".join(render_tree(spans)))
    return 0


def traceparent_of_event(cfg: PlatformConfig, source: str, event_id: str) -> str | int:
    """The stored event's traceparent, or an exit status after printing why there is none."""
    import grpc
    from webhooks.v1 import query_pb2, query_pb2_grpc

    with open_channel(cfg.query.host, cfg.query.port) as channel:
        try:
            reply = query_pb2_grpc.QueryStub(channel).GetEvent(
                query_pb2.GetEventRequest(source=source, event_id=event_id), timeout=10
            )
        except grpc.RpcError as exc:
            print(f"switchboard: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    traceparent = str(reply.event.traceparent)
    if len(traceparent) != 55:
        print(f"event {source}/{event_id} has no trace context", file=sys.stderr)
        return 1
    return traceparent
