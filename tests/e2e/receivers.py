"""A real HTTPS webhook receiver for the delivery tests: an aiohttp server on its own thread and loop, with
the local stack's server certificate (so the delivery workers verify it against the local CA), recording
every request and answering each path from a script of responses."""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from switchboard_devstack.ports import free_port
from switchboard_devstack.tls import ensure_local_tls

ANY_PATH = ""  # counts of requests on every path (a request's path starts with "/")


@dataclass(frozen=True)
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    body: bytes = b"ok"


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


class Receiver:
    """``script[path]`` lists the answers to the first requests on that path; later ones get the last."""

    def __init__(self, tls_dir: Path, script: dict[str, list[Answer]] | None = None) -> None:
        self.tls_dir = tls_dir
        self.script = script or {}
        self.port = free_port()
        self.received: list[Received] = []
        self._unanswered: Counter[str] = Counter()  # per path: requests received, their answer not yet sent
        self._most_unanswered: Counter[str] = Counter()  # per path: the most ever unanswered at once
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> Receiver:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _start(self) -> None:
        _, cert, key = ensure_local_tls(self.tls_dir)
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(str(cert), str(key))
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=tls).start()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        with self._lock:
            n = sum(1 for r in self.received if r.path == request.path)
            self.received.append(Received(request.path, dict(request.headers), body, time.time()))
            for key in (request.path, ANY_PATH):
                self._unanswered[key] += 1
                self._most_unanswered[key] = max(self._most_unanswered[key], self._unanswered[key])
        try:
            answers = self.script.get(request.path) or [Answer()]
            answer = answers[min(n, len(answers) - 1)]
            if answer.delay:
                await asyncio.sleep(answer.delay)
            return web.Response(status=answer.status, headers=answer.headers, body=answer.body)
        finally:
            with self._lock:
                self._unanswered[request.path] -= 1
                self._unanswered[ANY_PATH] -= 1

    def unanswered(self, path: str) -> int:
        """Requests on ``path`` received whose answer has not been handed to the server yet (a delayed one)."""
        with self._lock:
            return self._unanswered[path]

    def most_unanswered(self, path: str = ANY_PATH) -> int:
        """The most requests on ``path`` (by default: on any path) that were ever unanswered at the same time."""
        with self._lock:
            return self._most_unanswered[path]

    def on(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]

    def wait(self, path: str, count: int, timeout: float = 60.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(got := self.on(path)) < count:
            assert time.monotonic() < deadline, f"{path}: {len(got)} of {count} requests after {timeout:g} s"
            time.sleep(0.05)
        return got

    def ids(self, path: str) -> Counter[str]:
        """How often each ``webhook-id`` arrived on ``path``."""
        return Counter(r.headers.get("webhook-id", "") for r in self.on(path))


def lines(received: list[Received]) -> Iterator[str]:
    for r in received:
        yield f"{r.path} {r.headers.get('webhook-id')} {len(r.body)} bytes"
