"""The pure logic of outbound webhook delivery (no broker, store or gRPC here).

* :mod:`~switchboard.delivery.urls` — callback URL validation and the SSRF guard (``check_url``,
  ``check_ip``, ``resolve_and_check``, the aiohttp ``GuardedResolver``).
* :mod:`~switchboard.delivery.filters` — subscription filters: event type globs, CEL trigger conditions.
* :mod:`~switchboard.delivery.policy` — the retry schedule and what each attempt's outcome means.
* :mod:`~switchboard.delivery.signing` — Standard Webhooks headers for a delivery; signing secrets.
* :mod:`~switchboard.delivery.ids` — deterministic delivery ids (the ``webhook-id``).
* :mod:`~switchboard.delivery.inflight` — requests out per subscription and per host; whether one more may go.
* :mod:`~switchboard.delivery.pacing` — when a task deferred for those limits should come back.

Import the modules themselves: this package imports none of them, so using one does not load the others'
dependencies (aiohttp, cel).
"""
