from __future__ import annotations

from pathlib import Path

import pytest

from switchboard.config import load_config, parse_config
from switchboard.config.edge import GRPC_MAX_MESSAGE_BYTES, MAX_BODY_BYTES
from switchboard.errors import ConfigError
from switchboard.secrets import SecretRef
from switchboard_devstack.paths import DevPaths

SHOP = {"name": "shop", "scheme": "stripe", "secrets": [{"env": "X"}]}


def base(**over: object) -> dict[str, object]:
    raw: dict[str, object] = {
        "sources": [{"name": "shop", "scheme": "stripe", "secrets": [{"env": "SHOP_SECRET"}]}],
    }
    raw.update(over)
    return raw


def test_default_config_file_parses_with_a_demo_source() -> None:
    cfg = load_config(DevPaths.default().default_config)
    assert cfg.edge.https_port == 8443 and cfg.edge.bind == "127.0.0.1"
    assert cfg.edge.default_source == "demo"
    assert cfg.source("demo") is not None
    assert cfg.data_dir.name == "var"
    assert [op.name for op in cfg.processor.operations] == ["log", "entity", "deliver"]
    assert [op.run_when_stale for op in cfg.processor.operations] == [None, None, None]  # each its own default
    assert cfg.delivery.secrets_key is not None and "invoice.paid" in (cfg.event_types() or ())
    assert cfg.processor.retry.max_attempts == 8 and cfg.processor.retry.levels_ms()[0] == 1000
    assert cfg.processor.heartbeat_seconds == 10
    assert cfg.processor.batch_linger_ms == 20
    assert cfg.cassandra.compress_payloads


def test_services_may_listen_beyond_loopback_only_when_told_the_network_is_the_platforms() -> None:
    raw = base(platform={"services_on_network": True}, ingest={"host": "10.0.0.5"}, control={"host": "0.0.0.0"})
    cfg = parse_config(raw, Path("/tmp/s.toml"))
    assert (cfg.ingest.host, cfg.control.host, cfg.query.host) == ("10.0.0.5", "0.0.0.0", "127.0.0.1")


def test_the_largest_body_limit_fits_a_grpc_message() -> None:
    limit = MAX_BODY_BYTES
    cfg = parse_config(base(edge={"max_body_bytes": limit}), Path("/tmp/s.toml"))
    assert cfg.sources[0].max_body_bytes == limit < GRPC_MAX_MESSAGE_BYTES


