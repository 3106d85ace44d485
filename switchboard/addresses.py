"""Network addresses as they are shown: URLs whose password never reaches a log line, a message or a repr.

Invariant: :func:`redacted_url` never returns a password that its input carries, whatever the input; a URL it
cannot take apart unambiguously is shown as its scheme and ``***``.
"""

from __future__ import annotations

__all__ = ["REDACTED", "redacted_url"]

REDACTED = "***"


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
