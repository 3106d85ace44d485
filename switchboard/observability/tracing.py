"""OpenTelemetry spans for the services, with the sampling decided once, at Envoy.

Envoy starts a trace for ``[tracing] sample_percent`` of the webhook requests and hands its context on as
the ``traceparent`` gRPC metadata; the ingest service stores it with the event and it travels in the AMQP
headers and in the event itself to the processors and the delivery workers. A service never starts a trace:
each span here is the child of a W3C ``traceparent`` string, and is recorded only when that parent says
"sampled" (flags bit 0). :func:`sampled` is a string test made before any OpenTelemetry call, so the events
Envoy did not sample cost nothing here (no context, no span object), and a stored event whose traceparent is
not sampled is never traced later either (retries, redeliveries and replays follow the original decision).

Two ways to make a span:

* ``with tracer.span(name, parent) as span:`` around code that runs now (ingest's server, verify and publish
  spans); ``span`` is None when the parent is not sampled, else a :class:`LiveSpan` whose ``traceparent`` is the
  parent of nested spans and of what is published;
* ``tracer.record(name, parent, start_ns, end_ns)`` after the fact, with explicit times (the processor handles
  events in batches and records each sampled event's spans once the batch is committed: one Cassandra write
  for the batch shows in every sampled event's trace, with the batch size as an attribute).

Export: a ``BatchSpanProcessor`` (large queue, so a burst drops nothing; what it drops is logged once by the
SDK, "Queue full", and not counted in any metric of ours) with the OTLP/gRPC exporter to ``[tracing]``'s
endpoint; :func:`setup_tracing` returns the shutdown that flushes it, for at most ``SHUTDOWN_SECONDS``.
Attributes carry ids, names, sizes and status codes: never bodies, headers or secrets.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Final

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from switchboard.config import TracingConfig

log = logging.getLogger(__name__)

# How long a stopping service waits for its queued spans to be exported.
SHUTDOWN_SECONDS: Final = 3.0

__all__ = ["NO_TRACER", "Attributes", "LiveSpan", "Tracer", "sampled", "setup_tracing", "traceparent_of"]

Attributes = Mapping[str, str | int | float | bool]
_KINDS: Final = {
    "internal": SpanKind.INTERNAL,
    "server": SpanKind.SERVER,
    "client": SpanKind.CLIENT,
    "producer": SpanKind.PRODUCER,
    "consumer": SpanKind.CONSUMER,
}
_PROPAGATOR: Final = TraceContextTextMapPropagator()
_ODD_HEX: Final = frozenset("13579bdf")


def sampled(traceparent: str) -> bool:
    """Whether a W3C ``traceparent`` (``00-<trace id>-<parent id>-<flags>``) has the sampled flag set."""
    return len(traceparent) == 55 and traceparent[2] == "-" and traceparent[54] in _ODD_HEX


def traceparent_of(span: trace.Span) -> str:
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


class LiveSpan:
    """A span being recorded: its ``traceparent`` (for children and for what is published) and setters."""

    __slots__ = ("_span", "traceparent")

    def __init__(self, span: trace.Span) -> None:
        self._span = span
        self.traceparent = traceparent_of(span)

    def set(self, key: str, value: str | int | float | bool) -> None:
        self._span.set_attribute(key, value)

    def error(self, message: str) -> None:
        self._span.set_status(Status(StatusCode.ERROR, message[:500]))


class Tracer:
    """One service's spans; without an OpenTelemetry tracer (tracing off) every method does nothing."""

    def __init__(self, otel: trace.Tracer | None) -> None:
        self._otel = otel

    @property
    def enabled(self) -> bool:
        return self._otel is not None

    def _context(self, parent: str) -> Any:
        return _PROPAGATOR.extract({"traceparent": parent})

    @contextmanager
    def span(
        self, name: str, parent: str, *, kind: str = "internal", attributes: Attributes | None = None
    ) -> Iterator[LiveSpan | None]:
        """A span around the block, child of ``parent``; yields None (and records nothing) unless ``parent``
        is sampled. An exception leaving the block marks the span as an error (its type and message) and
        propagates."""
        if self._otel is None or not sampled(parent):
            yield None
            return
        span = self._otel.start_span(name, context=self._context(parent), kind=_KINDS[kind], attributes=attributes)
        try:
            yield LiveSpan(span)
        except BaseException as exc:
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:500]))
            raise
        finally:
            span.end()

    def record(
        self,
        name: str,
        parent: str,
        start_ns: int,
        end_ns: int,
        *,
        kind: str = "internal",
        attributes: Attributes | None = None,
        error: str = "",
    ) -> str:
        """Records a finished span (child of ``parent``) from ``start_ns`` to ``end_ns`` (epoch nanoseconds);
        returns its traceparent, for children, or ``parent`` itself when nothing was recorded."""
        if self._otel is None or not sampled(parent):
            return parent
        span = self._otel.start_span(
            name, context=self._context(parent), kind=_KINDS[kind], attributes=attributes, start_time=start_ns
        )
        if error:
            span.set_status(Status(StatusCode.ERROR, error[:500]))
        span.end(end_time=max(start_ns, end_ns))
        return traceparent_of(span)


NO_TRACER: Final = Tracer(None)


def setup_tracing(service: str, cfg: TracingConfig) -> tuple[Tracer, Callable[[], None]]:
    """The process's tracer (``service`` names it in every span) and the shutdown that flushes what is queued;
    ``NO_TRACER`` and a no-op when tracing is off. Parent-based sampling with no root sampling: the services
    follow Envoy's decision and never start a trace."""
    target = cfg.target()
    if target is None:
        return NO_TRACER, lambda: None
    # Imported here: a process with tracing off never loads the SDK and the exporter.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased

    provider = TracerProvider(resource=Resource.create({"service.name": service}), sampler=ParentBased(root=ALWAYS_OFF))
    exporter = OTLPSpanExporter(endpoint=target, insecure=True, timeout=5)
    provider.add_span_processor(
        BatchSpanProcessor(exporter, max_queue_size=cfg.max_queue, max_export_batch_size=512, schedule_delay_millis=500)
    )
    log.info("tracing to %s (spans of sampled requests only)", target, extra={"service": service})

    def shutdown() -> None:
        # The SDK's shutdown waits up to 30 s for its export thread, which retries while the collector is away:
        # every service took 30 s to stop (killed past its stop deadline). Spans still queued then are lost.
        flushing = threading.Thread(target=provider.shutdown, name="span-flush", daemon=True)
        flushing.start()
        flushing.join(SHUTDOWN_SECONDS)
        if flushing.is_alive():
            log.warning("spans not exported within %g s of stopping are dropped", SHUTDOWN_SECONDS)

    return Tracer(provider.get_tracer("switchboard")), shutdown