def test_payload_compression_can_be_turned_off() -> None:
    assert not parse_config(
        base(cassandra={"compress_payloads": False}), Path("/tmp/s.toml")
    ).cassandra.compress_payloads


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    cfg = parse_config(
        base(sources=[{"name": "a", "scheme": "stripe", "secrets": [{"file": "s/a.secret"}]}]),
        tmp_path / "x.toml",
    )
    assert cfg.data_dir == tmp_path / "var"
    assert cfg.sources[0].secrets[0].file == tmp_path / "s" / "a.secret"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            base(sources=[{"name": "shop", "scheme": "nope", "secrets": [{"env": "X"}]}]),
            "scheme 'nope' is unknown",
        ),
        (base(sources=[{"name": "shop", "scheme": "stripe"}]), "never accepted unverified"),
        (base(sources=[{"name": "shop", "scheme": "stripe", "secrets": [{"value": "x"}]}]), "unknown key"),
        (base(sources=[{"name": "Bad Name", "scheme": "stripe", "secrets": [{"env": "X"}]}]), "must match"),
        (base(sources=[{"name": "shop\n", "scheme": "stripe", "secrets": [{"env": "X"}]}]), "must match"),
        (
            base(
                sources=[{"name": "shop", "scheme": "stripe", "secrets": [{"env": "X"}], "allow_cidrs": ["10.1.2.3/8"]}]
            ),
            "no host bits",
        ),
        (
            base(sources=[{"name": "shop", "scheme": "stripe", "secrets": [{"env": "X"}], "max_body_bytes": 16 << 20}]),
            "max_body_bytes",
        ),
        (base(edge={"max_body_bytes": 16 << 20}), "max_body_bytes"),
        (base(ingest={"host": "0.0.0.0"}), "not a loopback address"),
        (base(query={"host": "10.0.0.5"}), "not a loopback address"),
        (base(control={"host": "::"}), "not a loopback address"),
        (base(edge={"default_source": "missing"}), "no source named 'missing'"),
        (base(edge={"https_port": 70000}), "not a TCP port"),
        (base(edge={"bind": "localhost:1"}), "not an IP address"),
        (base(cassandra={"keyspace": "x; DROP"}), "not a valid keyspace"),
        (base(cassandra={"ttl_seconds": 60}), "at least one day"),
        (base(bogus={}), "unknown key"),
        (base(processor={"operations": [{"name": "x", "call": "no colon"}]}), "module:function"),
        (base(processor={"operations": [{"name": "x", "call": "m:f", "run_when_stale": "yes"}]}), "true or false"),
        (base(processor={"retry": {"max_attempts": 0}}), "positive integer"),
        (base(processor={"retry": {"min_backoff_seconds": 5, "max_backoff_seconds": 1}}), "must not be less"),
        (base(processor={"retry": {"min_backoff_seconds": 0.001, "max_backoff_seconds": 86400}}), "24 delay"),
        (base(processor={"retry": {"jitter": True}}), "unknown key"),
        (base(cassandra={"consistency": "SERIAL"}), "must be one of"),
        (base(processor={"partitions": 101}), "between 1 and 100"),
        (base(delivery={"partitions": -1}), "between 0 and 100"),
        (base(delivery={"count": 2}), "delivery.partitions is 0"),
        (base(processor={"heartbeat_seconds": 0}), "between 1 and 3600"),
        (base(processor={"heartbeat_seconds": 2.5}), "between 1 and 3600"),
        (base(cassandra={"compress_payloads": "yes"}), "compress_payloads"),
        (base(cassandra={"batch_units": 0}), "batch_units"),
        (base(cassandra={"timer_slack_us": 0}), "timer_slack_us"),
        (base(cassandra={"timer_slack_us": 10_001}), "at most 10000"),
        (base(processor={"batch_linger_ms": -1}), "batch_linger_ms"),
        (base(processor={"batch_linger_ms": 1001}), "batch_linger_ms"),
        (base(delivery={"host_in_flight": 7}), "host_in_flight must be at least 8"),
        (base(delivery={"slot_wait_ms": 1001}), "slot_wait_ms"),
        (base(delivery={"slot_wait_ms": 500, "breaker_cooldown_seconds": 1}), "longer than twice"),
        (base(processor={"redelivery_delay_seconds": 0}), "between 2.5 and 60"),
        (
            base(sources=[{"name": "shop", "scheme": "stripe", "secrets": [{"env": "X", "generate": "whsec"}]}]),
            "with env it would be ignored",
        ),
        (base(delivery={"max_retry_after_seconds": 86_401}), r"max_retry_after_seconds: .*86400"),
        (base(delivery={"breaker_max_cooldown_seconds": 90_000}), r"breaker_max_cooldown_seconds: .*86400"),
        (base(processor={"operations": [{"name": "x", "call": "m:f", "sources": ["stirpe"]}]}), "no source named"),
        (base(processor={"operations": [{"name": "x", "call": "m:f", "event_types": []}]}), "runs for no event"),
        (base(rabbitmq={"host": "10.0.0.9"}), "runs its node on 127.0.0.1 only"),
        (base(cassandra={"hosts": ["10.0.0.9"]}), "runs its node on 127.0.0.1 only"),
        (base(rabbitmq={"url": "amqps://u:p@broker.internal/?no_verify_ssl=1"}), r"\(no_verify_ssl\).*takes none"),
        (base(rabbitmq={"url": "amqp://u:p@127.0.0.1/?heartbeat=0"}), r"\(heartbeat\).*takes none"),
        (base(rabbitmq={"url": "amqps://u:p@broker.internal/?cafile=/ca.pem"}), r"\(cafile\).*takes none"),
        (base(ingest={"confirm_timeout_seconds": 30.5}), "confirm_timeout_seconds"),
        (
            base(
                sources=[{**SHOP, "options": {"tolerance_seconds": 43_200}}],
                cassandra={"ttl_seconds": 86_400},
            ),
            r"tolerance_seconds 43200 is at least half of cassandra.ttl_seconds \(86400\)",
        ),
    ],
)
def test_unsafe_or_invalid_config_is_refused(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(raw, Path("/tmp/switchboard.toml"))


def test_a_tolerance_under_half_the_retention_is_taken() -> None:
    raw = base(sources=[{**SHOP, "options": {"tolerance_seconds": 43_199}}], cassandra={"ttl_seconds": 86_400})
    assert parse_config(raw, Path("/tmp/switchboard.toml")).sources[0].options["tolerance_seconds"] == 43_199


def test_secret_refs_resolve_without_exposing_the_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SB_TEST_SECRET", "whsec_topsecret")
    secret = SecretRef(env="SB_TEST_SECRET").resolve()
    assert secret.reveal() == "whsec_topsecret"
    assert "topsecret" not in repr(secret) and "topsecret" not in str(secret)
    with pytest.raises(ConfigError, match="SB_TEST_MISSING"):
        SecretRef(env="SB_TEST_MISSING").resolve()
    generated = SecretRef(file=tmp_path / "g.secret", generate="whsec").resolve()
    assert generated.reveal().startswith("whsec_")
    assert (tmp_path / "g.secret").stat().st_mode & 0o777 == 0o600
    assert SecretRef(file=tmp_path / "g.secret", generate="whsec").resolve() == generated  # kept, not rotated


def test_a_secret_of_more_than_one_line_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Read whole, such a file made a key that verified nothing: every request a 401 (found in review)."""
    noted = tmp_path / "noted.secret"
    noted.write_text("whsec_abc\n# rotated 2026-12-01\n")
    noted.chmod(0o600)
    with pytest.raises(ConfigError, match="more than one line") as caught:
        SecretRef(file=noted).resolve()
    assert "whsec_abc" not in str(caught.value)
    monkeypatch.setenv("SB_TEST_TWO", "a\nb")
    with pytest.raises(ConfigError, match="more than one line"):
        SecretRef(env="SB_TEST_TWO").resolve()
    (tmp_path / "trailing.secret").write_text("\n  whsec_abc  \n\n")
    (tmp_path / "trailing.secret").chmod(0o600)
    assert SecretRef(file=tmp_path / "trailing.secret").resolve().reveal() == "whsec_abc"


def test_retry_policy_parses() -> None:
    cfg = parse_config(
        base(processor={"retry": {"max_attempts": 3, "min_backoff_seconds": 0.5, "max_backoff_seconds": 2}}),
        Path("/tmp/switchboard.toml"),
    )
    assert cfg.processor.retry.max_attempts == 3
    assert cfg.processor.retry.levels_ms() == (500, 1000, 2000)
