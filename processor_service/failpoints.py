"""The processor's failpoints (``switchboard.runtime.failpoints``: armed by ``SWITCHBOARD_FAILPOINTS``, tests only).

* ``exit_after_forward`` — the process exits at once (``os._exit(137)``, as a SIGKILL would leave it) after
  the retry copy of an event of type ``test.crash_after_forward`` on its first attempt is confirmed and
  before the original is acked: two copies of one receipt then exist, the redelivered original and the
  retry copy, and the processor that takes the partition over must run them one after the other.
"""

from __future__ import annotations

from switchboard.queue import QueueMessage, Retry, Verdict, WorkerHooks
from switchboard.runtime.failpoints import armed_names, crash
from switchboard.wire import decode_inbound

CRASH_EVENT_TYPE = "test.crash_after_forward"


class ExitAfterForward(WorkerHooks):
    def forwarded(self, message: QueueMessage, verdict: Verdict) -> None:
        # A pass's own retry copy, not one that sends a copy behind its stored attempts back to wait.
        first_retry = isinstance(verdict, Retry) and verdict.attempt == 1 and verdict.outcome == "retried"
        if first_retry and decode_inbound(message.body).event_type == CRASH_EVENT_TYPE:
            crash("exit_after_forward", event=message.message_id)


def armed() -> list[WorkerHooks]:
    return [ExitAfterForward()] if "exit_after_forward" in armed_names({"exit_after_forward"}, "processor") else []
