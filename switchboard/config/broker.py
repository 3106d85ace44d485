"""``[rabbitmq]``: the broker, managed by the local stack or an existing one."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from switchboard.config._table import Table


@dataclass(frozen=True)
class RabbitConfig:
    # managed: the stack starts its own node; otherwise `url` points at an existing broker.
    managed: bool = True
    host: str = "127.0.0.1"
    port: int = 5682
    nodename: str = "switchboard"
    url: str | None = None
    queue_prefix: str = "switchboard"

    @property
    def amqp_url(self) -> str:
        return self.url or f"amqp://guest:guest@{self.host}:{self.port}/"


def parse_rabbitmq(raw: Mapping[str, Any]) -> RabbitConfig:
    t = Table(raw, "rabbitmq", RabbitConfig)
    url = t.optional_string("url")
    return RabbitConfig(
        # An explicit url means an existing broker unless `managed` says otherwise.
        managed=t.boolean("managed") if t.present("managed") else url is None,
        host=t.ip("host"),
        port=t.port("port"),
        nodename=t.string("nodename"),
        url=url,
        queue_prefix=t.string("queue_prefix"),
    )
