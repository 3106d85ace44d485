"""Callback URL validation and the SSRF guard for outbound deliveries.

Contract
--------
A subscription's callback URL passes :func:`check_url` when it is created and again before every attempt; the
HTTP client connects only through :class:`GuardedResolver`, which vets every DNS answer, so no name can lead
a delivery to an address that :func:`check_ip` refuses, whatever the DNS says between the check and the
connect (DNS rebinding): aiohttp connects to exactly the addresses the resolver returned.

* :func:`check_url` — ``https`` only (``http`` only for hosts named in ``allow_http_hosts``), no userinfo,
  no fragment, a host, an explicit port in 1..65535, at most :data:`MAX_URL_LENGTH` characters, no
  whitespace, control characters or backslashes. The host is a DNS name (LDH labels plus ``_``, IDNA
  encoded), a canonical dotted-quad IPv4 literal or a bracketed IPv6 literal without a zone id. IP literals
  are vetted at once with :func:`check_ip`, because aiohttp never asks the resolver about them. Legacy
  numeric IPv4 forms that ``inet_aton`` would accept (``0x7f.0.0.1``, ``2130706433``, ``127.1``,
  ``0177.0.0.1``) and any host whose last label is numeric are refused: a forbidden address as
  ``CALLBACK_URL_FORBIDDEN``, any other as ``CALLBACK_URL_INVALID``. Returns a :class:`ParsedUrl` whose
  ``url`` is the canonical form; send to that string, not the original.
* :func:`check_ip` — the allowlist (``allow_networks``) first; otherwise refused: anything Python does not
  call ``is_global``, multicast, reserved, unspecified, loopback, link-local (so 169.254.169.254, the cloud
  metadata address), private (RFC 1918, fc00::/7), site-local, and every range in :data:`BLOCKED_NETWORKS`
  (CGNAT 100.64/10, 192.0.0/24, 6to4 relay 192.88.99/24, benchmarking 198.18/15, documentation ranges,
  240/4, NAT64 64:ff9b::/96 and 64:ff9b:1::/48, discard 100::/64, 2001::/23, 6to4 2002::/16, 3fff::/20,
  5f00::/16, fec0::/10, ff00::/8). An IPv4-mapped address (``::ffff:a.b.c.d``) is judged as the IPv4
  address it carries (allowlist included). Only canonical text forms parse (``ipaddress``): ``127.1`` or
  ``0x7f.0.0.1`` are refused as ``CALLBACK_URL_INVALID``.
* :func:`resolve_and_check` (I/O: DNS) — at subscription time: the host must resolve and EVERY address must
  pass :func:`check_ip`; returns the vetted addresses. A name that does not exist is ``CALLBACK_URL_INVALID``;
  a temporary DNS failure or timeout is :class:`~switchboard.errors.Unavailable` (``DNS_UNAVAILABLE``).
* DNS goes through c-ares (``aiodns``), on the event loop: a lookup that is cancelled or times out is
  cancelled, no thread is held. On the loop's ``getaddrinfo`` each lookup took one of the default executor's
  few threads until the system resolver gave up, whatever timeout its caller had, so a handful of names under
  a slow zone held every lookup of every other subscription behind them.
* :class:`GuardedResolver` — an ``aiohttp`` resolver wrapping ``AsyncResolver`` (c-ares); any answer that fails
  :func:`check_ip` makes the whole lookup fail with :class:`ForbiddenDestination`, which aiohttp lets
  through unchanged (it wraps only ``OSError``). aiohttp's DNS cache only ever holds vetted answers (the
  allowlist is fixed per resolver). Use it as::

      connector = aiohttp.TCPConnector(resolver=GuardedResolver(allow_networks))
      session = aiohttp.ClientSession(connector=connector, trust_env=False)   # trust_env: no *_PROXY
      parsed = check_url(url, allow_http_hosts=..., allow_networks=allow_networks)
      await session.post(parsed.url, data=body, headers=headers, allow_redirects=False)

Errors: :class:`~switchboard.errors.InvalidRequest` with ``reason="CALLBACK_URL_INVALID"`` and
:class:`ForbiddenDestination` (an ``InvalidRequest``, ``reason="CALLBACK_URL_FORBIDDEN"``; ``address`` and
``label`` name the address and its range for logs), both with ``metadata={"field": "callback_url"}``. A
message about a NAME names the range but not the address it resolved to, so a subscriber cannot map
internal DNS names through the API; an unusable ``allow_networks`` entry is a
:class:`~switchboard.errors.ConfigError`. Nothing else escapes :func:`check_url` or :func:`check_ip`,
whatever the input (property-tested).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Final, TypeAlias

import aiodns
import aiodns.error
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import AsyncResolver
from yarl import URL

from switchboard.errors import ConfigError, InvalidRequest, Unavailable

__all__ = [
    "BLOCKED_NETWORKS",
    "FIELD",
    "MAX_URL_LENGTH",
    "ForbiddenDestination",
    "GuardedResolver",
    "IPAddress",
    "IPNetwork",
    "NetworkSpec",
    "ParsedUrl",
    "check_ip",
    "check_url",
    "parse_networks",
    "resolve_and_check",
]

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
NetworkSpec: TypeAlias = str | IPNetwork

FIELD: Final = "callback_url"
MAX_URL_LENGTH: Final = 2048
INVALID: Final = "CALLBACK_URL_INVALID"
FORBIDDEN: Final = "CALLBACK_URL_FORBIDDEN"
DNS_UNAVAILABLE: Final = "DNS_UNAVAILABLE"
# c-ares: each query to a nameserver waits this long, and is tried this many times.
DNS_TRY_SECONDS: Final = 2.0
DNS_TRIES: Final = 2
# Answers that say the name does not exist (anything else, a timeout or a refusal, is "not now").
_NO_SUCH_NAME: Final = frozenset(
    {aiodns.error.ARES_ENOTFOUND, aiodns.error.ARES_ENODATA, aiodns.error.ARES_EBADNAME, aiodns.error.ARES_ENONAME}
)

# Ranges refused on top of the ``is_*`` properties (which differ between Python patch releases), each with
# the words an error message uses. Order matters only for the message: the first match names the range.
BLOCKED_NETWORKS: Final[tuple[tuple[IPNetwork, str], ...]] = tuple(
    (ipaddress.ip_network(net), label)
    for net, label in (
        ("0.0.0.0/8", "'this network' (0.0.0.0/8)"),
        ("10.0.0.0/8", "private (RFC 1918)"),
        ("100.64.0.0/10", "shared address space (CGNAT, 100.64.0.0/10)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local (incl. the cloud metadata address 169.254.169.254)"),
        ("172.16.0.0/12", "private (RFC 1918)"),
        ("192.0.0.0/24", "IETF protocol assignments (192.0.0.0/24)"),
        ("192.0.2.0/24", "documentation (TEST-NET-1)"),
        ("192.88.99.0/24", "6to4 relay anycast (192.88.99.0/24)"),
        ("192.168.0.0/16", "private (RFC 1918)"),
        ("198.18.0.0/15", "benchmarking (198.18.0.0/15)"),
        ("198.51.100.0/24", "documentation (TEST-NET-2)"),
        ("203.0.113.0/24", "documentation (TEST-NET-3)"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved (240.0.0.0/4, incl. broadcast)"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("64:ff9b::/96", "NAT64 (64:ff9b::/96)"),
        ("64:ff9b:1::/48", "local-use NAT64 (64:ff9b:1::/48)"),
        ("::/8", "reserved (::/8, incl. IPv4-compatible and IPv4-translated)"),
        ("100::/64", "discard-only (100::/64)"),
        ("2001:db8::/32", "documentation (2001:db8::/32)"),
        ("2001::/23", "IETF protocol assignments (2001::/23, incl. Teredo and benchmarking)"),
        ("2002::/16", "6to4 (2002::/16)"),
        ("3fff::/20", "documentation (3fff::/20)"),
        ("5f00::/16", "SRv6 SIDs (5f00::/16)"),
        ("fc00::/7", "unique local (fc00::/7)"),
        ("fe80::/10", "link-local (fe80::/10)"),
        ("fec0::/10", "site-local (fec0::/10)"),
        ("ff00::/8", "multicast"),
    )
)

# Text that never belongs in a callback URL: whitespace, C0 controls, DEL, backslash (WHATWG parsers read a
# backslash as a slash, RFC 3986 parsers do not: a classic parser-differential bypass).
_BAD_CHARS = re.compile(r"[\x00-\x20\x7f\\]")
_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
# A label that WHATWG URL parsers (and inet_aton) read as a number: decimal, octal (leading 0) or hex.
_NUMERIC_LABEL = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)")
_MAX_HOST_LENGTH = 253


class ForbiddenDestination(InvalidRequest):
    """The callback URL's host is, or resolves to, an address the SSRF guard refuses."""

    reason = FORBIDDEN

    def __init__(
        self, message: str, *, address: str | None = None, label: str = "", metadata: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message, metadata=metadata if metadata is not None else {"field": FIELD})
        #: The refused address and the name of its range, for logs. Messages about a resolved name leave the
        #: address out (it would tell a subscriber what an internal name resolves to).
        self.address = address
        self.label = label


