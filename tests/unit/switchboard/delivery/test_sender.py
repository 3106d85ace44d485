"""The sender checks each callback URL's text once per process and never remembers a refusal."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from pathlib import Path

import pytest

from switchboard.delivery.sender import KEPT_HEADER_CHARS, Response, Sender
from switchboard.delivery.signing import delivery_headers, new_secret
from switchboard.delivery.urls import ForbiddenDestination
from switchboard.errors import ConfigError
from tests.unit.switchboard.delivery.local_server import local_server


def test_a_url_is_checked_once_and_a_refused_one_every_time() -> None:
    sender = Sender(allow_networks=("127.0.0.0/8",))
    assert sender.allow_networks == (ipaddress.ip_network("127.0.0.0/8"),)  # parsed once, not per request
    first = sender._checked("https://127.0.0.1:8443/hooks/a")
    again = sender._checked("https://127.0.0.1:8443/hooks/a")
    assert again is first and first.url == "https://127.0.0.1:8443/hooks/a"
    assert sender._checked.cache_info().hits == 1
    for _ in range(2):
        with pytest.raises(ForbiddenDestination):
            sender._checked("https://10.0.0.7/hook")
    assert sender._checked.cache_info().currsize == 1


async def test_an_answer_whose_body_comes_in_pieces_is_recorded_whole_and_a_stalled_one_stands() -> None:
    """One read returned what was buffered: a body sent in small pieces was recorded as its first piece
    (found in review). The rest is read for a moment; a body that stalls leaves the answer standing, not a
    timeout."""
    from aiohttp import web

    async def pieces(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=200)
        await resp.prepare(request)
        for piece in (b"first,", b"second,", b"third"):
            await resp.write(piece)
            await asyncio.sleep(0.05)
        await resp.write_eof()
        return resp

    released = asyncio.Event()

    async def stalled(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=202)
        await resp.prepare(request)
        await resp.write(b"accepted,")
        await released.wait()
        return resp

    async def silent(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=200)  # the status, then no byte of the body
        await resp.prepare(request)
        await released.wait()
        return resp

    sender = Sender(allow_http_hosts=("127.0.0.1",), allow_networks=("127.0.0.0/8",))
    await sender.start()
    async with local_server({"/pieces": pieces, "/stalled": stalled, "/silent": silent}) as port:
        try:
            whole = await sender.post(f"http://127.0.0.1:{port}/pieces", b"{}", {}, within=5.0)
            assert (whole.status, whole.body) == (200, b"first,second,third")
            stood = await sender.post(f"http://127.0.0.1:{port}/stalled", b"{}", {}, within=5.0)
            assert (stood.status, stood.error_class, stood.body) == (202, "", b"accepted,")
            assert stood.duration_us < 4_000_000  # the answer, not the deadline
            # The first read waited for a first byte until the deadline: a 200 was recorded as a timeout.
            quiet = await sender.post(f"http://127.0.0.1:{port}/silent", b"{}", {}, within=5.0)
            assert (quiet.status, quiet.error_class, quiet.body) == (200, "", b"")
            assert quiet.duration_us < 4_000_000
        finally:
            released.set()  # before the server stops: it waits for its handlers
            await sender.close()


async def answered_by(head: bytes) -> Response:
    """What the sender makes of a receiver that reads a POST of ``{}`` and answers ``head``, then ``ok``."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        await reader.readexactly(2)  # the body, b"{}"
        writer.write(head + b"\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sender = Sender(allow_http_hosts=("127.0.0.1",), allow_networks=("127.0.0.0/8",))
    await sender.start()
    try:
        return await sender.post(f"http://127.0.0.1:{port}/hook", b"{}", {}, within=5.0)
    finally:
        await sender.close()
        server.close()
        await server.wait_closed()


async def test_an_answer_with_bytes_that_are_not_utf8_in_a_header_is_kept_as_valid_text() -> None:
    """Found in review: aiohttp keeps such bytes as lone surrogates, which the store's driver cannot encode,
    so the attempt of a receiver answering ``Server: caf\\xe9`` could never be recorded (its message crashed
    the worker until it was dead-lettered)."""

    head = b"HTTP/1.1 200 OK\r\nServer: caf\xe9\xff\r\nX-Request-Id: r\xc3\x28\r\nContent-Length: 2\r\n"
    got = await answered_by(head)
    assert (got.status, got.body) == (200, b"ok")
    assert got.headers["server"] == "caf??" and got.headers["x-request-id"] == "r?("
    for value in got.headers.values():
        value.encode("utf-8")  # what the store's driver does with it


def test_a_ca_file_that_cannot_be_read_is_a_refusal_to_start_naming_the_key(tmp_path: Path) -> None:
    """The shipped config names var/tls/ca.pem, which only the stack's own TLS bootstrap writes: without it the
    control and delivery services died with a FileNotFoundError traceback instead of a refusal."""
    with pytest.raises(ConfigError, match=r"^delivery\.ca_file: .*missing\.pem"):
        Sender(ca_file=tmp_path / "missing.pem")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"^delivery\.ca_file: "):
        Sender(ca_file=junk)


async def test_a_2xx_whose_body_is_cut_short_stands_and_the_configured_user_agent_is_sent() -> None:
    """A receiver that answered 200 with ``Content-Length: 100`` and closed after 5 bytes was recorded as a
    connection error: sent again, and counted against its circuit. And ``delivery.user_agent`` was replaced by
    the signing headers' built-in one on every delivery (found in review)."""
    seen: list[str] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        lines = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in head.split("\r\n")[1:] if x)}
        seen.append(lines.get("user-agent", ""))
        await reader.readexactly(int(lines["content-length"]))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sender = Sender(allow_http_hosts=("127.0.0.1",), allow_networks=("127.0.0.0/8",), user_agent="Acme-Hooks/2")
    await sender.start()
    try:
        headers = delivery_headers("msg_1", b"{}", [new_secret()], time.time())
        response = await sender.post(f"http://127.0.0.1:{port}/hook", b"{}", headers, within=5.0)
    finally:
        await sender.close()
        server.close()
    assert (response.status, response.error_class, response.body) == (200, "", b"short")
    assert seen == ["Acme-Hooks/2"]


async def test_a_kept_response_header_is_cut_to_its_limit() -> None:
    """A receiver's 8 KB headers were kept whole: with the 4 KB excerpt, in the attempt's two rows, a record
    larger than a Cassandra 3+ batch takes (50 KB), refused; the delivery, answered 200, was sent again until
    it was dead-lettered (found in review)."""
    head = b"HTTP/1.1 200 OK\r\nServer: " + b"x" * 8000 + b"\r\nX-Request-Id: r1\r\nContent-Length: 2\r\n"
    got = await answered_by(head)
    assert (
        got.status == 200 and got.headers["server"] == "x" * KEPT_HEADER_CHARS and got.headers["x-request-id"] == "r1"
    )
