from __future__ import annotations

import importlib
import tomllib

import pytest

from tests.stack_fixture import override_toml

TEXT = """
[processor]
count = 1
batch = 128

[processor.retry]
max_attempts = 3

[[sources]]
name = "shop"
"""


def test_a_key_is_replaced_in_its_own_table_only() -> None:
    out = tomllib.loads(override_toml(TEXT, ["processor.batch=16", "processor.retry.max_attempts = 5"]))
    assert out["processor"] == {"count": 1, "batch": 16, "retry": {"max_attempts": 5}}
    assert out["sources"] == [{"name": "shop"}]


def test_a_missing_key_or_table_is_added() -> None:
    out = tomllib.loads(override_toml(TEXT, ["processor.concurrency=2", "delivery.breaker_failures=7"]))
    assert out["processor"]["concurrency"] == 2
    assert out["delivery"] == {"breaker_failures": 7}


@pytest.mark.parametrize("item", ["processor", "batch=1", "processor.batch=", "=1", "processor.batch=[1,"])
def test_malformed_items_are_refused(item: str) -> None:
    with pytest.raises(ValueError):
        override_toml(TEXT, [item])


@pytest.mark.parametrize("module", ["bench.pipeline", "bench.delivery"])
def test_both_benchmarks_take_repeated_set_options(module: str) -> None:
    parse_args = importlib.import_module(module).parse_args
    args = parse_args(["--set", "processor.concurrency=2", "--set", "delivery.breaker_failures=7"])
    assert args.overrides == ["processor.concurrency=2", "delivery.breaker_failures=7"]
    assert parse_args([]).overrides == []
