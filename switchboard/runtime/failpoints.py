"""Failpoints: a process crashes on purpose at a chosen step, for the fault tests of the window between two
steps. Armed only by the environment (``SWITCHBOARD_FAILPOINTS``, comma-separated names); each service defines
its own (``processor_service.failpoints``, ``delivery_service.failpoints``) and logs a warning at start when
one is armed. Never set it outside tests.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection

log = logging.getLogger(__name__)

ENV = "SWITCHBOARD_FAILPOINTS"


def armed_names(known: Collection[str], service: str) -> set[str]:
    """The names of this service's failpoints the environment arms; unknown names are logged and ignored."""
    names = {n.strip() for n in os.environ.get(ENV, "").split(",") if n.strip()}
    unknown = names - set(known)
    if unknown:
        log.warning("unknown failpoints ignored", extra={"failpoints": sorted(unknown)})
    armed = names & set(known)
    if armed:
        log.warning(f"failpoints armed: this {service} will crash on purpose", extra={"failpoints": sorted(armed)})
    return armed


def crash(step: str, **context: str) -> None:
    """Exits at once, as a SIGKILL would leave the process: no cleanup, no flush but the logs'."""
    log.warning(f"failpoint {step}: exiting", extra=context)
    logging.shutdown()
    os._exit(137)
