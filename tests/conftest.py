from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from switchboard.config import PlatformConfig


@pytest.fixture(scope="session")
def stack_config(tmp_path_factory: pytest.TempPathFactory) -> PlatformConfig:
    from tests.stack_fixture import write_test_config

    return write_test_config(Path(tmp_path_factory.mktemp("stack")))


@pytest.fixture(scope="session")
def stack(stack_config: PlatformConfig) -> Iterator[object]:
    """The whole platform, started once per test session by the project's own launcher."""
    from switchboard_devstack.stack import Stack

    logging.basicConfig(level=logging.INFO)
    s = Stack(stack_config)
    s.up(timeout=240)
    try:
        yield s
    finally:
        s.down()
