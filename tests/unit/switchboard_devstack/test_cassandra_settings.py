"""The local Cassandra node's yaml: batch commit log with a 1 ms window, and no window that makes 2.1 spin."""

from __future__ import annotations

from pathlib import Path

import pytest

from switchboard_devstack import CassandraNode


def test_the_commit_log_syncs_in_batch_mode_every_millisecond_by_default(tmp_path: Path) -> None:
    cfg = CassandraNode(tmp_path, 9042, 7000, java="java").settings()

    assert cfg["commitlog_sync"] == "batch"
    assert cfg["commitlog_sync_batch_window_in_ms"] == 1
    assert "commitlog_sync_period_in_ms" not in cfg  # 2.1 refuses both


def test_a_longer_window_is_written_as_given(tmp_path: Path) -> None:
    cfg = CassandraNode(tmp_path, 9042, 7000, java="java", commitlog_window_ms=5).settings()

    assert cfg["commitlog_sync_batch_window_in_ms"] == 5


def test_periodic_mode_keeps_the_bundles_period_and_no_window(tmp_path: Path) -> None:
    cfg = CassandraNode(tmp_path, 9042, 7000, java="java", commitlog_batch=False).settings()

    assert cfg["commitlog_sync"] == "periodic"
    assert "commitlog_sync_batch_window_in_ms" not in cfg


@pytest.mark.parametrize("window", [0, -1])
def test_a_window_under_one_millisecond_is_refused(tmp_path: Path, window: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        CassandraNode(tmp_path, 9042, 7000, java="java", commitlog_window_ms=window)
