"""Rows as named tuples without a class per result (``switchboard.store.session.rows_of``)."""

from __future__ import annotations

from cassandra.query import named_tuple_factory

from switchboard.store.session import rows_of


def test_rows_are_the_drivers_named_tuples_with_one_class_per_column_list() -> None:
    cols = ["source", "event_id", "status", "attempts"]
    first = rows_of(cols, [("shop", "evt_1", "PROCESSED", 1), ("shop", "evt_2", "RETRYING", 2)])
    assert first == named_tuple_factory(cols, [("shop", "evt_1", "PROCESSED", 1), ("shop", "evt_2", "RETRYING", 2)])
    assert (first[1].event_id, first[1].attempts) == ("evt_2", 2)
    second = rows_of(list(cols), [("shop", "evt_3", "STALE", 1)])
    assert type(second[0]) is type(first[0])  # built once, reused by the next result with these columns
    assert type(rows_of(["source", "event_id"], [("shop", "evt_1")])[0]) is not type(first[0])
    assert rows_of(cols, []) == []


def test_column_names_that_are_not_identifiers_are_cleaned_as_the_driver_does() -> None:
    cols = ["[applied]", "count", "a b", "1x"]
    ours = rows_of(cols, [(True, 2, 3, 4)])[0]
    assert ours._fields == named_tuple_factory(cols, [(True, 2, 3, 4)])[0]._fields
    assert (ours.applied, ours.count) == (True, 2)
