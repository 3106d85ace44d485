"""The delivery worker's failpoints (``switchboard.runtime.failpoints``: armed by ``SWITCHBOARD_FAILPOINTS``,
tests only).

* ``exit_after_disable`` — the process exits at once (``os._exit(137)``, as a SIGKILL would leave it) after a
  410 Gone disabled the subscription and before the attempt is recorded. The task was not acked: the broker
  redelivers it, and the worker that gets it finds the subscription disabled, records the delivery CANCELLED
  and sends nothing. The 410 attempt itself is never recorded: that is the window's cost (the subscription's
  status reason still names the 410).
"""

from __future__ import annotations

from delivery_service.pipeline import Disabler
from switchboard.runtime.failpoints import armed_names, crash


class ExitAfterDisable:
    def __init__(self, inner: Disabler) -> None:
        self.inner = inner

    async def disable(self, subscription_id: str, reason: str, callback_url: str) -> bool:
        disabled = await self.inner.disable(subscription_id, reason, callback_url)
        crash("exit_after_disable", subscription=subscription_id)
        return disabled


def armed(disabler: Disabler) -> Disabler:
    """``disabler``, wrapped by the armed failpoints."""
    return (
        ExitAfterDisable(disabler)
        if "exit_after_disable" in armed_names({"exit_after_disable"}, "delivery worker")
        else disabler
    )
