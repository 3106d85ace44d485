"""bench/grpc_server.py runs each server variant in a process of its own and reports its CPU per call."""

from __future__ import annotations

import re

import pytest

from bench import grpc_server


def test_every_variant_serves_and_is_measured(capsys: pytest.CaptureFixture[str]) -> None:
    variants = ",".join(grpc_server.VARIANTS)
    assert grpc_server.main(["--variants", variants, "--calls", "200", "--concurrency", "4", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    for v in grpc_server.VARIANTS:
        m = re.search(rf"^{re.escape(v)} +(\d+) µs of server CPU per call, +(\d+) calls/s$", out, re.M)
        assert m is not None, out
        assert int(m.group(2)) > 0  # the calls were answered


def test_unknown_variants_are_refused() -> None:
    with pytest.raises(SystemExit):
        grpc_server.main(["--variants", "aio,threads"])
