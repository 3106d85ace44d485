"""Services refuse to start on unsafe configuration, naming the culprit (no component needed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("module", ["ingest_service", "processor_service", "query_service"])
def test_unknown_scheme_refuses_to_start(tmp_path: Path, module: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[[sources]]\nname = "shop"\nscheme = "unverified"\nsecrets = [{ env = "X" }]\n')
    out = subprocess.run(
        [sys.executable, "-m", module, "--config", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2
    assert "source 'shop'" in out.stderr and "refusing to start" in out.stderr


def test_missing_secret_refuses_ingest_naming_the_source(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[[sources]]\nname = "shop"\nscheme = "stripe"\nsecrets = [{ env = "SB_SURELY_UNSET_SECRET" }]\n')
    out = subprocess.run(
        [sys.executable, "-m", "ingest_service", "--config", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2
    assert "shop" in out.stderr and "SB_SURELY_UNSET_SECRET" in out.stderr


def test_two_sources_sharing_a_secret_refuse_ingest_without_showing_it(tmp_path: Path) -> None:
    """No scheme signs the source's name: a request signed for one source verified at the other and, keyed by
    that source, was a new event there (applied and delivered again). Found in review."""
    cfg = tmp_path / "bad.toml"
    cfg.write_text(
        '[[sources]]\nname = "orders"\nscheme = "github"\nsecrets = [{ env = "SB_TEST_SHARED" }]\n'
        '[[sources]]\nname = "products"\nscheme = "github"\n'
        'secrets = [{ env = "SB_TEST_OWN" }, { env = "SB_TEST_SHARED" }]\n'
    )
    shared, own = "s" * 40 + "shared-secret-value", "o" * 40 + "own-secret-value"
    env = {**os.environ, "SB_TEST_SHARED": shared, "SB_TEST_OWN": own}
    out = subprocess.run(
        [sys.executable, "-m", "ingest_service", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert out.returncode == 2
    assert "'orders' (secret #1) and 'products' (secret #2) share a signing secret" in out.stderr
    assert "refusing to start" in out.stderr and shared not in out.stderr + out.stdout
