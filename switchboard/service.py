"""The entry point every service shares: parse ``--config``, refuse unsafe configuration with exit code 2,
set up logging, run the service's coroutine on the event loop and map errors to exit codes."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from switchboard import runtime
from switchboard.config import PlatformConfig, load_config
from switchboard.errors import ConfigError, SwitchboardError
from switchboard.logs import setup_logging

log = logging.getLogger(__name__)

Runner = Callable[[PlatformConfig, argparse.Namespace], Coroutine[Any, Any, None]]


def service_main(
    name: str,
    run: Runner,
    argv: list[str] | None = None,
    *,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> int:
    parser = argparse.ArgumentParser(prog=f"{name}_service")
    parser.add_argument("--config", default=None, help="configuration file (default: switchboard.toml)")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"{name}: refusing to start: {exc}", file=sys.stderr)
        return 2
    setup_logging(name, cfg.log_level)
    try:
        runtime.run(run(cfg, args))
    except ConfigError as exc:
        log.error("refusing to start", extra={"error": exc.message})
        print(f"{name}: refusing to start: {exc}", file=sys.stderr)
        return 2
    except SwitchboardError as exc:
        log.error("stopped", extra={"error": exc.message, "reason": exc.reason})
        return 1
    return 0
