"""Ingest domain: verify a provider's request, build the canonical event, queue it durably.

No gRPC or protobuf here: the servicer hands in plain bytes and headers, and the publisher is any object
with ``async publish(event)`` that returns only once the event is durably queued.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from switchboard.config import SourceConfig
from switchboard.errors import InvalidRequest, PayloadTooLarge, UnknownSource
from switchboard.headers import never_stored
from switchboard.model.events import (
    MAX_ENTITY_ID_BYTES,
    MAX_KEY_BYTES,
    InboundEvent,
    key_bytes,
    new_receipt_id,
    new_traceparent,
    now_us,
    valid_traceparent,
)
from switchboard.observability.tracing import NO_TRACER, Attributes, Tracer
from switchboard.signatures import Verifier

log = logging.getLogger(__name__)

MAX_HEADER_VALUE = 4096
MAX_CONTENT_TYPE = 255


class EventPublisher(Protocol):
    async def publish_event(self, event: InboundEvent) -> None: ...


@dataclass(frozen=True, slots=True)
class Accepted:
    event_id: str
    receipt_id: str


@dataclass(frozen=True, slots=True)
class Source:
    config: SourceConfig
    verifier: Verifier


def select_headers(metadata: Iterable[tuple[str, str | bytes]], drop: frozenset[str] = frozenset()) -> dict[str, str]:
    """The request headers worth keeping with the event, lowercased; repeated headers joined by ', '. Also
    dropped: ``drop`` (the source's signature headers, ``Verifier.signature_headers``)."""
    out: dict[str, str] = {}
    for key, value in metadata:
        k = key.lower()
        if not isinstance(value, str) or never_stored(k) or k in drop:
            continue
        value = value[:MAX_HEADER_VALUE]
        out[k] = f"{out[k]}, {value}" if k in out else value
    return out


class Ingestor:
    """Verifies, builds and queues one request's event. With a ``tracer``, a request Envoy traced gets a server
    span with a verify and a publish span under it, and the event carries the publish span's traceparent (so
    the processors' spans hang under it); an untraced request costs one string test."""

    def __init__(
        self,
        sources: Mapping[str, Source],
        publisher: EventPublisher,
        *,
        default_source: str | None,
        tracer: Tracer = NO_TRACER,
    ) -> None:
        self.sources = dict(sources)
        self.publisher = publisher
        self.default_source = default_source
        self.tracer = tracer

    async def receive(
        self, source_name: str, metadata: Iterable[tuple[str, str | bytes]], body: bytes, content_type: str
    ) -> Accepted:
        received_us = now_us()  # the arrival time: signatures are checked against it, never a later one
        metadata = tuple(metadata)
        parent = next((v for k, v in metadata if k == "traceparent" and isinstance(v, str)), "")
        attributes: Attributes = {
            "switchboard.source": source_name or self.default_source or "",
            "http.request.body.size": len(body),
        }
        with self.tracer.span("webhooks.v1.Ingest/Receive", parent, kind="server", attributes=attributes) as span:
            accepted = await self._receive(
                received_us, source_name, metadata, body, content_type, span.traceparent if span else parent
            )
            if span is not None:
                span.set("switchboard.event_id", accepted.event_id)
                span.set("switchboard.receipt_id", accepted.receipt_id)
            return accepted

    async def _receive(
        self,
        received_us: int,
        source_name: str,
        metadata: tuple[tuple[str, str | bytes], ...],
        body: bytes,
        content_type: str,
        parent: str,
    ) -> Accepted:
        name = source_name or self.default_source
        if not name:
            raise InvalidRequest("no source in the path and no default source configured", reason="SOURCE_MISSING")
        source = self.sources.get(name)
        if source is None:
            raise UnknownSource(f"unknown source {name!r}", metadata={"source": name[:64]})
        if len(body) > source.config.max_body_bytes:
            raise PayloadTooLarge(
                f"body of {len(body)} bytes is over the source's limit of {source.config.max_body_bytes}",
                metadata={"source": name, "limit": str(source.config.max_body_bytes)},
            )
        if len(content_type) > MAX_CONTENT_TYPE or not (content_type.isascii() and content_type.isprintable()):
            # It is sent on with every delivery: a CR/LF in it made the delivery worker's request raise.
            raise InvalidRequest(
                f"the content type must be printable ASCII of at most {MAX_CONTENT_TYPE} characters",
                reason="CONTENT_TYPE_INVALID",
            )
        raw_headers: dict[str, str] = {}
        for key, value in metadata:
            if isinstance(value, str):
                raw_headers[key.lower()] = value
        with self.tracer.span(f"verify {source.config.scheme}", parent):
            verified = source.verifier.verify(raw_headers, body, received_us / 1_000_000)
        if not verified.event_id:
            raise InvalidRequest("the request carries no event id", reason="EVENT_ID_MISSING")
        size = key_bytes(name, verified.event_id)
        if size > MAX_KEY_BYTES:
            raise InvalidRequest(
                f"event id too long: with the source's name it makes a key of {size} bytes, "
                f"at most {MAX_KEY_BYTES} (UTF-8)",
                reason="EVENT_ID_INVALID",
            )
        entity_id, entity_version = verified.entity_id, verified.entity_version
        if len(entity_id.encode()) > MAX_ENTITY_ID_BYTES:
            # Authentic, so never refused for it (a 400 is retried until the provider gives up, then the event is
            # lost): taken without its entity, hence without the out-of-order guard and the entity's state.
            log.warning(
                "entity id too long: the event is taken without its entity",
                extra={"source": name, "event_id": verified.event_id, "bytes": len(entity_id.encode())},
            )
            entity_id, entity_version = "", 0
        with self.tracer.span("publish events", parent, kind="producer") as publish:
            event = InboundEvent(
                source=name,
                event_id=verified.event_id,
                event_type=verified.event_type,
                provider=source.config.scheme,
                received_us=received_us,
                body=body,
                content_type=content_type,
                headers=select_headers(metadata, source.verifier.signature_headers),
                receipt_id=new_receipt_id(),
                provider_time_us=int(verified.provider_time * 1_000_000) if verified.provider_time else 0,
                entity_id=entity_id,
                entity_version=entity_version,
                # the publish span's context when traced (the processors' spans hang under it), else Envoy's
                traceparent=(
                    publish.traceparent if publish else parent if valid_traceparent(parent) else new_traceparent()
                ),
            )
            if publish is not None:
                publish.set("messaging.message.id", event.receipt_id)
                publish.set("switchboard.event_id", event.event_id)
            await self.publisher.publish_event(event)
        return Accepted(event.event_id, event.receipt_id)
