"""``check_replication``: a keyspace that does not replicate as ``cassandra.datacenters`` says refuses the
start (it is created once, ``IF NOT EXISTS``: a setting added later changed nothing). The driver's own
strategy objects stand for the cluster's metadata."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from cassandra.metadata import NetworkTopologyStrategy, SimpleStrategy

from switchboard.config import CassandraConfig
from switchboard.errors import ConfigError
from switchboard.store.session import check_replication


def session(strategy: Any) -> Any:
    keyspace = SimpleNamespace(replication_strategy=strategy)
    return SimpleNamespace(cluster=SimpleNamespace(metadata=SimpleNamespace(keyspaces={"switchboard": keyspace})))


def test_a_keyspace_created_rack_blind_refuses_datacenters_added_later_and_names_the_alter() -> None:
    """An operator who added datacenters to a running SimpleStrategy keyspace started, and replicas stayed
    rack-blind (found in review)."""
    cfg = CassandraConfig(managed=False, datacenters=(("dc1", 3),))
    with pytest.raises(ConfigError) as refused:
        check_replication(session(SimpleStrategy({"replication_factor": "3"})), cfg)
    message = refused.value.message
    assert "ALTER KEYSPACE switchboard WITH replication = {'class': 'NetworkTopologyStrategy', 'dc1': 3}" in message
    assert "nodetool repair -full" in message
    with pytest.raises(ConfigError, match="replicates as"):
        check_replication(session(NetworkTopologyStrategy({"dc1": "2"})), cfg)


def test_a_matching_keyspace_starts_and_a_per_datacentre_one_needs_the_setting() -> None:
    check_replication(session(NetworkTopologyStrategy({"dc1": "3"})), CassandraConfig(datacenters=(("dc1", 3),)))
    check_replication(session(SimpleStrategy({"replication_factor": "1"})), CassandraConfig())
    with pytest.raises(ConfigError, match=r"set cassandra\.datacenters to match"):
        check_replication(session(NetworkTopologyStrategy({"dc1": "3"})), CassandraConfig())


@pytest.mark.parametrize(("consistency", "serial"), [("LOCAL_QUORUM", "LOCAL_SERIAL"), ("ONE", "SERIAL")])
def test_lightweight_transactions_read_in_the_local_datacentre_with_a_local_level(
    consistency: str, serial: str
) -> None:
    """Every conditional statement ran its Paxos read at SERIAL, a quorum of every datacentre, which can miss a
    commit written at LOCAL_QUORUM in one (a redrive's reset then turned a processed event back into RETRYING),
    and fails with a datacentre down (found in review)."""
    from cassandra import ConsistencyLevel

    from switchboard.store.statements import Statements

    class Preparing:
        def prepare(self, text: str) -> Any:
            return SimpleNamespace(text=text)

    statements = Statements.prepare(Preparing(), CassandraConfig(consistency=consistency))
    reset = statements.events.reset_attempts_if
    assert " IF " in reset.text and reset.serial_consistency_level == getattr(ConsistencyLevel, serial)
