from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from switchboard.config import PlatformConfig
from switchboard_devstack.stack import Stack
from tests.stack_fixture import write_test_config


def run_stack(cfg: PlatformConfig) -> Iterator[Stack]:
    """The whole platform on ``cfg``, started by the project's own launcher and stopped afterwards."""
    logging.basicConfig(level=logging.INFO)
    s = Stack(cfg)
    s.up(timeout=240)
    try:
        yield s
    finally:
        s.down()


@pytest.fixture(scope="session")
def stack_config(tmp_path_factory: pytest.TempPathFactory) -> PlatformConfig:
    return write_test_config(Path(tmp_path_factory.mktemp("stack")))


@pytest.fixture(scope="session")
def stack(stack_config: PlatformConfig) -> Iterator[Stack]:
    """The platform shared by the end-to-end tests (started once per session). Tests that kill or stop its
    infrastructure use ``own_stack`` instead."""
    yield from run_stack(stack_config)


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A platform of the test module's own, for destructive tests (SIGKILL of the broker, a stopped store):
    whatever they break, no other test sees it, whatever order the tests run in."""
    yield from run_stack(write_test_config(Path(tmp_path_factory.mktemp("own-stack"))))
