"""Property tests: check_url and check_ip raise nothing but InvalidRequest (CALLBACK_URL_INVALID, or
ForbiddenDestination with CALLBACK_URL_FORBIDDEN), whatever the input, and what they accept is consistent."""

from __future__ import annotations

import ipaddress

from hypothesis import example, given, settings
from hypothesis import strategies as st

from switchboard.delivery.urls import BLOCKED_NETWORKS, ForbiddenDestination, ParsedUrl, check_ip, check_url
from switchboard.errors import InvalidRequest

any_text = st.text(st.characters(exclude_categories=()), max_size=120)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
tricky_hosts = st.sampled_from(
    [
        "localhost",
        "0x7f.0.0.1",
        "0x7f000001",
        "2130706433",
        "127.1",
        "0177.0.0.1",
        "127.0.0.1.",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "[fe80::1%25eth0]",
        "[::ffff:7f00:1]",
        "%31%32%37.0.0.1",
        "ex%41mple.com",
        "bücher.de",
        "xn--",
        "a" * 64 + ".com",
        "[1.2.3.4]",
        "[",
        "]",
        "@",
        ":",
        "..",
        "-",
        "example.com",
        "8.8.8.8",
    ]
)
hosts = st.one_of(
    tricky_hosts,
    ipv4,
    ipv6.map(lambda a: f"[{a}]"),
    st.from_regex(r"[a-z0-9.\-_%x]{0,30}", fullmatch=True),
    any_text,
)
urls = st.one_of(
    any_text,
    st.builds(
        lambda scheme, userinfo, host, port, path: f"{scheme}{userinfo}{host}{port}{path}",
        st.sampled_from(["https://", "http://", "HTTPS://", "ftp://", "https:", "//", ""]),
        st.sampled_from(["", "u:p@", "@", "u@", ":@"]),
        hosts,
        st.one_of(st.just(""), st.integers(-5, 70000).map(lambda p: f":{p}"), any_text.map(lambda t: ":" + t[:6])),
        st.one_of(st.just("/"), any_text.map(lambda t: "/" + t), st.sampled_from(["/#x", "/?a=b", "\\@x", ""])),
    ),
)


def outcome(call: object) -> object:
    try:
        return call()  # type: ignore[operator]
    except InvalidRequest as exc:
        assert exc.metadata == {"field": "callback_url"}
        if isinstance(exc, ForbiddenDestination):
            assert exc.reason == "CALLBACK_URL_FORBIDDEN"
        else:
            assert exc.reason == "CALLBACK_URL_INVALID"
        return None


@settings(max_examples=1500, deadline=None)
@given(url=urls, allow_http=st.booleans())
@example(url="0://[]@", allow_http=False)  # yarl raised IndexError on it (found by this test in a full run)
def test_check_url_only_raises_invalid_request(url: str, allow_http: bool) -> None:
    result = outcome(lambda: check_url(url, allow_http_hosts=["localhost", "example.com"] if allow_http else ()))
    if result is None:
        return
    assert isinstance(result, ParsedUrl)
    assert result.scheme in ("https", "http")
    assert 1 <= result.port <= 65535
    assert "@" not in result.url.split("://", 1)[1].split("/", 1)[0]
    # Idempotent: the canonical form passes and parses to the same thing.
    assert check_url(result.url, allow_http_hosts=["localhost", "example.com"] if allow_http else ()) == result
    if result.ip is not None:
        check_ip(result.ip, ())  # an accepted literal is a public address


@settings(max_examples=1000, deadline=None)
@given(address=st.one_of(any_text, ipv4, ipv6, tricky_hosts))
def test_check_ip_only_raises_invalid_request(address: str) -> None:
    outcome(lambda: check_ip(address, ()))


@settings(max_examples=2000, deadline=None)
@given(address=st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)))
def test_accepted_addresses_are_global_and_outside_every_blocked_range(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    try:
        check_ip(address, ())
    except ForbiddenDestination:
        return
    effective = address
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        effective = address.ipv4_mapped
    assert effective.is_global
    assert not (effective.is_private or effective.is_loopback or effective.is_link_local or effective.is_multicast)
    assert not any(effective.version == net.version and effective in net for net, _ in BLOCKED_NETWORKS)


@settings(max_examples=1000, deadline=None)
@given(address=st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)))
def test_check_url_agrees_with_check_ip_on_literals(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    host = str(address) if address.version == 4 else f"[{address}]"
    try:
        check_ip(address, ())
    except ForbiddenDestination:
        ip_ok = False
    else:
        ip_ok = True
    try:
        parsed = check_url(f"https://{host}/hook")
    except ForbiddenDestination:
        assert not ip_ok
    else:
        assert ip_ok
        assert parsed.ip == address
