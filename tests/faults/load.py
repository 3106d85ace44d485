"""A provider-like sender for the fault tests, and the audit that checks what the platform kept.

The sender posts signed Stripe events through Envoy at a steady rate. Like a provider, it retries a
delivery that got no 200 (a 5xx, a reset connection) with the same event id and a fresh signature, and it
sends some events a second time after their 200 (a provider's duplicate delivery).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
from webhooks.v1 import event_pb2, query_pb2, query_pb2_grpc

from switchboard.config import PlatformConfig
from tests.e2e.helpers import stripe_headers

OK = event_pb2.OPERATION_OUTCOME_OK
SOURCE = "shop"


def event_body(event_id: str, event_type: str) -> bytes:
    payload = {
        "id": event_id,
        "object": "event",
        "type": event_type,
        "created": int(time.time()),
        "data": {"object": {"id": "in_" + event_id, "object": "invoice", "amount_paid": 4200}},
    }
    return json.dumps(payload, separators=(",", ":")).encode()


@dataclass
class LoadResult:
    sent: list[str] = field(default_factory=list)  # every event id the sender tried
    accepted: set[str] = field(default_factory=set)  # got a 200 (at least once)
    errors: Counter[str] = field(default_factory=Counter)  # non-200 answers and transport errors, by kind
    retries: int = 0  # deliveries repeated after an error
    duplicates_sent: int = 0  # deliveries repeated after a 200
    started_us: int = 0
    finished_us: int = 0


async def send_load(
    cfg: PlatformConfig,
    secret: str,
    *,
    prefix: str,
    count: int,
    rate: float,
    event_type: str = "invoice.paid",
    duplicate_every: int = 25,
    concurrency: int = 24,
    give_up_after: float = 150.0,
) -> LoadResult:
    result = LoadResult(started_us=time.time_ns() // 1000)
    tls = ssl.create_default_context(cafile=cfg.tls_dir / "ca.pem")
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(
        base_url=f"https://127.0.0.1:{cfg.edge.https_port}", verify=tls, timeout=10, limits=limits
    ) as client:

        async def deliver(event_id: str, body: bytes) -> bool:
            deadline = time.monotonic() + give_up_after
            first = True
            while time.monotonic() < deadline:
                if not first:
                    result.retries += 1
                    await asyncio.sleep(0.5)
                first = False
                try:
                    async with gate:
                        resp = await client.post(
                            f"/webhook/{SOURCE}", content=body, headers=stripe_headers(secret, body)
                        )
                except httpx.TransportError as exc:
                    result.errors[type(exc).__name__] += 1
                    continue
                if resp.status_code == 200:
                    return True
                result.errors[f"http {resp.status_code}"] += 1
                if resp.status_code < 500:
                    return False  # the sender's fault: a provider would not retry either
            return False

        async def one(i: int) -> None:
            event_id = f"{prefix}_{i:05d}"
            body = event_body(event_id, event_type)
            result.sent.append(event_id)
            if await deliver(event_id, body):
                result.accepted.add(event_id)
                if i % duplicate_every == 0:
                    result.duplicates_sent += 1
                    await deliver(event_id, body)

        t0 = time.monotonic()
        tasks = []
        for i in range(count):
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    result.finished_us = time.time_ns() // 1000
    return result


@dataclass
class Audit:
    stored: dict[str, Any]  # event id -> stored Event message
    listed: Counter[str]  # event id -> rows in ListEvents over the run's time range
    missing: list[str]  # accepted but not stored (in a final status) before the deadline

    def applied(self, event_id: str) -> Counter[str]:
        return Counter(r.operation for r in self.stored[event_id].results if r.outcome == OK)

    @property
    def duplicates_seen(self) -> int:
        return sum(e.duplicates for e in self.stored.values())


def _get(stub: Any, event_id: str) -> Any | None:
    try:
        reply = stub.GetEvent(query_pb2.GetEventRequest(source=SOURCE, event_id=event_id), timeout=10)
        return reply.event
    except grpc.RpcError as exc:
        if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return None
        raise


def audit(cfg: PlatformConfig, load: LoadResult, *, prefix: str, timeout: float = 240.0) -> Audit:
    """Waits until every sent event that is stored at all is in a final state (and every accepted one is
    stored), then reads them back: each one with GetEvent, and the source's index with ListEvents."""
    final = {event_pb2.EVENT_STATUS_PROCESSED, event_pb2.EVENT_STATUS_FAILED, event_pb2.EVENT_STATUS_STALE}
    channel = grpc.insecure_channel(f"127.0.0.1:{cfg.query.port}")
    stub = query_pb2_grpc.QueryStub(channel)
    stored: dict[str, Any] = {}
    pending = list(load.sent)
    deadline = time.monotonic() + timeout
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            while pending:
                found = list(pool.map(lambda eid: (eid, _get(stub, eid)), pending))
                still = []
                for eid, event in found:
                    if event is not None and event.status in final:
                        stored[eid] = event
                    elif event is not None or eid in load.accepted:
                        still.append(eid)  # stored but not final yet, or accepted and not stored yet
                pending = still
                if not pending or time.monotonic() > deadline:
                    break
                time.sleep(1.0)
            # Duplicates are recorded after the first receipt was applied: read everything again until every
            # duplicate the sender sent is counted and the count stops changing (or the deadline passes).
            previous = -1
            while time.monotonic() < deadline:
                for eid, event in pool.map(lambda eid: (eid, _get(stub, eid)), list(stored)):
                    if event is not None:
                        stored[eid] = event
                seen = sum(e.duplicates for e in stored.values())
                if seen >= load.duplicates_sent and seen == previous:
                    break
                previous = seen
                time.sleep(1.0)
        listed: Counter[str] = Counter()
        request = query_pb2.ListEventsRequest(source=SOURCE, page_size=1000)
        request.start_time.FromMicroseconds(load.started_us - 5_000_000)
        request.end_time.FromMicroseconds(time.time_ns() // 1000 + 5_000_000)
        while True:
            page = stub.ListEvents(request, timeout=30)
            listed.update(e.event_id for e in page.events if e.event_id.startswith(prefix + "_"))
            if not page.next_page_token:
                break
            request.page_token = page.next_page_token
        # An event that never got a 200 may still have been queued (ingest died after the confirm): it
        # shows up in the index, and must then be stored and applied like any other.
        late = [eid for eid in listed if eid not in stored]
        while late and time.monotonic() < deadline:
            for eid in late:
                event = _get(stub, eid)
                if event is not None and event.status in final:
                    stored[eid] = event
            late = [eid for eid in late if eid not in stored]
            if late:
                time.sleep(1.0)
    finally:
        channel.close()
    return Audit(stored, listed, [eid for eid in pending if eid in load.accepted] + late)
