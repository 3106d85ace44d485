"""The managed RabbitMQ node's Erlang cookie is written whole or not at all (create_new), and an empty one left
by a start that crashed before (it was created, then written) is replaced (found in review)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from switchboard_devstack.rabbitmq import RabbitNode
from tests.unit.switchboard.test_secret_files import Crash, crash_on_write


def node(tmp_path: Path) -> RabbitNode:
    return RabbitNode(tmp_path / "rabbitmq", 5999, nodename="sbcookie", dist_port=25999, prometheus_port=15999)


def test_the_cookie_is_the_owners_and_kept_across_starts(tmp_path: Path) -> None:
    n = node(tmp_path)
    n.prepare()
    cookie = n.cookie_file.read_text()
    assert len(cookie) == 32 and stat.S_IMODE(n.cookie_file.stat().st_mode) == 0o400
    n.prepare()
    assert n.cookie_file.read_text() == cookie


def test_an_empty_cookie_is_replaced(tmp_path: Path) -> None:
    n = node(tmp_path)
    n.base_dir.mkdir(parents=True)
    n.cookie_file.touch(mode=0o400)
    n.prepare()
    assert len(n.cookie_file.read_text()) == 32


def test_a_crash_while_writing_the_cookie_leaves_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    n = node(tmp_path)
    with monkeypatch.context() as m:
        crash_on_write(m)
        with pytest.raises(Crash):
            n.prepare()
    assert not n.cookie_file.exists()
