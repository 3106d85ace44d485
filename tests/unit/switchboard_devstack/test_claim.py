"""A stack's claims before it starts anything: one stack per data directory, no planned port in use, no source
secret ingest would refuse; and the data directory's lock, which every component inherits until it is stopped."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from switchboard.config import PlatformConfig, parse_config
from switchboard.errors import ConfigError, StackError
from switchboard_devstack.claim import check_free, lock_data_dir, ports_in_use, unlock
from switchboard_devstack.ports import free_port
from switchboard_devstack.process import ManagedProcess
from switchboard_devstack.stack import Stack
from tests.stack_fixture import write_test_config

REPO = Path(__file__).parents[3]


def raw_config(tmp_path: Path, **sections: dict[str, object]) -> dict[str, object]:
    return {
        "platform": {"data_dir": str(tmp_path / "var")},
        "sources": [{"name": "demo", "scheme": "github", "secrets": [{"env": "UNUSED_SECRET"}]}],
        **sections,
    }


def config(tmp_path: Path, **sections: dict[str, object]) -> PlatformConfig:
    return parse_config(raw_config(tmp_path, **sections), tmp_path / "switchboard.toml")


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
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    unlock(lock_data_dir(tmp_path / "var"))


# A launcher as `stack up` is one, with a cheap component: it takes the lock as Stack.up does first, starts the
# component through Stack._start, prints its pid and waits to be killed.
LAUNCHER = """
import json, sys, time
from pathlib import Path
from switchboard.config import parse_config
from switchboard_devstack.claim import lock_data_dir
from switchboard_devstack.process import ManagedProcess
from switchboard_devstack.stack import Stack

stack = Stack(parse_config(json.loads(sys.argv[1]), Path(sys.argv[2])))
stack._lock = lock_data_dir(stack.data_dir)
stack._start(ManagedProcess("component", stack.log_dir, ["sleep", "300"]))
print(stack.started[0].pid, flush=True)
time.sleep(300)
"""


def test_the_components_of_a_killed_launcher_hold_the_lock_until_the_last_one_exits(tmp_path: Path) -> None:
    """A launcher SIGKILLed (or OOM-killed) runs no cleanup and its components, in sessions of their own, keep
    running: the lock used to go with the launcher, and a second stack started a second Cassandra on the files
    of an orphaned one that still replayed its commit log."""
    argv = [sys.executable, "-c", LAUNCHER, json.dumps(raw_config(tmp_path)), str(tmp_path / "switchboard.toml")]
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'gen'}"}
    launcher = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    assert launcher.stdout is not None
    component = int(launcher.stdout.readline())
    try:
        launcher.kill()
        launcher.wait()
        with pytest.raises(StackError) as refused:
            lock_data_dir(tmp_path / "var")
        message = str(refused.value)
        assert f"components of an earlier stack on {tmp_path / 'var'} still run" in message
        assert f"its launcher, pid {launcher.pid}, is gone" in message
        assert f"process group {component}: {component} sleep" in message
        assert f"kill -- -{component}`" in message
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(component, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while True:  # the kernel drops the lock once the component has exited (a zombie holds no descriptor)
        try:
            unlock(lock_data_dir(tmp_path / "var"))
            break
        except StackError:
            assert time.monotonic() < deadline, "the lock outlived its last holder"
            time.sleep(0.05)


def test_a_planned_port_something_listens_on_is_named_before_anything_starts(tmp_path: Path) -> None:
    port = free_port()
    cfg = config(tmp_path, query={"port": port})
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen()
        with pytest.raises(StackError, match=rf"in use already: .*127.0.0.1:{port} \(query.port\)"):
            check_free(cfg)
    assert all(x.key != "query.port" for x in ports_in_use(cfg))  # closed: free again


def test_a_source_secret_ingest_would_refuse_stops_the_stack_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``stack up`` checks every source's verifier as ingest does at start: a secret too short to keep forged
    webhooks out was found only when ingest exited, after Cassandra and RabbitMQ had been started for it."""
    cfg = write_test_config(tmp_path)
    (tmp_path / "hmac.secret").write_text("short-secret\n")
    started: list[str] = []
    monkeypatch.setattr(Stack, "_start", lambda self, proc: started.append(proc.name))
    with pytest.raises(ConfigError, match="too short"):
        Stack(cfg).up(timeout=30)
    assert started == []
    unlock(lock_data_dir(cfg.data_dir))  # and the data directory is let go


def test_an_edge_key_others_may_write_or_a_secret_two_sources_share_stops_the_stack_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The edge's TLS key was taken whatever its mode (a webhook secret with the same mode is refused); and a
    secret two sources share, which ingest refuses at start, was found only once ingest exited."""
    started: list[str] = []
    monkeypatch.setattr(Stack, "_start", lambda self, proc: started.append(proc.name))
    cert, key = tmp_path / "edge.crt", tmp_path / "edge.key"
    cert.write_text("cert")
    key.write_text("key")
    os.chmod(key, 0o664)
    cfg = write_test_config(tmp_path / "a", overrides=[f'edge.tls_cert="{cert}"', f'edge.tls_key="{key}"'])
    with pytest.raises(ConfigError, match=r"edge TLS key .*edge\.key is writable by its group or others"):
        Stack(cfg).up(timeout=30)
    unlock(lock_data_dir(cfg.data_dir))
    cfg = write_test_config(tmp_path / "b")
    (tmp_path / "b" / "hmac.secret").write_text((tmp_path / "b" / "gh.secret").read_text())
    with pytest.raises(ConfigError, match=r"'generic' .* and 'gh' .* share a signing secret"):
        Stack(cfg).up(timeout=30)
    assert started == []
    unlock(lock_data_dir(cfg.data_dir))


def test_a_stopped_component_forgets_the_lock_it_was_given(tmp_path: Path) -> None:
    """``down`` closes the lock's descriptor: a component started again later (the same object) must not pass
    that number on, which by then may be any file the launcher opened since."""
    stack = Stack(config(tmp_path))
    stack._lock = lock_data_dir(stack.data_dir)
    stack.log_dir.mkdir(parents=True, exist_ok=True)
    component = ManagedProcess("component", stack.log_dir, ["sleep", "300"])
    stack._start(component)
    assert component.pass_fds == (stack._lock,)
    stack.down()
    assert not component.pass_fds and stack.started == [] and stack._lock is None
    unlock(lock_data_dir(stack.data_dir))
