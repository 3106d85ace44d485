"""``switchboard.runtime.grpc_env``: the gRPC experiments every gRPC service sets before grpc is imported."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from switchboard.runtime import grpc_env


@pytest.fixture
def grpc_not_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    """This test process has grpc imported, and ``apply()`` refuses then: hide it for the test."""
    monkeypatch.delitem(sys.modules, "grpc", raising=False)


@pytest.mark.usefixtures("grpc_not_imported")
def test_sets_the_experiments_when_unset() -> None:
    environ: dict[str, str] = {}
    grpc_env.apply(environ)
    assert environ == {"GRPC_EXPERIMENTS": "-event_engine_listener"}


@pytest.mark.usefixtures("grpc_not_imported")
def test_keeps_an_operators_value() -> None:
    environ = {"GRPC_EXPERIMENTS": "event_engine_listener"}
    grpc_env.apply(environ)
    assert environ == {"GRPC_EXPERIMENTS": "event_engine_listener"}


def test_refuses_once_grpc_is_imported() -> None:
    import grpc  # noqa: F401

    with pytest.raises(RuntimeError, match="before grpc is imported"):
        grpc_env.apply({})


@pytest.mark.parametrize("service", ["ingest_service", "query_service", "control_service"])
def test_every_grpc_service_entry_point_applies_it_before_grpc(service: str) -> None:
    """Runs the service's ``__main__`` with ``--help`` (argparse exits before anything starts) in a fresh
    interpreter without ``GRPC_EXPERIMENTS``: the variable is set, and ``apply()`` did not raise (grpc was not
    imported yet when it ran)."""
    script = textwrap.dedent(
        f"""
        import os, runpy, sys
        sys.argv = ["{service}", "--help"]
        try:
            runpy.run_module("{service}", run_name="__main__")
        except SystemExit as exc:
            assert exc.code in (0, None), exc.code
        print("GRPC_EXPERIMENTS=" + os.environ.get("GRPC_EXPERIMENTS", "<unset>"))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "GRPC_EXPERIMENTS=-event_engine_listener"
