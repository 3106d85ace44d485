from __future__ import annotations

from switchboard.store.schema import compaction


def test_compaction_follows_the_server_version() -> None:
    assert "SizeTiered" in compaction("2.1.0")
    assert "TimeWindow" in compaction("4.1.3")
