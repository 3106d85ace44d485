"""Callback URL validation and the SSRF guard: check_url, check_ip, resolve_and_check, GuardedResolver (with a
real aiohttp client and server on loopback)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiodns
import aiodns.error
import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from switchboard.delivery.urls import (
    MAX_URL_LENGTH,
    ForbiddenDestination,
    GuardedResolver,
    check_ip,
    check_url,
    parse_networks,
    resolve_and_check,
)
from switchboard.errors import ConfigError, InvalidRequest, Unavailable
from tests.unit.switchboard.delivery.local_server import local_server

LOOPBACK = ("127.0.0.0/8", "::1/128")


# ----------------------------------------------------------------------------------------------- check_ip


@pytest.mark.parametrize(
    ("address", "words"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("10.0.0.1", "RFC 1918"),
        ("172.16.0.1", "RFC 1918"),
        ("172.31.255.255", "RFC 1918"),
        ("192.168.1.1", "RFC 1918"),
        ("169.254.169.254", "metadata"),
        ("169.254.0.1", "link-local"),
        ("100.64.0.1", "CGNAT"),
        ("100.127.255.255", "CGNAT"),
        ("0.0.0.0", "this network"),
        ("0.1.2.3", "this network"),
        ("192.0.0.8", "IETF"),
        ("192.0.2.1", "TEST-NET-1"),
        ("198.51.100.7", "TEST-NET-2"),
        ("203.0.113.9", "TEST-NET-3"),
        ("198.18.0.1", "benchmarking"),
        ("198.19.255.255", "benchmarking"),
        ("192.88.99.1", "6to4 relay"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("::", "unspecified"),
        ("::1", "loopback"),
        ("fd00::1", "unique local"),
        ("fc00::1", "unique local"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("fec0::1", "site-local"),
        ("ff02::1", "multicast"),
        ("64:ff9b::808:808", "NAT64"),
        ("64:ff9b:1::1", "NAT64"),
        ("2002:808:808::1", "6to4"),
        ("2001:db8::1", "documentation"),
        ("3fff::1", "documentation"),
        ("2001::1", "Teredo"),
        ("100::1", "discard"),
        ("5f00::1", "SRv6"),
        ("::7f00:1", "IPv4-compatible"),
        ("::ffff:127.0.0.1", "IPv4-mapped"),
        ("::ffff:10.0.0.1", "RFC 1918"),
        ("::ffff:169.254.169.254", "metadata"),
    ],
)
def test_check_ip_refuses_non_public_addresses(address: str, words: str) -> None:
    with pytest.raises(ForbiddenDestination) as info:
        check_ip(address, ())
    assert info.value.reason == "CALLBACK_URL_FORBIDDEN"
    assert info.value.metadata == {"field": "callback_url"}
    assert words in info.value.message
    assert isinstance(info.value, InvalidRequest)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700::1111", "2a00:1450::1"])
def test_check_ip_accepts_public_addresses(address: str) -> None:
    assert check_ip(address, ()) == ipaddress.ip_address(address)


def test_ipv4_mapped_address_is_judged_by_its_ipv4_address() -> None:
    assert check_ip("::ffff:8.8.8.8", ()) == ipaddress.ip_address("::ffff:8.8.8.8")
    with pytest.raises(ForbiddenDestination, match=r"IPv4-mapped 127\.0\.0\.1"):
        check_ip("::ffff:127.0.0.1", ())
    # The allowlist applies to the mapped address too.
    assert check_ip("::ffff:127.0.0.1", ["127.0.0.0/8"])


def test_allowlist_comes_first() -> None:
    assert check_ip("127.0.0.1", LOOPBACK) == ipaddress.ip_address("127.0.0.1")
    assert check_ip("::1", LOOPBACK) == ipaddress.ip_address("::1")
    assert check_ip("10.1.2.3", [ipaddress.ip_network("10.1.2.0/24")])
    with pytest.raises(ForbiddenDestination):
        check_ip("10.1.3.1", ["10.1.2.0/24"])  # outside the allowed /24
    with pytest.raises(ForbiddenDestination):
        check_ip("169.254.169.254", LOOPBACK)


@pytest.mark.parametrize("address", ["0x7f.0.0.1", "2130706433", "127.1", "0177.0.0.1", "127.000.000.001", "", "x"])
def test_check_ip_refuses_non_canonical_text(address: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        check_ip(address, ())
    assert info.value.reason == "CALLBACK_URL_INVALID"


def test_bad_allow_networks_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="not a network"):
        parse_networks(["10.0.0.1/8"])  # host bits set
    with pytest.raises(ConfigError):
        parse_networks("10.0.0.0/8")  # one string, not a list
    with pytest.raises(ConfigError):
        check_ip("8.8.8.8", ["nonsense"])


# ---------------------------------------------------------------------------------------------- check_url


def test_check_url_returns_the_canonical_form() -> None:
    parsed = check_url("HTTPS://Hooks.Example.COM:443/a/b?x=1&y=%41")
    assert parsed.url == "https://hooks.example.com/a/b?x=1&y=A"
    assert (parsed.scheme, parsed.host, parsed.port, parsed.ip) == ("https", "hooks.example.com", 443, None)
    assert check_url(parsed.url) == parsed  # idempotent

    idn = check_url("https://bücher.example/ä")
    assert idn.host == "xn--bcher-kva.example"
    assert idn.url == "https://xn--bcher-kva.example/%C3%A4"

    literal = check_url("https://[2606:4700::1111]:8443/hook")
    assert literal.ip == ipaddress.ip_address("2606:4700::1111")
    assert literal.port == 8443
    assert check_url("https://8.8.8.8/").ip == ipaddress.ip_address("8.8.8.8")


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://example.com/", "must use https"),
        ("ftp://example.com/", "scheme must be https"),
        ("example.com/hook", "absolute https URL"),
        ("https:///path", "no host"),
        ("https://user:pw@example.com/", "credentials"),
        ("https://user@example.com/", "credentials"),
        ("https://@example.com/", "credentials"),
        ("https://example.com:0/", "port 0"),
        ("https://example.com:65536/", "cannot be parsed"),
        ("https://example.com:x/", "cannot be parsed"),
        ("https://example.com/#frag", "fragment"),
        ("https://exa mple.com/", "whitespace"),
        ("https://example.com/\n", "whitespace"),
        ("https://evil.com\\@127.0.0.1/", "backslash"),
        ("https://a..b/", "not a valid host name"),
        ("https://-a.example/", "not a valid host name"),
        ("https://%6c%6fcalhost/", "not a valid host name"),
        ("https://1.2.3.4.5/", "numeric label"),
        ("https://example.123/", "numeric label"),
        ("https://8.8.8.8./", "must not end with a dot"),
        ("https://134744072/", "non-canonical IPv4 literal; write 8.8.8.8"),
        ("https://[fe80::1%25eth0]/", "zone id"),
        ("https://[1.2.3.4]/", "cannot be parsed"),
        ("", "is empty"),
        ("https://example.com/" + "a" * MAX_URL_LENGTH, "longer than 2048"),
    ],
)
def test_check_url_refuses_invalid_urls(url: str, words: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        check_url(url)
    assert not isinstance(info.value, ForbiddenDestination)
    assert info.value.reason == "CALLBACK_URL_INVALID"
    assert info.value.metadata == {"field": "callback_url"}
    assert words in info.value.message


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/",
        "https://127.0.0.1:8443/hook",
        "https://[::1]/",
        "https://[::ffff:127.0.0.1]/",
        "https://[::ffff:7f00:1]/",
        "https://169.254.169.254/latest/meta-data/",
        "https://10.0.0.1/",
        "https://100.64.1.1/",
        "https://0.0.0.0/",
        "https://[::]/",
        "https://[fd00::1]/",
        "https://[64:ff9b::a00:1]/",
        "https://[2002:a00:1::]/",
        # Legacy numeric forms inet_aton (hence connect) reads as 127.0.0.1 / 10.0.0.1:
        "https://0x7f.0.0.1/",
        "https://0x7f000001/",
        "https://2130706433/",
        "https://127.1/",
        "https://0177.0.0.1/",
        "https://127.0.1/",
        "https://012.0.0.1/",
        "https://127.0.0.1./",
    ],
)
def test_check_url_refuses_forbidden_ip_literals(url: str) -> None:
    with pytest.raises(ForbiddenDestination) as info:
        check_url(url)
    assert info.value.reason == "CALLBACK_URL_FORBIDDEN"
    assert info.value.metadata == {"field": "callback_url"}


def test_http_only_for_allowed_hosts_and_networks_open_ip_literals() -> None:
    parsed = check_url("http://localhost:8080/hook", allow_http_hosts=["LOCALHOST"])
    assert (parsed.scheme, parsed.host, parsed.port) == ("http", "localhost", 8080)
    with pytest.raises(InvalidRequest, match="must use https"):
        check_url("http://example.com/", allow_http_hosts=["localhost"])
    with pytest.raises(ForbiddenDestination):
        check_url("http://127.0.0.1:8080/", allow_http_hosts=["127.0.0.1"])  # http allowed, address not
    allowed = check_url("http://127.0.0.1:8080/", allow_http_hosts=["127.0.0.1"], allow_networks=LOOPBACK)
    assert allowed.ip == ipaddress.ip_address("127.0.0.1")
    assert check_url("https://[::1]:9/", allow_networks=LOOPBACK).ip == ipaddress.ip_address("::1")


def test_the_platforms_own_ports_are_refused_on_internal_addresses_only() -> None:
    """With loopback allowed (the shipped development configuration), a subscription to Envoy's admin
    (http://127.0.0.1:9901/quitquitquit) made the delivery worker stop the edge: an internal address on any
    port the platform listens on is refused. A public receiver keeps every port (an edge on 443 must not
    refuse every https callback); a name is judged where it resolves (the resolver tests below)."""
    reserved = frozenset({443, 9901, 50051})
    hosts = ["127.0.0.1", "localhost", "::1"]
    for url in ("http://127.0.0.1:9901/quitquitquit", "https://[::1]:9901/logging", "http://127.0.0.1:50051/"):
        with pytest.raises(ForbiddenDestination, match="one this platform listens on"):
            check_url(url, allow_http_hosts=hosts, allow_networks=LOOPBACK, reserved_ports=reserved)
    assert check_url("http://127.0.0.1:4400/", allow_http_hosts=hosts, allow_networks=LOOPBACK, reserved_ports=reserved)
    assert check_url("https://hooks.example.com/x", allow_networks=LOOPBACK, reserved_ports=reserved).port == 443
    assert check_url("https://93.184.216.34:9901/", allow_networks=LOOPBACK, reserved_ports=reserved).port == 9901


async def test_a_name_that_resolves_to_an_internal_address_on_a_platform_port_is_refused() -> None:
    class Fixed(AbstractResolver):
        def __init__(self, address: str) -> None:
            self.address = address

        async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[Any]:
            return [{"hostname": host, "host": self.address, "port": port, "family": family, "proto": 0, "flags": 0}]

        async def close(self) -> None:
            pass

    internal = GuardedResolver(LOOPBACK, inner=Fixed("127.0.0.1"), reserved_ports={9901})
    with pytest.raises(ForbiddenDestination, match="one this platform listens on"):
        await internal.resolve("localhost", 9901)
    assert await internal.resolve("localhost", 4400)
    public = GuardedResolver(LOOPBACK, inner=Fixed("93.184.216.34"), reserved_ports={9901})
    assert await public.resolve("hooks.example.com", 9901)
    with pytest.raises(ForbiddenDestination, match="one this platform listens on"):
        await resolve_and_check("127.0.0.1", 9901, LOOPBACK, reserved_ports={9901})


def test_the_shipped_configuration_reserves_its_admin_and_service_ports() -> None:
    from switchboard.config import load_config
    from switchboard.config.ports import platform_ports

    cfg = load_config(Path(__file__).resolve().parents[4] / "switchboard.toml")
    ports = platform_ports(cfg)
    assert {cfg.edge.admin_port, cfg.edge.https_port, cfg.ingest.port, cfg.query.port, cfg.control.port} <= ports
    assert {cfg.rabbitmq.port, cfg.cassandra.port} <= ports


def test_check_url_accepts_names_without_resolving_them() -> None:
    # Names are vetted by the resolver (resolve_and_check / GuardedResolver), not here.
    assert check_url("https://localhost/").host == "localhost"
    assert check_url("https://under_score.example/").host == "under_score.example"
    assert check_url("https://example.com./").host == "example.com."


# -------------------------------------------------------------------------------------- resolve_and_check


def fake_getaddrinfo(answers: dict[str, list[str]], calls: list[str]) -> Any:
    """c-ares' getaddrinfo (what aiodns.DNSResolver answers) from a table."""

    async def getaddrinfo(self: Any, host: str, port: int = 0, **kwargs: Any) -> Any:
        calls.append(host)
        if host not in answers:
            raise aiodns.error.DNSError(aiodns.error.ARES_ENOTFOUND, "Domain name not found")
        if answers[host] == ["AGAIN"]:
            raise aiodns.error.DNSError(aiodns.error.ARES_ETIMEOUT, "Timeout while contacting DNS servers")
        nodes = [
            SimpleNamespace(family=socket.AF_INET6 if ":" in ip else socket.AF_INET, addr=(ip.encode(), port))
            for ip in answers[host]
        ]
        return SimpleNamespace(nodes=nodes)

    return getaddrinfo


@pytest.fixture
async def dns(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    answers = {
        "public.example": ["93.184.216.34", "2606:2800:220:1::1", "93.184.216.34"],
        "mixed.example": ["93.184.216.34", "10.0.0.5"],
        "internal.example": ["10.1.2.3"],
        "metadata.example": ["169.254.169.254"],
        "flaky.example": ["AGAIN"],
    }
    monkeypatch.setattr(aiodns.DNSResolver, "getaddrinfo", fake_getaddrinfo(answers, calls))
    return calls


async def test_resolve_and_check_returns_every_vetted_address(dns: list[str]) -> None:
    assert await resolve_and_check("public.example", 443, ()) == ["93.184.216.34", "2606:2800:220:1::1"]
    assert dns == ["public.example"]


async def test_resolve_and_check_refuses_if_any_address_is_forbidden(dns: list[str]) -> None:
    with pytest.raises(ForbiddenDestination) as info:
        await resolve_and_check("mixed.example", 443, ())
    assert info.value.reason == "CALLBACK_URL_FORBIDDEN"
    assert "RFC 1918" in info.value.message
    assert "10.0.0.5" not in info.value.message  # internal addresses are not told to subscribers
    assert info.value.address == "10.0.0.5"
    with pytest.raises(ForbiddenDestination, match="metadata"):
        await resolve_and_check("metadata.example", 443, ())
    assert await resolve_and_check("internal.example", 443, ["10.0.0.0/8"]) == ["10.1.2.3"]


async def test_resolve_and_check_name_errors(dns: list[str]) -> None:
    with pytest.raises(InvalidRequest) as info:
        await resolve_and_check("nowhere.example", 443, ())
    assert info.value.reason == "CALLBACK_URL_INVALID"
    assert "does not resolve" in info.value.message
    with pytest.raises(Unavailable) as unavailable:
        await resolve_and_check("flaky.example", 443, ())
    assert unavailable.value.reason == "DNS_UNAVAILABLE"


async def test_resolve_and_check_vets_ip_literals_without_dns(dns: list[str]) -> None:
    assert await resolve_and_check("8.8.8.8", 443, ()) == ["8.8.8.8"]
    assert await resolve_and_check("[2606:4700::1111]", 443, ()) == ["2606:4700::1111"]
    with pytest.raises(ForbiddenDestination):
        await resolve_and_check("127.0.0.1", 443, ())
    assert dns == []


async def test_resolve_and_check_with_the_system_resolver() -> None:
    # localhost comes from /etc/hosts: no network needed.
    with pytest.raises(ForbiddenDestination, match="loopback"):
        await resolve_and_check("localhost", 443, ())
    addresses = await resolve_and_check("localhost", 443, LOOPBACK)
    assert "127.0.0.1" in addresses or "::1" in addresses


# ---------------------------------------------------------------------------------------- GuardedResolver


class StaticResolver(AbstractResolver):
    """Answers from a table; ``sequence`` entries change the answer on every lookup (DNS rebinding)."""

    def __init__(self, table: dict[str, list[list[str]]]) -> None:
        self.table = table
        self.lookups: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.lookups.append(host)
        answers = self.table[host]
        ips = answers.pop(0) if len(answers) > 1 else answers[0]
        return [
            ResolveResult(
                hostname=host,
                host=ip,
                port=port,
                family=socket.AF_INET6 if ":" in ip else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for ip in ips
        ]

    async def close(self) -> None:
        pass


async def test_guarded_resolver_vets_every_answer() -> None:
    inner = StaticResolver(
        {
            "good.example": [["93.184.216.34"]],
            "mixed.example": [["93.184.216.34", "192.168.0.10"]],
            "rebind.example": [["93.184.216.34"], ["127.0.0.1"]],
        }
    )
    resolver = GuardedResolver((), inner=inner)
    assert [r["host"] for r in await resolver.resolve("good.example", 443)] == ["93.184.216.34"]
    with pytest.raises(ForbiddenDestination, match="RFC 1918"):
        await resolver.resolve("mixed.example", 443)
    # First answer public, second (the rebinding) loopback: every lookup is vetted.
    assert [r["host"] for r in await resolver.resolve("rebind.example", 443)] == ["93.184.216.34"]
    with pytest.raises(ForbiddenDestination, match="loopback"):
        await resolver.resolve("rebind.example", 443)
    await resolver.close()


async def test_guarded_resolver_wraps_the_threaded_resolver_by_default() -> None:
    resolver = GuardedResolver()
    with pytest.raises(ForbiddenDestination, match="'localhost' resolves to a forbidden address"):
        await resolver.resolve("localhost", 443, socket.AF_UNSPEC)
    allowed = GuardedResolver(LOOPBACK)
    hosts = {r["host"] for r in await allowed.resolve("localhost", 443, socket.AF_UNSPEC)}
    assert hosts and hosts <= {"127.0.0.1", "::1"}
    await resolver.close()
    await allowed.close()


@pytest.fixture
async def server() -> AsyncIterator[int]:
    async def hook(request: web.Request) -> web.Response:
        return web.Response(text=f"ok {request.host}")

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("http://169.254.169.254/latest/meta-data/")

    async with local_server({"/hook": hook, "/redirect": redirect}) as port:
        yield port


def session_for(resolver: AbstractResolver) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(resolver=resolver, use_dns_cache=False)
    return aiohttp.ClientSession(connector=connector, trust_env=False, timeout=aiohttp.ClientTimeout(total=5))


async def test_aiohttp_connects_only_to_vetted_addresses(server: int) -> None:
    # A name pinned to 127.0.0.1: refused without the allowlist, delivered with it. The Host header keeps the
    # name (aiohttp connects to the vetted address, it does not rewrite the URL).
    url = f"http://hooks.example.test:{server}/hook"
    table = {"hooks.example.test": [["127.0.0.1"]]}
    async with session_for(GuardedResolver((), inner=StaticResolver(table))) as session:
        with pytest.raises(ForbiddenDestination, match="loopback"):
            await session.post(url, data=b"{}")
    allowed = session_for(GuardedResolver(LOOPBACK, inner=StaticResolver(table)))
    async with allowed as session, session.post(url, data=b"{}") as response:
        assert response.status == 200
        assert await response.text() == f"ok hooks.example.test:{server}"


async def test_aiohttp_with_the_real_resolver_refuses_localhost(server: int) -> None:
    async with session_for(GuardedResolver()) as session:
        with pytest.raises(ForbiddenDestination):
            await session.post(f"http://localhost:{server}/hook", data=b"{}")


async def test_ip_literals_bypass_the_resolver_so_check_url_must_run(server: int) -> None:
    # The fact check_url exists for: aiohttp never asks the resolver about an IP literal.
    inner = StaticResolver({})
    url = f"http://127.0.0.1:{server}/hook"
    async with session_for(GuardedResolver((), inner=inner)) as session, session.post(url, data=b"{}") as response:
        assert response.status == 200
    assert inner.lookups == []
    with pytest.raises(ForbiddenDestination):
        check_url(url, allow_http_hosts=["127.0.0.1"])


async def test_redirects_are_returned_not_followed(server: int) -> None:
    table = {"hooks.example.test": [["127.0.0.1"]]}
    async with (
        session_for(GuardedResolver(LOOPBACK, inner=StaticResolver(table))) as session,
        session.post(f"http://hooks.example.test:{server}/redirect", data=b"{}", allow_redirects=False) as response,
    ):
        assert response.status == 302
        assert response.headers["Location"] == "http://169.254.169.254/latest/meta-data/"


async def test_lookups_never_take_a_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both lookups go through c-ares on the loop. Through the system's getaddrinfo each took one of the
    default executor's threads until the system resolver gave up, cancelled or not: eight names under a slow
    zone held every other subscription's lookups for 9 s (found in review)."""

    def no_threads(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a lookup went to the system's getaddrinfo")

    monkeypatch.setattr(socket, "getaddrinfo", no_threads)
    with pytest.raises(ForbiddenDestination, match="loopback"):
        await resolve_and_check("localhost", 443, ())
    resolver = GuardedResolver(LOOPBACK)
    hosts = {r["host"] for r in await resolver.resolve("localhost", 443, socket.AF_UNSPEC)}
    assert hosts and hosts <= {"127.0.0.1", "::1"}
    await resolver.close()
