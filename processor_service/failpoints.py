"""Failpoints: crashes on purpose at a chosen step, for the fault tests of the windows between two steps.

Armed only by the environment (``SWITCHBOARD_FAILPOINTS``, comma-separated names); the processor logs a
warning at start when one is armed. Never set it outside tests.

* ``exit_after_forward`` — the process exits at once (``os._exit(137)``, as a SIGKILL would leave it) after
  the retry copy of an event of type ``test.crash_after_forward`` on its first attempt is confirmed and
  before the original is acked: two copies of one receipt then exist, the redelivered original and the
  retry copy, and the processor that takes the partition over must run them one after the other.
"""

from __future__ import annotations

import logging
import os

from switchboard.queue import QueueMessage, Retry, Verdict, WorkerHooks
from switchboard.wire import decode_inbound

log = logging.getLogger(__name__)

ENV = "SWITCHBOARD_FAILPOINTS"
CRASH_EVENT_TYPE = "test.crash_after_forward"


class ExitAfterForward(WorkerHooks):
    def forwarded(self, message: QueueMessage, verdict: Verdict) -> None:
        first_retry = isinstance(verdict, Retry) and verdict.attempt == 1
        if first_retry and decode_inbound(message.body).event_type == CRASH_EVENT_TYPE:
            log.warning("failpoint exit_after_forward: exiting before the ack", extra={"event": message.message_id})
            logging.shutdown()
            os._exit(137)


def armed() -> list[WorkerHooks]:
    names = {n.strip() for n in os.environ.get(ENV, "").split(",") if n.strip()}
    hooks: list[WorkerHooks] = []
    if "exit_after_forward" in names:
        hooks.append(ExitAfterForward())
    unknown = names - {"exit_after_forward"}
    if unknown:
        log.warning("unknown failpoints ignored", extra={"failpoints": sorted(unknown)})
    if hooks:
        log.warning("failpoints armed: this processor will crash on purpose", extra={"failpoints": sorted(names)})
    return hooks
