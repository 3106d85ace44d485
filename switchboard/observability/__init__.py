"""Prometheus metrics of every Switchboard process.

* ``metrics``: the metric families (one registry per process, prometheus_client's default) and the endpoint
  each process serves them on. It imports nothing of Switchboard, so the store and the queue can time their
  calls with it without an import cycle.
* ``hooks``: what the services plug in: the queue worker's ``WorkerMetrics`` hook, the queue-depth poller,
  the ingest counters, timed operations, and the endpoint's lifetime inside ``serve()``.
* ``rpc``: the gRPC server interceptor (rate, errors by status code, latency per method).

Label children on hot paths are bound once and kept (``.labels()`` costs ~1 µs, a bound ``inc`` ~0.3 µs);
every label has a small, fixed set of values (sources are configured, unknown ones become ``unknown``).
"""
