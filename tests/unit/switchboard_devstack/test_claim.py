"""A stack's claims before it starts anything: one stack per data directory, and no planned port in use."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from switchboard.config import PlatformConfig, parse_config
from switchboard.errors import StackError
from switchboard_devstack.claim import check_free, lock_data_dir, ports_in_use, unlock
from switchboard_devstack.ports import free_port


def config(tmp_path: Path, **sections: dict[str, object]) -> PlatformConfig:
    raw: dict[str, object] = {
        "platform": {"data_dir": str(tmp_path / "var")},
        "sources": [{"name": "demo", "scheme": "github", "secrets": [{"env": "UNUSED_SECRET"}]}],
        **sections,
    }
    return parse_config(raw, tmp_path / "switchboard.toml")


def test_a_second_stack_on_the_same_data_directory_is_refused_until_the_first_lets_go(tmp_path: Path) -> None:
    first = lock_data_dir(tmp_path / "var")
    with pytest.raises(StackError, match="another stack runs on") as refused:
        lock_data_dir(tmp_path / "var")
    assert "pid " in str(refused.value)
    unlock(first)
    unlock(lock_data_dir(tmp_path / "var"))


def test_a_dead_holder_leaves_no_lock(tmp_path: Path) -> None:
    """The kernel drops the lock with the process that held it, however it died (here it exits holding it)."""
    code = f"import pathlib, switchboard_devstack.claim as c; c.lock_data_dir(pathlib.Path({str(tmp_path / 'var')!r}))"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[3])
    unlock(lock_data_dir(tmp_path / "var"))


def test_a_planned_port_something_listens_on_is_named_before_anything_starts(tmp_path: Path) -> None:
    port = free_port()
    cfg = config(tmp_path, query={"port": port})
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen()
        with pytest.raises(StackError, match=rf"in use already: .*127.0.0.1:{port} \(query.port\)"):
            check_free(cfg)
    assert all(x.key != "query.port" for x in ports_in_use(cfg))  # closed: free again
