"""The keyspace's recorded index bucket size (``switchboard.store.session.check_layout``) against a session that
answers as Cassandra 2.1 does: a lightweight transaction not applied returns the row it found, under the
driver's names (``[applied]`` becomes ``applied``). The read-first and mismatch paths run on the real store in
tests/e2e/test_store_session.py; the claim lost to another process is a race it cannot stage."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from cassandra.query import named_tuple_factory

from switchboard.config import CassandraConfig
from switchboard.errors import ConfigError
from switchboard.store.session import check_layout

GET, CLAIM = object(), object()
STATEMENTS: Any = SimpleNamespace(events=SimpleNamespace(layout_get=GET, layout_claim=CLAIM))


class Result:
    def __init__(self, row: Any) -> None:
        self.row = row

    def one(self) -> Any:
        return self.row


class Session:
    """No row recorded when read; the claim answers ``claim``."""

    def __init__(self, claim: Any) -> None:
        self.claim = claim
        self.sent: list[tuple[object, tuple[str, ...]]] = []

    def execute(self, statement: object, params: tuple[str, ...]) -> Result:
        self.sent.append((statement, params))
        return Result(None if statement is GET else self.claim)


def lost_to(value: str) -> Any:
    return named_tuple_factory(["[applied]", "name", "value"], [(False, "bucket_seconds", value)])[0]


def test_the_first_process_records_its_size() -> None:
    session = Session(named_tuple_factory(["[applied]"], [(True,)])[0])
    check_layout(session, STATEMENTS, CassandraConfig(bucket_seconds=600))
    assert session.sent == [(GET, ("bucket_seconds",)), (CLAIM, ("bucket_seconds", "600"))]


def test_a_claim_lost_to_a_process_with_the_same_size_starts() -> None:
    session = Session(lost_to("600"))
    check_layout(session, STATEMENTS, CassandraConfig(bucket_seconds=600))
    assert [s for s, _ in session.sent] == [GET, CLAIM]


def test_a_claim_lost_to_a_process_with_another_size_refuses_to_start() -> None:
    session = Session(lost_to("3600"))
    with pytest.raises(ConfigError, match=r"^cassandra\.bucket_seconds: 600, but keyspace .* buckets of 3600 s"):
        check_layout(session, STATEMENTS, CassandraConfig(bucket_seconds=600))
