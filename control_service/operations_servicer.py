"""gRPC ``webhooks.v1.Replay`` and ``webhooks.v1.DeadLetters``: decode, call the managers, encode. Internal
tools only: neither service is on the edge."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from webhooks.v1 import dead_letters_pb2 as dl
from webhooks.v1 import dead_letters_pb2_grpc, event_pb2, replay_pb2, replay_pb2_grpc

from control_service.convert import optional_us
from control_service.dead_letters import DeadLetterManager, Filter
from control_service.replay import ReplayManager, Selection
from switchboard.errors import InvalidRequest
from switchboard.model.events import EventStatus
from switchboard.model.operations import DeadLetter, DeadLetterKind, DeadLetterState, ReplayJob, ReplayState
from switchboard.wire import ts

_EVENT_STATUS = {
    event_pb2.EVENT_STATUS_PROCESSED: EventStatus.PROCESSED,
    event_pb2.EVENT_STATUS_RETRYING: EventStatus.RETRYING,
    event_pb2.EVENT_STATUS_FAILED: EventStatus.FAILED,
    event_pb2.EVENT_STATUS_STALE: EventStatus.STALE,
}
_REPLAY_STATE = {
    ReplayState.RUNNING: replay_pb2.REPLAY_STATE_RUNNING,
    ReplayState.DONE: replay_pb2.REPLAY_STATE_DONE,
    ReplayState.CANCELLED: replay_pb2.REPLAY_STATE_CANCELLED,
    ReplayState.FAILED: replay_pb2.REPLAY_STATE_FAILED,
}
_KIND = {
    DeadLetterKind.PROCESSING: dl.DEAD_LETTER_KIND_PROCESSING,
    DeadLetterKind.DELIVERY: dl.DEAD_LETTER_KIND_DELIVERY,
}
_KIND_OF_PB = {v: k for k, v in _KIND.items()}
_STATE = {
    DeadLetterState.DEAD: dl.DEAD_LETTER_STATE_DEAD,
    DeadLetterState.REDRIVING: dl.DEAD_LETTER_STATE_REDRIVING,
    DeadLetterState.REDRIVEN: dl.DEAD_LETTER_STATE_REDRIVEN,
    DeadLetterState.PURGED: dl.DEAD_LETTER_STATE_PURGED,
}


def progress_pb(job: ReplayJob) -> replay_pb2.ReplayProgress:
    msg = replay_pb2.ReplayProgress(
        replay_id=job.id,
        state=_REPLAY_STATE[job.state],
        matched=job.matched,
        queued=job.queued,
        done=job.done,
        failed=job.failed,
        started_at=ts(job.started_us),
        message=job.message,
        dry_run=job.dry_run,
    )
    if job.finished_us:
        msg.finished_at.CopyFrom(ts(job.finished_us))
    return msg


def dead_letter_pb(d: DeadLetter) -> dl.DeadLetter:
    msg = dl.DeadLetter(
        id=d.id,
        kind=_KIND[d.kind],
        source=d.source,
        event_id=d.event_id,
        event_type=d.event_type,
        subscription_id=d.subscription_id,
        delivery_id=d.delivery_id,
        attempts=d.attempts,
        last_error=d.last_error,
        reason=d.reason,
        dead_lettered_at=ts(d.dead_us),
        state=_STATE[d.state],
        headers=d.headers,
        body=d.body,
    )
    if d.redriven_us:
        msg.redriven_at.CopyFrom(ts(d.redriven_us))
    return msg


def filter_of(f: dl.DeadLetterFilter) -> Filter:
    if f.kind and f.kind not in _KIND_OF_PB:
        raise InvalidRequest(f"unknown dead letter kind {f.kind}", reason="FIELD_INVALID", metadata={"field": "kind"})
    return Filter(
        kind=_KIND_OF_PB.get(f.kind),
        source=f.source,
        subscription_id=f.subscription_id,
        event_type=f.event_type,
        reason=f.reason,
        start_us=optional_us(f, "start_time"),
        end_us=optional_us(f, "end_time"),
        all_states=f.all_states,
    )


class ReplayServicer(replay_pb2_grpc.ReplayServicer):
    def __init__(self, manager: ReplayManager) -> None:
        self.manager = manager

    async def ReplayEvent(
        self, request: replay_pb2.ReplayEventRequest, context: grpc.aio.ServicerContext
    ) -> replay_pb2.ReplayEventResponse:
        replay_id = await self.manager.replay_event(
            request.source, request.event_id, request.subscription_id, request.reason
        )
        return replay_pb2.ReplayEventResponse(replay_id=replay_id)

    async def ReplayEvents(
        self, request: replay_pb2.ReplayEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[replay_pb2.ReplayEventsResponse]:
        if request.status and request.status not in _EVENT_STATUS:
            known = request.status in event_pb2.EventStatus.values()
            raise InvalidRequest(
                f"status: {event_pb2.EventStatus.Name(request.status)} is never stored"
                if known
                else f"status: {request.status} is not an event status",
                reason="STATUS_INVALID",
                metadata={"field": "status"},
            )
        job = await self.manager.start(
            Selection(
                source=request.source,
                start_us=optional_us(request, "start_time"),
                end_us=optional_us(request, "end_time"),
                event_types=tuple(request.event_types),
                status=_EVENT_STATUS.get(request.status),
                subscription_id=request.subscription_id,
                reason=request.reason,
                dry_run=request.dry_run,
                max_events=request.max_events,
                rate_per_second=request.rate_per_second,
                force=request.force,
            )
        )
        async for progress in self.manager.follow(job):
            yield replay_pb2.ReplayEventsResponse(progress=progress_pb(progress))

    async def GetReplay(
        self, request: replay_pb2.GetReplayRequest, context: grpc.aio.ServicerContext
    ) -> replay_pb2.GetReplayResponse:
        return replay_pb2.GetReplayResponse(progress=progress_pb(await self.manager.get(request.replay_id)))

    async def CancelReplay(
        self, request: replay_pb2.CancelReplayRequest, context: grpc.aio.ServicerContext
    ) -> replay_pb2.CancelReplayResponse:
        return replay_pb2.CancelReplayResponse(progress=progress_pb(await self.manager.cancel(request.replay_id)))


class DeadLettersServicer(dead_letters_pb2_grpc.DeadLettersServicer):
    def __init__(self, manager: DeadLetterManager) -> None:
        self.manager = manager

    async def ListDeadLetters(
        self, request: dl.ListDeadLettersRequest, context: grpc.aio.ServicerContext
    ) -> dl.ListDeadLettersResponse:
        found, token = await self.manager.list_dead_letters(
            filter_of(request.filter), request.page_size, request.page_token
        )
        return dl.ListDeadLettersResponse(dead_letters=[dead_letter_pb(d) for d in found], next_page_token=token)

    async def GetDeadLetter(
        self, request: dl.GetDeadLetterRequest, context: grpc.aio.ServicerContext
    ) -> dl.GetDeadLetterResponse:
        return dl.GetDeadLetterResponse(dead_letter=dead_letter_pb(await self.manager.get(request.id)))

    async def RedriveDeadLetters(
        self, request: dl.RedriveDeadLettersRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[dl.RedriveDeadLettersResponse]:
        async for p in self.manager.redrive(
            list(request.ids), filter_of(request.filter), everything=request.all, dry_run=request.dry_run
        ):
            yield dl.RedriveDeadLettersResponse(
                matched=p.matched, redriven=p.redriven, failed=p.failed, done=p.done, message=p.message
            )

    async def PurgeDeadLetters(
        self, request: dl.PurgeDeadLettersRequest, context: grpc.aio.ServicerContext
    ) -> dl.PurgeDeadLettersResponse:
        purged = await self.manager.purge(list(request.ids), filter_of(request.filter), confirm=request.confirm)
        return dl.PurgeDeadLettersResponse(purged=purged)
