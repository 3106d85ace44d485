"""Sending a delivery: one pooled aiohttp session behind the SSRF guard.

Contract of ``Sender.post``: it never raises for anything the endpoint or the network does; it returns a
``Response`` with the HTTP status, or with no status and an error class (``policy.ERROR_*``) that
``policy.classify`` understands. Every connection goes through ``GuardedResolver`` (each answer vetted, the
connect uses exactly the vetted addresses: no DNS rebinding between check and connect), IP literals are vetted
by ``check_url`` first (once per URL and process; aiohttp skips the resolver for them), and redirects are never
followed. Timeouts: ``connect_timeout`` for the connection, the caller's total for the whole request, the body
read included.
aiohttp measured here at ~15k requests per CPU-second with 64 in flight (``shared/DELIVERY.md``).
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from switchboard.delivery import policy
from switchboard.delivery.signing import USER_AGENT
from switchboard.delivery.urls import ForbiddenDestination, GuardedResolver, ParsedUrl, check_url, parse_networks
from switchboard.errors import ConfigError, InvalidRequest

BODY_EXCERPT_BYTES = 4096
# How long the rest of an excerpt that arrives in pieces is waited for, once the status is in (never past the
# request's own deadline: a slow body does not turn an answer into a timeout).
EXCERPT_WAIT_SECONDS = 0.5
# Response headers kept with an attempt (the rest can be large and says little), each value cut to
# KEPT_HEADER_CHARS: a receiver's 8 KB headers made an attempt's record larger than a Cassandra 3+ batch takes
# (50 KB), and the delivery, answered 200, was sent again until it was dead-lettered.
KEPT_HEADERS = ("content-type", "content-length", "retry-after", "location", "server", "date", "x-request-id")
KEPT_HEADER_CHARS = 512


@dataclass(frozen=True, slots=True)
class Response:
    status: int | None
    duration_us: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    error_class: str = ""
    error: str = ""

    @property
    def retry_after(self) -> str | None:
        return self.headers.get("retry-after")


class Sender:
    def __init__(
        self,
        *,
        allow_http_hosts: tuple[str, ...] = (),
        allow_networks: tuple[str, ...] = (),
        reserved_ports: frozenset[int] = frozenset(),
        ca_file: Path | None = None,
        user_agent: str = USER_AGENT,
        max_connections: int = 512,
        max_per_host: int = 64,
        connect_timeout: float = 5.0,
    ) -> None:
        self.allow_http_hosts = allow_http_hosts
        self.allow_networks = parse_networks(allow_networks)  # once: check_url runs before every request
        self.reserved_ports = reserved_ports
        # A subscription's URL is checked once per process, not before every send (a few percent of the
        # worker's CPU). Only the text is checked here; where its name resolves is checked at each connect.
        self._checked = functools.lru_cache(maxsize=4096)(self._check)
        self.user_agent = user_agent
        self.connect_timeout = connect_timeout
        self._tls = ssl.create_default_context()
        if ca_file is not None:
            try:
                self._tls.load_verify_locations(cafile=str(ca_file))
            except (OSError, ssl.SSLError) as exc:  # a refusal to start, not a traceback (exit 1)
                raise ConfigError(
                    f"delivery.ca_file: {ca_file}: not a readable file of CA certificates ({exc})"
                ) from None
        self._max_connections = max_connections
        self._max_per_host = max_per_host
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(self.allow_networks, reserved_ports=self.reserved_ports),
            limit=self._max_connections,
            limit_per_host=self._max_per_host,
            ssl=self._tls,
            ttl_dns_cache=10,
        )
        self._session = aiohttp.ClientSession(
            connector=connector, trust_env=False, headers={"user-agent": self.user_agent}
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def post(self, url: str, body: bytes, headers: dict[str, str], within: float) -> Response:
        return await self._request("POST", url, body, headers, within)

    async def head(self, url: str, within: float = 5.0) -> Response:
        """A reachability probe (reported to whoever created the subscription, never fatal)."""
        return await self._request("HEAD", url, b"", {}, within)

    async def probe(self, url: str) -> str:
        """What a HEAD to ``url`` got, in words (for the client that creates a subscription)."""
        r = await self.head(url)
        took = f"{r.duration_us / 1000:.0f} ms"
        return (
            f"HEAD answered {r.status} in {took}"
            if r.status is not None
            else f"unreachable ({r.error_class}: {r.error})"
        )

    def _check(self, url: str) -> ParsedUrl:
        return check_url(
            url,
            allow_http_hosts=self.allow_http_hosts,
            allow_networks=self.allow_networks,
            reserved_ports=self.reserved_ports,
        )

    async def _request(self, method: str, url: str, body: bytes, headers: dict[str, str], within: float) -> Response:
        assert self._session is not None, "start() first"
        started = time.monotonic()

        def done(
            *,
            status: int | None,
            headers: dict[str, str] | None = None,
            body: bytes = b"",
            error_class: str = "",
            error: str = "",
        ) -> Response:
            return Response(
                status,
                int((time.monotonic() - started) * 1_000_000),
                {k: utf8(v) for k, v in (headers or {}).items()},
                body,
                error_class,
                utf8(error),
            )

        try:
            target = self._checked(url)
        except ForbiddenDestination as exc:
            return done(status=None, error_class=policy.ERROR_FORBIDDEN_DESTINATION, error=exc.message)
        except InvalidRequest as exc:
            return done(status=None, error_class=policy.ERROR_INVALID_URL, error=exc.message)
        limits = aiohttp.ClientTimeout(total=within, connect=min(self.connect_timeout, within))
        try:
            async with self._session.request(
                method, target.url, data=body or None, headers=headers, allow_redirects=False, timeout=limits
            ) as resp:
                excerpt = await _excerpt(resp, min(EXCERPT_WAIT_SECONDS, started + within - time.monotonic() - 0.05))
                kept = {k: resp.headers[k][:KEPT_HEADER_CHARS] for k in KEPT_HEADERS if k in resp.headers}
                return done(status=resp.status, headers=kept, body=excerpt)
        except ForbiddenDestination as exc:
            return done(status=None, error_class=policy.ERROR_FORBIDDEN_DESTINATION, error=exc.message)
        except (TimeoutError, aiohttp.ServerTimeoutError):
            return done(status=None, error_class=policy.ERROR_TIMEOUT, error=f"no complete answer within {within:g} s")
        except aiohttp.ClientConnectorCertificateError as exc:
            return done(status=None, error_class=policy.ERROR_TLS, error=f"certificate: {exc.certificate_error}"[:500])
        except aiohttp.ClientSSLError as exc:
            return done(status=None, error_class=policy.ERROR_TLS, error=str(exc)[:500])
        except aiohttp.ClientConnectorDNSError as exc:
            return done(status=None, error_class=policy.ERROR_DNS, error=str(exc)[:500])
        except (aiohttp.ClientError, OSError) as exc:
            return done(status=None, error_class=policy.ERROR_CONNECTION, error=f"{type(exc).__name__}: {exc}"[:500])


def utf8(text: str) -> str:
    """``text`` as valid UTF-8: aiohttp keeps a header's non-UTF-8 bytes as lone surrogates, which the store's
    driver cannot encode (a receiver answering ``Server: caf\\xe9`` made its delivery impossible to record: sent
    again and again, then dead-lettered as CRASHED). Each such character becomes ``?``."""
    return text.encode("utf-8", "replace").decode("utf-8")


async def _excerpt(resp: aiohttp.ClientResponse, wait: float) -> bytes:
    """Up to ``BODY_EXCERPT_BYTES`` of the body: what arrived with the status and what follows within ``wait``
    seconds. One read returned what was buffered, so a body sent in small pieces was recorded
    as its first byte; and the first read waited for the first byte under the request's whole deadline, so a
    200 whose body was slow to start was recorded as a timeout (and sent again). A body cut short (the
    connection closed before its ``Content-Length``, a broken chunk) is the same: the status arrived, so the
    answer stands; it was recorded as a connection error, sent again and counted against the endpoint's
    circuit, although the endpoint had taken the event."""
    out = b""
    try:
        out = resp.content.read_nowait(BODY_EXCERPT_BYTES)  # what has arrived already
        if wait <= 0:
            return out
        async with asyncio.timeout(wait):
            while len(out) < BODY_EXCERPT_BYTES and (piece := await resp.content.read(BODY_EXCERPT_BYTES - len(out))):
                out += piece
    except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, OSError):
        pass  # the answer stands; the excerpt is what came
    return out
