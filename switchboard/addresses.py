"""Network addresses as they are dialled and shown: ``host:port`` with an IPv6 literal in brackets, and URLs
whose password never reaches a log line, a message or a repr.

Invariants: :func:`host_port` is what gRPC targets, URLs and Prometheus take for any IP literal or name (a bare
``::1:50051`` is none of them); :func:`redacted_url` never returns a password that its input carries, whatever
the input; a URL it cannot take apart unambiguously is shown as its scheme and ``***``.
"""

from __future__ import annotations

__all__ = ["REDACTED", "host_port", "redacted_url"]

REDACTED = "***"


def host_port(host: str, port: int) -> str:
    """``host:port``; an IPv6 literal (any host with a colon) in brackets: ``[::1]:50051``."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def redacted_url(url: str) -> str:
    """``url`` with the password of its userinfo replaced by ``***`` (``amqp://user:***@host:5672/vhost``); a URL
    without one is returned as it is. An ``@`` after the authority (where a password with an unescaped ``/``,
    ``?`` or ``#`` would leave part of it) shows only the scheme."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    prefix = f"{scheme}{sep}"
    if "@" in tail:
        return f"{prefix}{REDACTED}"
    userinfo, at, hostport = authority.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.partition(":")[0]
    return f"{prefix}{user}:{REDACTED}@{hostport}{tail}"
