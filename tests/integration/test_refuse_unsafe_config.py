"""Services refuse to start on unsafe configuration, naming the culprit (no component needed)."""

from __future__ import annotations

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