@dataclass(frozen=True, slots=True)
class ParsedUrl:
    """A callback URL that passed :func:`check_url`.

    ``url`` is the canonical form (lowercase scheme and host, IDNA host, percent-encoded path and query,
    default port elided): the string to send to. ``host`` is the ASCII host without brackets; ``ip`` is set
    when the host is an IP literal (already vetted).
    """

    url: str
    scheme: str
    host: str
    port: int
    ip: IPAddress | None


def _invalid(message: str) -> InvalidRequest:
    return InvalidRequest(f"callback_url: {message}", reason=INVALID, metadata={"field": FIELD})


def parse_networks(networks: Iterable[NetworkSpec]) -> tuple[IPNetwork, ...]:
    """``allow_networks`` entries as networks (``"10.1.2.0/24"``, ``"::1/128"``, a bare address = /32 or
    /128); an unusable entry (or one with host bits set) is a :class:`~switchboard.errors.ConfigError`."""
    if isinstance(networks, str):
        raise ConfigError("allow_networks must be a list of networks, not one string")
    parsed: list[IPNetwork] = []
    for entry in networks:
        if isinstance(entry, ipaddress.IPv4Network | ipaddress.IPv6Network):
            parsed.append(entry)
            continue
        try:
            parsed.append(ipaddress.ip_network(entry))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"allow_networks: {entry!r} is not a network: {exc}") from None
    return tuple(parsed)


