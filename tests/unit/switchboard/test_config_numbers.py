"""Numbers in the configuration: finite, and within what the component that takes them accepts.

TOML has ``nan`` and ``inf``: a NaN timeout expires at once in asyncio (every operation fails, ingest answers
UNAVAILABLE to everything), an infinite one never does, and ``round(nan)`` crashes where a value is turned
into milliseconds (found in review)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from switchboard.config import parse_config
from switchboard.errors import ConfigError

SOURCES = '[[sources]]\nname = "shop"\nscheme = "stripe"\nsecrets = [{ env = "SHOP_SECRET" }]\n'
OPERATION = '[[processor.operations]]\nname = "x"\ncall = "m:f"\n'

# Every number the configuration reads as a float, by table.
FLOAT_KEYS = [
    ("ingest", "confirm_timeout_seconds"),
    ("control", "replay_max_range_hours"),
    ("control", "replay_rate_per_second"),
    ("control", "replay_stale_after_seconds"),
    ("delivery", "timeout_seconds"),
    ("delivery", "max_retry_after_seconds"),
    ("delivery", "breaker_cooldown_seconds"),
    ("delivery", "breaker_max_cooldown_seconds"),
    ("delivery", "secret_overlap_seconds"),
    ("processor", "redelivery_delay_seconds"),
    ("processor", "stats_interval_seconds"),
    ("processor.retry", "min_backoff_seconds"),
    ("processor.retry", "max_backoff_seconds"),
    ("metrics", "scrape_interval_seconds"),
    ("tracing", "sample_percent"),
    ("tracing", "keep_hours"),
]


def parse(toml: str) -> Any:
    return parse_config(tomllib.loads(SOURCES + toml), Path("/tmp/switchboard.toml"))


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize(("table", "key"), FLOAT_KEYS)
def test_a_number_that_is_not_finite_is_refused_naming_its_key(table: str, key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{table}\.{key}: "):
        parse(f"[{table}]\n{key} = {value}\n")


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_an_operations_timeout_that_is_not_finite_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match=r"processor\.operations\[0\]\.timeout_seconds"):
        parse(f"{OPERATION}timeout_seconds = {value}\n")


def test_finite_values_still_parse() -> None:
    cfg = parse(
        "[ingest]\nconfirm_timeout_seconds = 0.5\n[metrics]\nscrape_interval_seconds = 2\n"
        "[processor.retry]\nmin_backoff_seconds = 0.25\nmax_backoff_seconds = 1.0\n"
    )
    assert cfg.ingest.confirm_timeout_seconds == 0.5 and cfg.metrics.scrape_interval_seconds == 2.0
    assert cfg.processor.retry.levels_ms() == (250, 500, 1000)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        # basic.qos carries the prefetch count in 16 bits.
        ("[processor]\nprefetch = 65536\n", r"processor\.prefetch: .*between 1 and 65535"),
        ("[delivery]\nprefetch = 65536\n", r"delivery\.prefetch: .*between 1 and 65535"),
        # RabbitMQ takes no delay queue TTL above 2**32 - 1 ms.
        (
            "[processor.retry]\nmin_backoff_seconds = 600\nmax_backoff_seconds = 4294968\n",
            r"processor\.retry\.max_backoff_seconds: must be at most 4\.29497e\+06",
        ),
        # A subscription without a timeout of its own takes this one, and is refused one outside 1..60 s.
        ("[delivery]\ntimeout_seconds = 61\n", r"delivery\.timeout_seconds: .*between 1 and 60"),
        ("[delivery]\ntimeout_seconds = 0.5\n", r"delivery\.timeout_seconds: .*between 1 and 60"),
        # A rotation without an overlap of its own takes this one, and is refused one over 30 days.
        ("[delivery]\nsecret_overlap_seconds = 2592001\n", r"delivery\.secret_overlap_seconds: must be at most"),
        # Envoy's token bucket holds at most 2**32 - 1 tokens.
        (
            "[edge]\nper_ip_rate_limit = { requests = 4294967296 }\n",
            r"edge\.per_ip_rate_limit\.requests: .*between 1 and 4294967295",
        ),
        # Its bucket's fill interval (per_seconds for one request): Envoy refused 10**12 s and did not start.
        (
            "[edge]\nper_ip_rate_limit = { requests = 1, per_seconds = 1000000000000 }\n",
            r"edge\.per_ip_rate_limit\.per_seconds: .*between 1 and 604800",
        ),
    ],
)
def test_a_number_beyond_what_its_component_takes_is_refused(toml: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(toml)


def test_the_largest_values_components_take_parse() -> None:
    cfg = parse(
        "[processor]\nprefetch = 65535\n[delivery]\nprefetch = 65535\ntimeout_seconds = 60\n"
        "secret_overlap_seconds = 2592000\n"
        "[processor.retry]\nmin_backoff_seconds = 600\nmax_backoff_seconds = 4294967.295\n"
    )
    assert cfg.processor.prefetch == cfg.delivery.prefetch == 65535
    assert cfg.processor.retry.levels_ms()[-1] == 2**32 - 1
