"""Client helpers for the end-to-end tests: signed HTTPS posts through Envoy and Query reads."""

from __future__ import annotations

import json
import ssl
import time
from typing import Any

import grpc
import httpx
from webhooks.v1 import query_pb2, query_pb2_grpc

from switchboard.config import PlatformConfig
from switchboard.signatures import sign


def edge_client(cfg: PlatformConfig) -> httpx.Client:
    tls = ssl.create_default_context(cafile=cfg.tls_dir / "ca.pem")
    return httpx.Client(base_url=f"https://127.0.0.1:{cfg.edge.https_port}", verify=tls, timeout=15)


def stripe_event(event_id: str, event_type: str = "invoice.paid", pad: int = 0) -> bytes:
    payload = {
        "id": event_id,
        "object": "event",
        "type": event_type,
        "created": int(time.time()),
        "data": {"object": {"id": "in_" + event_id[4:], "object": "invoice", "amount_due": 4200, "memo": "x" * pad}},
    }
    return json.dumps(payload, separators=(",", ":")).encode()


def stripe_headers(secret: str, body: bytes, *, now: float | None = None) -> dict[str, str]:
    return {"content-type": "application/json", **sign("stripe", secret, body, now=now or time.time())}


def query_stub(cfg: PlatformConfig) -> tuple[grpc.Channel, Any]:
    channel = grpc.insecure_channel(f"127.0.0.1:{cfg.query.port}")
    return channel, query_pb2_grpc.QueryStub(channel)


def wait_for_event(cfg: PlatformConfig, source: str, event_id: str, timeout: float = 30.0) -> Any:
    """Polls Query.GetEvent until the event is stored; returns the Event message."""
    channel, stub = query_stub(cfg)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                return stub.GetEvent(query_pb2.GetEventRequest(source=source, event_id=event_id), timeout=5).event
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND or time.monotonic() > deadline:
                    raise
            time.sleep(0.1)
    finally:
        channel.close()


def get_event_code(cfg: PlatformConfig, source: str, event_id: str) -> grpc.StatusCode:
    channel, stub = query_stub(cfg)
    try:
        stub.GetEvent(query_pb2.GetEventRequest(source=source, event_id=event_id), timeout=5)
        return grpc.StatusCode.OK
    except grpc.RpcError as exc:
        return exc.code()
    finally:
        channel.close()
