"""redacted_url: a broker URL's password never reaches a log line, a message or a repr (found in review: the
stack logged "rabbitmq ready" with the URL whole, and ``describe()`` hid only guest:guest)."""

from __future__ import annotations

import pytest

from switchboard.addresses import host_port, redacted_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("amqp://svc:s3cr3t@broker.internal:5672/prod", "amqp://svc:***@broker.internal:5672/prod"),
        ("amqps://svc:s3cr3t@[2001:db8::1]:5671/", "amqps://svc:***@[2001:db8::1]:5671/"),
        ("amqp://svc:p%40ss%2Fw@broker/v", "amqp://svc:***@broker/v"),
        ("amqp://svc:@broker/", "amqp://svc:***@broker/"),
        ("amqp://svc@broker/", "amqp://svc@broker/"),
        ("amqp://broker:5672/", "amqp://broker:5672/"),
        ("amqp://guest:guest@127.0.0.1:5682/", "amqp://guest:***@127.0.0.1:5682/"),
        ("svc:s3cr3t@broker", "svc:***@broker"),
    ],
)
def test_the_password_is_replaced_and_the_rest_kept(url: str, shown: str) -> None:
    assert redacted_url(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        "amqp://svc:pa#ss@broker/",  # an unescaped '#' ends the authority early
        "amqp://svc:pa/ss@broker/",
        "amqp://svc:pa?ss@broker/",
        "amqp://svc:pa@ss@broker/v@h",
    ],
)
def test_a_url_that_does_not_part_cleanly_shows_only_its_scheme(url: str) -> None:
    assert redacted_url(url) == "amqp://***"
    assert "pa" not in redacted_url(url).removeprefix("amqp://")


@pytest.mark.parametrize(
    ("host", "port", "address"),
    [
        ("127.0.0.1", 50051, "127.0.0.1:50051"),
        ("::1", 50051, "[::1]:50051"),
        ("2001:db8::5", 9611, "[2001:db8::5]:9611"),
        ("[::1]", 1, "[::1]:1"),
        ("broker.internal", 5672, "broker.internal:5672"),
    ],
)
def test_host_port_brackets_ipv6_literals(host: str, port: int, address: str) -> None:
    assert host_port(host, port) == address
