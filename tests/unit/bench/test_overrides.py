from __future__ import annotations

import importlib
import shutil
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


def test_the_pipeline_bench_gives_its_paused_processors_a_heartbeat_that_outlasts_the_pause() -> None:
    from bench.pipeline import bench_stack_config, parse_args

    for argv, expected in (
        (["--ingest-seconds", "30"], 120),
        (["--ingest-seconds", "5"], 60),
        (["--ingest-seconds", "30", "--set", "processor.heartbeat_seconds=15"], 15),  # the user's --set wins
    ):
        args = parse_args(argv)
        root, cfg = bench_stack_config(args, paused_seconds=args.ingest_seconds)
        shutil.rmtree(root)
        assert cfg.processor.heartbeat_seconds == expected, argv


def test_the_delivery_bench_builds_its_stack_config_with_the_default_heartbeat() -> None:
    # bench.delivery pauses nothing and has no --ingest-seconds; its stack config once failed on that.
    from bench.delivery import parse_args
    from bench.pipeline import bench_stack_config
    from switchboard.config import ProcessorConfig

    root, cfg = bench_stack_config(parse_args(["--processors", "2", "--set", "delivery.breaker_failures=7"]))
    shutil.rmtree(root)
    assert cfg.processor.heartbeat_seconds == ProcessorConfig().heartbeat_seconds
    assert cfg.delivery.breaker_failures == 7


def test_the_drain_rate_between_10_and_90_percent_leaves_out_the_start_and_the_tail() -> None:
    from bench.pipeline import mid_rate

    # 1,000 events: none in the first 3 s (a stall), then 100/s for 9 s, then a slow tail of 100 over 10 s.
    times = [3.0 + i / 100 for i in range(900)] + [12.0 + i / 10 for i in range(100)]
    assert mid_rate(times) == 800 / (times[900] - times[100])  # 10% at 4.0 s, 90% at 12.0 s
    assert mid_rate(times) == 100.0
    assert mid_rate(times[:99]) is None
    assert mid_rate([5.0] * 200) is None  # no time passed