def _networks(allow_networks: Collection[NetworkSpec]) -> tuple[IPNetwork, ...]:
    if isinstance(allow_networks, tuple) and all(
        isinstance(n, ipaddress.IPv4Network | ipaddress.IPv6Network) for n in allow_networks
    ):
        return allow_networks
    return parse_networks(allow_networks)


def _parse_address(address: str | IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return address
    if not isinstance(address, str):
        raise _invalid(f"{address!r} is not an IP address")
    try:
        return ipaddress.ip_address(address)
    except ValueError:
        raise _invalid(f"{address!r} is not an IP address in canonical form") from None


def _refusal(ip: IPAddress) -> str | None:
    """Why ``ip`` is refused (without the allowlist), or None."""
    for network, label in BLOCKED_NETWORKS:
        if ip.version == network.version and ip in network:
            return label
    checks = (
        (ip.is_unspecified, "unspecified"),
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local"),
        (ip.is_multicast, "multicast"),
        (ip.is_private, "private"),
        (ip.is_reserved, "reserved"),
        (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local, "site-local"),
        (not ip.is_global, "not globally routable"),
    )
    for refused, label in checks:
        if refused:
            return label
    return None


def check_ip(address: str | IPAddress, allow_networks: Collection[NetworkSpec] = ()) -> IPAddress:
    """Vet one destination address; returns it parsed, or raises :class:`ForbiddenDestination`
    (``CALLBACK_URL_FORBIDDEN``) naming the range, or ``CALLBACK_URL_INVALID`` if it is not a canonical IP."""
    allow = _networks(allow_networks)
    ip = _parse_address(address)
    if any(ip.version == net.version and ip in net for net in allow):
        return ip
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id is not None:
            # A zone id only makes sense for link-local addresses, which are refused below anyway.
            bare = ipaddress.IPv6Address(str(ip).split("%", 1)[0])
            if any(bare in net for net in allow if net.version == 6):
                return ip
            scoped = _refusal(bare) or "scoped (zone id)"
            raise ForbiddenDestination(
                f"callback_url: destination {ip} is not allowed ({scoped})", address=str(ip), label=scoped
            )
        mapped = ip.ipv4_mapped
        if mapped is not None:
            try:
                check_ip(mapped, allow)
            except ForbiddenDestination as exc:
                raise ForbiddenDestination(
                    f"callback_url: destination {ip} (IPv4-mapped {mapped}) is not allowed ({exc.label})",
                    address=str(ip),
                    label=f"IPv4-mapped, {exc.label}",
                ) from None
            return ip
    reason = _refusal(ip)
    if reason is not None:
        raise ForbiddenDestination(
            f"callback_url: destination {ip} is not allowed ({reason})", address=str(ip), label=reason
        )
    return ip


def _legacy_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """The address ``inet_aton`` (hence ``getaddrinfo`` and ``connect``) would read from ``host``, if any."""
    try:
        packed = socket.inet_aton(host)
    except (OSError, ValueError):
        return None
    return ipaddress.IPv4Address(packed)


def _check_host(raw_host: str, allow: tuple[IPNetwork, ...]) -> IPAddress | None:
    """Vet the URL's host; returns the address when it is an IP literal."""
    if ":" in raw_host:  # yarl only gives a colon for a bracketed IPv6 literal
        if "%" in raw_host:
            raise _invalid("an IPv6 literal must not carry a zone id")
        try:
            ip6 = ipaddress.IPv6Address(raw_host)
        except ValueError:
            raise _invalid(f"host [{raw_host}] is not an IPv6 address") from None
        return check_ip(ip6, allow)

    host = raw_host[:-1] if raw_host.endswith(".") else raw_host
    if not host or len(host) > _MAX_HOST_LENGTH:
        raise _invalid("the host name is empty or longer than 253 characters")
    labels = host.split(".")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        # An IPv4 literal, or a name a browser or inet_aton would read as one: only the canonical
        # dotted quad is accepted, and it is vetted now (aiohttp skips the resolver for it).
        try:
            ip4 = ipaddress.IPv4Address(host)
        except ValueError:
            legacy = _legacy_ipv4(host)
            if legacy is not None:
                check_ip(legacy, allow)  # a forbidden address is reported as such
                raise _invalid(f"host {raw_host!r} is a non-canonical IPv4 literal; write {legacy}") from None
            raise _invalid(f"host {raw_host!r} ends in a numeric label but is not an IPv4 address") from None
        checked = check_ip(ip4, allow)
        if host != raw_host:
            raise _invalid(f"host {raw_host!r}: an IPv4 literal must not end with a dot")
        return checked
    for label in labels:
        if not _LABEL.fullmatch(label):
            raise _invalid(f"host {raw_host!r} is not a valid host name (labels of 1-63 letters, digits, '-' or '_')")
    return None


def check_url(
    url: str,
    *,
    allow_http_hosts: Collection[str] = (),
    allow_networks: Collection[NetworkSpec] = (),
    reserved_ports: Collection[int] = (),
) -> ParsedUrl:
    """Validate a callback URL (see the module docstring); returns its canonical form. An internal address (one
    only ``allow_networks`` lets through) on a port in ``reserved_ports`` (the platform's own: Envoy's admin,
    the services, their metrics, the broker and the store) is ``CALLBACK_URL_FORBIDDEN``: with loopback
    allowed, a subscription to ``http://127.0.0.1:9901/quitquitquit`` made the delivery worker stop Envoy,
    and ``/logging?level=debug`` made it log every request's headers. Here for IP literals; a name is
    checked where it resolves (``GuardedResolver``, ``resolve_and_check``). Public addresses keep every
    port."""
    if not isinstance(url, str):
        raise _invalid("must be a string")
    if not url:
        raise _invalid("is empty")
    if len(url) > MAX_URL_LENGTH:
        raise _invalid(f"is longer than {MAX_URL_LENGTH} characters")
    if _BAD_CHARS.search(url):
        raise _invalid("contains whitespace, a control character or a backslash")
    allow = _networks(allow_networks)
    try:
        parsed = URL(url)
        scheme = parsed.scheme
        raw_host = parsed.raw_host
        explicit_port = parsed.explicit_port
        port = parsed.port
        has_user = parsed.raw_user is not None or parsed.raw_password is not None
        authority = parsed.raw_authority
        fragment = parsed.raw_fragment
        canonical = str(parsed)
    except (ValueError, TypeError, UnicodeError, IndexError) as exc:  # yarl raises IndexError on '0://[]@'
        raise _invalid(f"cannot be parsed: {exc or type(exc).__name__}") from None

    if scheme not in ("https", "http"):
        raise _invalid(f"the scheme must be https, not {scheme!r}" if scheme else "must be an absolute https URL")
    if not raw_host:
        raise _invalid("has no host")
    host = raw_host.lower()
    if scheme == "http" and host not in {h.lower().strip("[]") for h in allow_http_hosts}:
        raise _invalid(f"must use https (plain http is allowed only for configured hosts, not {host!r})")
    # yarl drops an empty userinfo ("https://@host/"); refuse any '@' in the authority as written.
    written_authority = url.split("://", 1)[-1]
    written_authority = re.split(r"[/?#]", written_authority, maxsplit=1)[0]
    if has_user or "@" in authority or "@" in written_authority:
        raise _invalid("must not contain credentials (user:password@)")
    if fragment:
        raise _invalid("must not have a fragment (#...)")
    if explicit_port is not None and not 1 <= explicit_port <= 65535:
        raise _invalid(f"port {explicit_port} is out of range (1-65535)")
    if port is None:  # unreachable for http(s), but keeps the type exact
        raise _invalid("has no port")
    if len(canonical) > MAX_URL_LENGTH:
        raise _invalid(f"is longer than {MAX_URL_LENGTH} characters once encoded")
    ip = _check_host(host, allow)
    if ip is not None:
        _check_port(str(ip), port, reserved_ports)
    return ParsedUrl(url=canonical, scheme=scheme, host=host, port=port, ip=ip)


def _internal(address: str | IPAddress) -> bool:
    """An address only an allowlist lets through (loopback, private, link-local, ...)."""
    try:
        check_ip(address)
    except (ForbiddenDestination, InvalidRequest):
        return True
    return False


def _check_port(address: str, port: int, reserved_ports: Collection[int]) -> None:
    """``ForbiddenDestination`` for an internal ``address`` on one of the platform's own ports."""
    if port in reserved_ports and _internal(address):
        raise ForbiddenDestination(
            f"callback_url: port {port} of an internal address is one this platform listens on",
            address=address,
            label="platform port",
        )


async def resolve_and_check(
    host: str,
    port: int,
    allow_networks: Collection[NetworkSpec] = (),
    *,
    dns_timeout: float = 10.0,
    reserved_ports: Collection[int] = (),
) -> list[str]:
    """Resolve ``host`` (DNS, through c-ares) and vet EVERY address; returns the distinct addresses in the
    resolver's order. Refused if any one is refused (a name that answers with both a public and a private
    address is refused: the connect could pick either)."""
    allow = _networks(allow_networks)
    name = host.strip("[]")
    try:
        literal: IPAddress | None = ipaddress.ip_address(name)
    except ValueError:
        literal = None
    if literal is not None:
        _check_port(str(literal), port, reserved_ports)
        return [str(check_ip(literal, allow))]
    resolver = aiodns.DNSResolver(timeout=DNS_TRY_SECONDS, tries=DNS_TRIES)
    try:
        async with asyncio.timeout(dns_timeout):
            result = await resolver.getaddrinfo(name, port=port, type=socket.SOCK_STREAM, family=socket.AF_UNSPEC)
    except TimeoutError:
        raise Unavailable(f"callback_url: resolving {name!r} timed out", reason=DNS_UNAVAILABLE) from None
    except aiodns.error.DNSError as exc:
        code = exc.args[0] if exc.args else None
        text = exc.args[1] if len(exc.args) > 1 else "failed"
        if code in _NO_SUCH_NAME:
            raise _invalid(f"host {name!r} does not resolve: {text}") from None
        raise Unavailable(f"callback_url: resolving {name!r} failed for now: {text}", reason=DNS_UNAVAILABLE) from None
    except UnicodeError:
        raise _invalid(f"host {name!r} is not a valid host name") from None
    finally:
        await resolver.close()
    addresses: list[str] = []
    for node in result.nodes:
        raw = node.addr[0]
        text = raw.decode("ascii") if isinstance(raw, bytes) else str(raw)
        if text not in addresses:
            addresses.append(text)
    if not addresses:
        raise _invalid(f"host {name!r} resolves to no address")
    for text in addresses:
        _check_answer(name, text, allow)
        _check_port(text, port, reserved_ports)
    return addresses


def _check_answer(host: str, address: str, allow: tuple[IPNetwork, ...]) -> None:
    """Vet one DNS answer for ``host``; the message names the range, not the address."""
    try:
        check_ip(address, allow)
    except ForbiddenDestination as exc:
        raise ForbiddenDestination(
            f"callback_url: host {host!r} resolves to a forbidden address ({exc.label})",
            address=exc.address,
            label=exc.label,
        ) from None
    except InvalidRequest:
        raise ForbiddenDestination(
            f"callback_url: host {host!r} resolves to something that is not an IP address",
            address=address,
            label="not an IP address",
        ) from None


class GuardedResolver(AbstractResolver):
    """An aiohttp resolver that returns only vetted addresses: every answer of the wrapped resolver must pass
    :func:`check_ip`, else the lookup raises :class:`ForbiddenDestination` (one bad answer refuses all).

    ``inner`` defaults to aiohttp's ``AsyncResolver`` (c-ares; created on first use, inside the running loop).
    """

    def __init__(
        self,
        allow_networks: Collection[NetworkSpec] = (),
        *,
        inner: AbstractResolver | None = None,
        reserved_ports: Collection[int] = (),
    ) -> None:
        self._allow = parse_networks(allow_networks)
        self._inner = inner
        self._reserved = frozenset(reserved_ports)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if self._inner is None:
            self._inner = AsyncResolver(timeout=DNS_TRY_SECONDS, tries=DNS_TRIES)
        infos = await self._inner.resolve(host, port, family)
        for info in infos:
            _check_answer(host, info["host"], self._allow)
            _check_port(info["host"], port, self._reserved)
        return infos

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()
