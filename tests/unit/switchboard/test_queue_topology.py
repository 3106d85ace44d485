from __future__ import annotations

import dataclasses
import random

import pytest

from switchboard.backoff import Backoff, jittered
from switchboard.config import RetryConfig, load_config
from switchboard.delivery.policy import DEFAULT_RETRY_DELAYS
from switchboard.queue import Topology
from switchboard.streams import SUBSCRIPTION_HEADER, deliveries_topology, events_topology
from switchboard_devstack.paths import DevPaths


def test_retry_levels_double_up_to_the_cap_and_jitter_stays_within_the_level() -> None:
    retry = RetryConfig(max_attempts=10, min_backoff_seconds=1, max_backoff_seconds=20)
    assert retry.levels_ms() == (1000, 2000, 4000, 8000, 16000, 20000)
    topology = Topology("sb", "events", retry.levels_ms())
    assert [topology.level_for_attempt(a) for a in (1, 2, 5, 6, 9)] == [1000, 2000, 16000, 20000, 20000]
    assert RetryConfig(min_backoff_seconds=0.25, max_backoff_seconds=0.25).levels_ms() == (250,)
    rng = random.Random(7)
    delays = [jittered(topology.level_for_attempt(3), rng) for _ in range(200)]
    assert all(2000 <= d <= 4000 for d in delays)
    assert len({round(d) for d in delays}) > 50  # jittered, not one fixed delay


def test_a_handler_delay_goes_to_the_shortest_level_that_holds_it() -> None:
    topology = Topology("sb", "deliveries", (5_000, 300_000, 1_800_000))
    assert [topology.level_for_delay(d) for d in (1, 5_000, 5_001, 299_999, 10**9)] == [
        5_000,
        5_000,
        300_000,
        300_000,
        1_800_000,
    ]
    with pytest.raises(ValueError, match="no delay queues"):
        Topology("sb", "events").level_for_delay(1)


def test_names_derive_from_the_stream() -> None:
    t = Topology("sb", "deliveries", (200,))
    assert (t.exchange, t.work_queues, t.retry_exchange, t.dead_exchange, t.dead_queue) == (
        "sb.deliveries",
        ["sb.deliveries"],
        "sb.deliveries.retry",
        "sb.deliveries.dead",
        "sb.deliveries.dead",
    )
    assert t.queues() == ["sb.deliveries", "sb.deliveries.retry.200ms", "sb.deliveries.dead"]
    assert t.retry_queue_arguments(200)["x-dead-letter-exchange"] == "sb.deliveries"
    assert "x-single-active-consumer" not in t.work_queue_arguments()


def test_a_partitioned_stream_has_zero_padded_single_active_partitions_in_name_order() -> None:
    t = Topology("sb", "events", (200,), partitions=12, single_active=True)
    assert t.work_queues[:3] == ["sb.events.p00", "sb.events.p01", "sb.events.p02"]
    assert t.work_queues == sorted(t.work_queues) and len(t.work_queues) == 12
    assert t.hash_exchange == "sb.events.hash"
    assert t.work_queue_arguments()["x-single-active-consumer"] is True
    # A retried message goes back through the stream's exchange, hence to its own partition.
    assert t.retry_queue_arguments(200)["x-dead-letter-exchange"] == t.exchange


def test_backoff_doubles_up_to_its_cap() -> None:
    delays = Backoff(0.2, 1.0).delays()
    assert [next(delays) for _ in range(5)] == [0.2, 0.4, 0.8, 1.0, 1.0]


def test_the_deliveries_stream_is_partitioned_by_subscription_when_asked_and_the_events_stream_by_message_id() -> None:
    cfg = load_config(DevPaths.default().default_config)
    assert cfg.delivery.partitions == 0
    one_queue = deliveries_topology(cfg)
    assert one_queue.work_queues == ["switchboard.deliveries"] and not one_queue.partitioned
    assert "x-single-active-consumer" not in one_queue.work_queue_arguments()
    for n in (1, 4):
        deliveries = deliveries_topology(
            dataclasses.replace(cfg, delivery=dataclasses.replace(cfg.delivery, partitions=n))
        )
        assert deliveries.partitioned and len(deliveries.work_queues) == n  # one partition: the hash layout too
        assert deliveries.work_queues[0] == "switchboard.deliveries.p00"
        assert deliveries.hash_exchange_arguments() == {"hash-header": SUBSCRIPTION_HEADER}
        assert deliveries.work_queue_arguments()["x-single-active-consumer"] is True
    assert events_topology(cfg).hash_exchange_arguments() == {"hash-property": "message_id"}


def test_no_delivery_delay_waits_more_than_two_and_a_half_times_itself_in_its_delay_queue() -> None:
    """A delay waits in the shortest level that holds it, behind at most that level's TTL (messages expire
    only at a queue's head): every delay of 1 s to 24 h has a level under 2.5 times it, and the default
    schedule's delays are levels themselves (they wait exactly their time)."""
    deliveries = deliveries_topology(load_config(DevPaths.default().default_config))
    for delay_ms in [*range(1_000, 120_000, 250), *range(120_000, 86_400_001, 10_000)]:
        assert deliveries.level_for_delay(delay_ms) <= 2.5 * delay_ms, delay_ms
    assert {round(d * 1000) for d in DEFAULT_RETRY_DELAYS} <= set(deliveries.retry_levels_ms)
    assert deliveries.retry_levels_ms[-1] == 86_400_000  # the longest a schedule may ask for
