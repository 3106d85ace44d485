"""``[rabbitmq]``: the broker, managed by the local stack or an existing one."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from switchboard.addresses import host_port, redacted_url
from switchboard.config._table import Table, parse_secret_ref
from switchboard.config.ports import LOOPBACK
from switchboard.errors import ConfigError
from switchboard.secrets import SecretRef

AMQP_PORTS = {"amqp": 5672, "amqps": 5671}


@dataclass(frozen=True)
class RabbitConfig:
    """Either ``managed`` (the stack starts its own node on ``host:port``) or ``url`` (an existing broker),
    never both. ``url`` may hold a password: it is left out of the repr, and everything that shows where the
    broker is shows :attr:`display_url`."""

    managed: bool = True
    host: str = "127.0.0.1"
    port: int = 5682
    nodename: str = "switchboard"
    url: str | None = field(default=None, repr=False)
    queue_prefix: str = "switchboard"
    # The url as a secret reference instead (``url = { env = "VAR" }``): read, and checked like a url written
    # in the file, when first used, so that a process that never talks to the broker (the query service, the
    # command's subscription commands) neither needs it nor sees it.
    url_ref: SecretRef | None = field(default=None, repr=False)

    @property
    def amqp_url(self) -> str:
        """The URL the services connect with, credentials included: never log it (``display_url``)."""
        return self._url or f"amqp://guest:guest@{host_port(self.host, self.port)}/"

    @property
    def display_url(self) -> str:
        """``amqp_url`` without its password, for logs and messages."""
        return redacted_url(self.amqp_url)

    def endpoint(self) -> tuple[str, int]:
        """The host and port the services connect to (the url's when one is given)."""
        url = self._url
        if url is None:
            return self.host, self.port
        parts = urlsplit(url)
        return parts.hostname or "", parts.port or AMQP_PORTS[parts.scheme]

    @functools.cached_property
    def _url(self) -> str | None:
        if self.url_ref is None:
            return self.url
        try:
            url = self.url_ref.resolve().reveal()
        except ConfigError as exc:
            raise ConfigError(f"rabbitmq.url: {exc.message}") from None
        check_amqp_url(url)
        return url


def parse_rabbitmq(raw: Mapping[str, Any], base: Path = Path(".")) -> RabbitConfig:
    """``url`` is a string, or, so that the broker's password is not written in the file, a secret reference
    (``{ env = "VAR" }`` or ``{ file = "path" }`` holding the whole URL), read when first used
    (``RabbitConfig.url_ref``)."""
    t = Table(raw, "rabbitmq", RabbitConfig)
    if "url_ref" in raw:  # a field, not a key: ``url`` takes the reference
        raise ConfigError("rabbitmq: unknown key 'url_ref' (a referenced url is url = { env = ... })")
    ref, url_ref = t.get("url"), None
    if isinstance(ref, Mapping):
        if "generate" in ref:
            raise ConfigError("rabbitmq.url: a broker's URL cannot be generated; reference one with env or file")
        url, url_ref = None, parse_secret_ref(ref, "rabbitmq.url", base)
    else:
        url = t.optional_string("url")
    if url is not None:
        check_amqp_url(url)
    given = url is not None or url_ref is not None
    # An explicit url means an existing broker unless `managed` says otherwise.
    managed = t.boolean("managed") if t.present("managed") else not given
    if managed and given:
        # The stack would start its own node on host:port and wait for it, while every service connected to
        # the url.
        raise ConfigError(
            "rabbitmq: managed = true and a url: the local stack would start and probe its own node while the "
            "services connect to the url; set managed = false to use that broker, or remove the url"
        )
    host = t.ip("host")
    if managed and host != LOOPBACK:
        # The node listens on 127.0.0.1 only: its readiness probe passed while every service dialled the
        # configured address and waited for RabbitMQ until the stack gave up.
        raise ConfigError(
            f"rabbitmq.host: {host}: the local stack runs its node on {LOOPBACK} only; "
            "for a broker elsewhere set managed = false and a url"
        )
    return RabbitConfig(
        managed=managed,
        host=host,
        port=t.port("port"),
        nodename=t.string("nodename"),
        url=url,
        queue_prefix=t.string("queue_prefix"),
        url_ref=url_ref,
    )


def check_amqp_url(url: str) -> None:
    """``ConfigError`` (showing the url without its password) unless ``url`` is ``amqp://`` or ``amqps://``
    with a host, a valid port if any, no fragment, and no ``@`` past the userinfo (a password's ``@``, ``/``,
    ``?`` or ``#`` is percent-encoded: unescaped, the broker's client would read another host or user)."""
    shown = redacted_url(url)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError:
        raise ConfigError(f"rabbitmq.url: {shown} is not a URL with a valid host and port") from None
    if parts.scheme not in AMQP_PORTS or not parts.hostname:
        raise ConfigError(f"rabbitmq.url: {shown} must be amqp://[user:password@]host[:port][/vhost] (or amqps://)")
    if parts.fragment or "#" in url or "@" in parts.path + parts.query:
        raise ConfigError(
            f"rabbitmq.url: {shown} has a '#' or an '@' outside the userinfo: percent-encode them in the password "
            "(%23, %40) and the vhost"
        )
    if parts.query:
        # The platform's two AMQP clients read different parameters and fail on the other's: pika (the
        # consumers) raises at connect on any it does not know (``cafile``), aiormq (the publishers) turns
        # certificate checks off with ``no_verify_ssl``, and the heartbeat is the platform's to set.
        keys = sorted({k for k, _ in parse_qsl(parts.query, keep_blank_values=True)}) or ["?"]
        raise ConfigError(
            f"rabbitmq.url: {shown} has query parameters ({', '.join(k[:40] for k in keys[:5])}): the platform "
            "takes none (its AMQP clients read different ones, and it sets the heartbeat itself); remove them"
        )
