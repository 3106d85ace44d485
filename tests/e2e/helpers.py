"""Client helpers for the end-to-end tests: signed HTTPS posts through Envoy and Query reads."""

from __future__ import annotations

import asyncio
import json
import secrets
import ssl
import time
from pathlib import Path
from typing import Any

import aio_pika
import grpc
import httpx
from webhooks.v1 import dead_letters_pb2, dead_letters_pb2_grpc, query_pb2, query_pb2_grpc

from switchboard.config import PlatformConfig
from switchboard.signatures import sign
from switchboard.streams import events_topology


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


def get_entity(cfg: PlatformConfig, entity_id: str, source: str = "shop") -> Any:
    """Query.GetEntity's entity."""
    channel, stub = query_stub(cfg)
    try:
        return stub.GetEntity(query_pb2.GetEntityRequest(source=source, entity_id=entity_id), timeout=5).entity
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


def wait_for_dead_letters(
    cfg: PlatformConfig, kind: int, match: dict[str, str], count: int = 1, timeout: float = 30.0
) -> list[Any]:
    """Polls DeadLetters.ListDeadLetters until `count` records of `kind` carry every field in `match`.

    The control service's recorders drain the dead-letter queues into the store, so this is the
    one place a dead letter can be seen; the records are returned (any state).
    """
    channel = grpc.insecure_channel(f"127.0.0.1:{cfg.control.port}")
    stub = dead_letters_pb2_grpc.DeadLettersStub(channel)
    f = dead_letters_pb2.DeadLetterFilter(kind=kind, all_states=True)
    deadline = time.monotonic() + timeout
    try:
        while True:
            records = list_dead_letters(stub, f)
            mine = [d for d in records if all(getattr(d, k) == v for k, v in match.items())]
            if len(mine) >= count or time.monotonic() > deadline:
                return mine
            time.sleep(0.2)
    finally:
        channel.close()


def list_dead_letters(stub: Any, f: Any) -> list[Any]:
    """Every dead letter ``f`` takes, page after page (a page ends early once its messages reach ~3 MiB)."""
    out: list[Any] = []
    token = ""
    while True:
        request = dead_letters_pb2.ListDeadLettersRequest(filter=f, page_size=1000, page_token=token)
        reply = stub.ListDeadLetters(request, timeout=10)
        out += reply.dead_letters
        if not (token := reply.next_page_token):
            return out


def log_lines(log: Path, since: int = 0) -> list[dict[str, Any]]:
    """The JSON lines a service wrote to ``log`` from byte offset ``since``."""
    with open(log, "rb") as fh:
        fh.seek(since)
        text = fh.read().decode("utf-8", "replace")
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def paused_events(log: Path, prefix: str) -> set[str]:
    """Event ids whose ``pause`` operation (tests/e2e/ops.py) started in the processor that wrote ``log``."""
    return {
        str(x["event_id"])
        for x in log_lines(log)
        if x.get("msg") == "pause started" and str(x.get("event_id", "")).startswith(prefix)
    }


class EventTap:
    """A temporary queue bound next to the work queue on the events exchange: it receives a copy of every
    message ingest publishes from now on, so a test can tell what was queued (not only what got stored)."""

    def __init__(self, cfg: PlatformConfig) -> None:
        self.cfg = cfg
        self.topology = events_topology(cfg)
        self.queue_name = f"test-tap-{secrets.token_hex(4)}"

    def __enter__(self) -> EventTap:
        asyncio.run(self._declare())
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run(self._delete())

    async def _declare(self) -> None:
        conn = await aio_pika.connect(self.cfg.rabbitmq.amqp_url, timeout=5)
        try:
            channel = await conn.channel()
            queue = await channel.declare_queue(self.queue_name, durable=False, arguments={"x-expires": 600_000})
            await queue.bind(self.topology.exchange, self.topology.routing_key)
        finally:
            await conn.close()

    async def _delete(self) -> None:
        conn = await aio_pika.connect(self.cfg.rabbitmq.amqp_url, timeout=5)
        try:
            channel = await conn.channel()
            await channel.queue_delete(self.queue_name)
        finally:
            await conn.close()

    def message_ids_until(self, wanted: str, timeout: float = 30.0) -> list[str]:
        """Message ids seen on the tap until ``wanted`` arrives (AssertionError if it does not in time)."""

        async def read() -> list[str]:
            conn = await aio_pika.connect(self.cfg.rabbitmq.amqp_url, timeout=5)
            seen: list[str] = []
            try:
                channel = await conn.channel()
                queue = await channel.get_queue(self.queue_name)
                deadline = time.monotonic() + timeout
                while wanted not in seen:
                    assert time.monotonic() < deadline, f"{wanted} never reached the queue; saw {seen[:10]}"
                    message = await queue.get(no_ack=True, fail=False)
                    if message is None:
                        await asyncio.sleep(0.05)
                    else:
                        seen.append(message.message_id or "")
            finally:
                await conn.close()
            return seen

        return asyncio.run(read())
