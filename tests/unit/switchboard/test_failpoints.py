from __future__ import annotations

import logging

import pytest

from switchboard.runtime.failpoints import ENV, armed_names


def test_nothing_is_armed_without_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    assert armed_names({"exit_after_disable"}, "delivery worker") == set()


def test_only_this_services_names_are_armed_and_the_others_are_reported(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(ENV, " exit_after_disable , exit_after_forward,,typo ")
    with caplog.at_level(logging.WARNING):
        assert armed_names({"exit_after_disable"}, "delivery worker") == {"exit_after_disable"}
    messages = [r.getMessage() for r in caplog.records]
    assert "failpoints armed: this delivery worker will crash on purpose" in messages
    ignored = next(r for r in caplog.records if r.getMessage() == "unknown failpoints ignored")
    assert ignored.failpoints == ["exit_after_forward", "typo"]  # type: ignore[attr-defined]
