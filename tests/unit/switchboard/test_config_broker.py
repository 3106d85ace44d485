"""``[rabbitmq]``: a URL's password is never shown, a URL the client would misread is refused, and managed =
true with a url (the stack probing its own node while the services connect elsewhere) is refused (found in
review)."""

from __future__ import annotations

from pathlib import Path

import pytest

from switchboard.config import parse_config
from switchboard.config.broker import RabbitConfig, parse_rabbitmq
from switchboard.errors import ConfigError
from switchboard_devstack.stack import Stack

SECRET_URL = "amqp://svc:s3cr3t-pw@broker.internal:5672/prod"
SOURCES = [{"name": "shop", "scheme": "stripe", "secrets": [{"env": "SHOP_SECRET"}]}]


def test_the_password_is_in_no_repr_and_no_display() -> None:
    cfg = parse_config({"sources": SOURCES, "rabbitmq": {"url": SECRET_URL}}, Path("/tmp/switchboard.toml"))
    assert cfg.rabbitmq.amqp_url == SECRET_URL  # what the services connect with
    assert "s3cr3t" not in repr(cfg.rabbitmq) and "s3cr3t" not in repr(cfg)
    assert cfg.rabbitmq.display_url == "amqp://svc:***@broker.internal:5672/prod"


def test_the_stacks_summary_shows_the_broker_without_its_password() -> None:
    cfg = parse_config({"sources": SOURCES, "rabbitmq": {"url": SECRET_URL}}, Path("/tmp/switchboard.toml"))
    text = Stack(cfg).describe()
    assert "broker.internal:5672/prod" in text and "s3cr3t" not in text


def test_the_managed_nodes_default_url_shows_no_password_either() -> None:
    assert RabbitConfig().display_url == "amqp://guest:***@127.0.0.1:5682/"


def test_managed_with_a_url_is_refused() -> None:
    with pytest.raises(ConfigError, match="managed = true and a url") as caught:
        parse_rabbitmq({"managed": True, "url": SECRET_URL})
    assert "s3cr3t" not in str(caught.value)


def test_a_url_alone_or_unmanaged_means_an_existing_broker() -> None:
    assert not parse_rabbitmq({"url": SECRET_URL}).managed
    assert not parse_rabbitmq({"managed": False, "url": SECRET_URL}).managed
    assert parse_rabbitmq({}).managed


@pytest.mark.parametrize(
    "url",
    [
        "amqp://svc:s3cr3t#x@broker/",
        "amqp://svc:s3cr3t/x@broker/",
        "http://svc:s3cr3t@broker/",
        "amqp://svc:s3cr3t@broker:99999/",
        "amqp://svc:s3cr3t@/vhost",
        "amqp://svc:s3cr3t@broker/v@host",
    ],
)
def test_a_url_the_client_would_misread_is_refused_without_showing_the_password(url: str) -> None:
    with pytest.raises(ConfigError, match=r"rabbitmq\.url") as caught:
        parse_rabbitmq({"url": url})
    assert "s3cr3t" not in str(caught.value)


def test_the_endpoint_is_the_urls() -> None:
    assert parse_rabbitmq({"url": SECRET_URL}).endpoint() == ("broker.internal", 5672)
    assert parse_rabbitmq({"url": "amqps://svc:x@broker/"}).endpoint() == ("broker", 5671)
    assert parse_rabbitmq({"port": 5999}).endpoint() == ("127.0.0.1", 5999)
