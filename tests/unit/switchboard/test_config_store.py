"""``[cassandra]``: a TTL Cassandra stores, and a heap the JVM takes, checked when the configuration loads (a
TTL over 20 years failed every write; a heap of "0" passed, and a bad one was found only by the local stack's
Cassandra node, after RabbitMQ had started: found in review)."""

from __future__ import annotations

from pathlib import Path

import pytest

from switchboard.config import parse_config
from switchboard.config.store import MAX_EXPIRY_UNIX, MAX_TTL_SECONDS, check_heap, check_ttl, parse_cassandra
from switchboard.errors import ConfigError
from switchboard.store.schema import replication
from switchboard_devstack import CassandraNode

SOURCES = [{"name": "shop", "scheme": "stripe", "secrets": [{"env": "SHOP_SECRET"}]}]


def parse(**cassandra: object) -> object:
    return parse_config({"sources": SOURCES, "cassandra": cassandra}, Path("/tmp/switchboard.toml"))


def test_a_ttl_over_twenty_years_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"cassandra\.ttl_seconds: at most 630720000"):
        parse(ttl_seconds=MAX_TTL_SECONDS + 1)


def test_a_ttl_that_expires_rows_after_2038_is_refused() -> None:
    # From 2026 on, twelve years and a half reach past 2038-01-19.
    with pytest.raises(ConfigError, match=r"cassandra\.ttl_seconds: .*2038-01-19"):
        parse(ttl_seconds=400_000_000)


def test_the_2038_limit_counts_from_now() -> None:
    check_ttl(86_400, now=MAX_EXPIRY_UNIX - 86_400)
    with pytest.raises(ConfigError, match="2038-01-19"):
        check_ttl(86_400, now=MAX_EXPIRY_UNIX - 86_399)


def test_a_ttl_of_years_that_ends_before_2038_parses() -> None:
    assert parse(ttl_seconds=5 * 365 * 86_400).cassandra.ttl_seconds == 157_680_000  # type: ignore[attr-defined]


# The last: a fullwidth digit one (a Unicode digit to int(), not to the JVM).
@pytest.mark.parametrize("heap", ["0", "0g", "2m", "2048k", "1025", "1.5g", "1 g", "1t", "", "-1g", "\uff11g"])
def test_a_heap_the_jvm_does_not_take_is_refused_at_load(heap: str) -> None:
    with pytest.raises(ConfigError, match=r"cassandra\.heap"):
        parse(heap=heap)


@pytest.mark.parametrize("heap", ["512m", "1g", "768M", "3m", "4096k", "3145728"])
def test_heaps_the_jvm_takes_parse(heap: str) -> None:
    assert check_heap(heap) == heap
    assert parse(heap=heap).cassandra.heap == heap  # type: ignore[attr-defined]


@pytest.mark.parametrize("heap", ["0", "1x"])
def test_the_local_node_checks_its_heap_the_same_way(tmp_path: Path, heap: str) -> None:
    with pytest.raises(ConfigError, match=r"cassandra\.heap"):
        CassandraNode(tmp_path, 9042, 7000, java="java", heap=heap)


def test_a_cluster_keyspace_is_created_per_datacentre_and_local_consistency_needs_it() -> None:
    """The keyspace was always SimpleStrategy (replicas by ring order, racks ignored; over two datacentres,
    replication_factor replicas in all): a LOCAL_QUORUM commit acknowledged by two replicas in one rack was lost
    with that rack (found in review). cassandra.datacenters creates it per datacentre; a LOCAL_ consistency on a
    cluster without it is refused."""
    cluster = {"managed": False, "hosts": ["10.0.0.1"], "consistency": "LOCAL_QUORUM"}
    with pytest.raises(ConfigError, match=r"a LOCAL_ level on a cluster needs cassandra\.datacenters"):
        parse_cassandra(cluster)
    cfg = parse_cassandra({**cluster, "datacenters": {"eu-west": 3, "us_east": 3}})
    assert replication(cfg) == "{'class': 'NetworkTopologyStrategy', 'eu-west': 3, 'us_east': 3}"
    assert replication(parse_cassandra({})) == "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    for bad in ({"dc'1": 3}, {"dc1": 0}, {"dc1": True}, ["dc1"]):
        with pytest.raises(ConfigError, match=r"cassandra\.datacenters"):
            parse_cassandra({"datacenters": bad})


def test_datacenters_are_for_a_cluster_not_the_managed_node() -> None:
    """The managed node's datacentre is "datacenter1": a keyspace created for { dc1 = 3 } there had no replica at
    all, every statement unavailable (found in review)."""
    with pytest.raises(ConfigError, match=r"cassandra\.datacenters: for a cluster"):
        parse_cassandra({"datacenters": {"dc1": 3}})
