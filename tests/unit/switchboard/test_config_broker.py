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


def test_the_url_may_be_a_secret_reference_so_that_the_password_is_not_in_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README says secrets are referenced, never written inline; the broker's password could only be
    written in the file, inside the URL. The reference is read when first used: a process that never talks to
    the broker (the query service, ``switchboard subs``) loads the configuration without it."""
    unset = parse_rabbitmq({"url": {"env": "SB_BROKER_URL"}})  # loads without the variable
    assert not unset.managed
    with pytest.raises(ConfigError, match=r"^rabbitmq\.url: .*SB_BROKER_URL"):
        unset.endpoint()
    monkeypatch.setenv("SB_BROKER_URL", SECRET_URL)
    by_env = parse_rabbitmq({"url": {"env": "SB_BROKER_URL"}})
    assert (by_env.amqp_url, by_env.endpoint()) == (SECRET_URL, ("broker.internal", 5672))
    assert "s3cr3t" not in repr(by_env) and "s3cr3t" not in by_env.display_url
    (tmp_path / "broker.url").write_text(SECRET_URL + "\n")
    (tmp_path / "broker.url").chmod(0o600)
    assert parse_rabbitmq({"url": {"file": "broker.url"}}, tmp_path).amqp_url == SECRET_URL
    monkeypatch.setenv("SB_BROKER_URL", "amqps://svc:s3cr3t@broker/?no_verify_ssl=1")
    with pytest.raises(ConfigError, match=r"rabbitmq\.url") as caught:  # checked as one written inline
        _ = parse_rabbitmq({"url": {"env": "SB_BROKER_URL"}}).amqp_url
    assert "s3cr3t" not in str(caught.value)
    with pytest.raises(ConfigError, match="cannot be generated"):
        parse_rabbitmq({"url": {"file": "x", "generate": "hex"}}, tmp_path)
    with pytest.raises(ConfigError, match="managed = true and a url"):
        parse_rabbitmq({"managed": True, "url": {"env": "SB_BROKER_URL"}})
    with pytest.raises(ConfigError, match="url_ref"):
        parse_rabbitmq({"url_ref": "x"})
