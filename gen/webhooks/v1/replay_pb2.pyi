import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from webhooks.v1 import event_pb2 as _event_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReplayState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REPLAY_STATE_UNSPECIFIED: _ClassVar[ReplayState]
    REPLAY_STATE_RUNNING: _ClassVar[ReplayState]
    REPLAY_STATE_DONE: _ClassVar[ReplayState]
    REPLAY_STATE_CANCELLED: _ClassVar[ReplayState]
    REPLAY_STATE_FAILED: _ClassVar[ReplayState]
REPLAY_STATE_UNSPECIFIED: ReplayState
REPLAY_STATE_RUNNING: ReplayState
REPLAY_STATE_DONE: ReplayState
REPLAY_STATE_CANCELLED: ReplayState
REPLAY_STATE_FAILED: ReplayState

class ReplayEventRequest(_message.Message):
    __slots__ = ("source", "event_id", "subscription_id", "reason")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    source: str
    event_id: str
    subscription_id: str
    reason: str
    def __init__(self, source: _Optional[str] = ..., event_id: _Optional[str] = ..., subscription_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ReplayEventResponse(_message.Message):
    __slots__ = ("replay_id",)
    REPLAY_ID_FIELD_NUMBER: _ClassVar[int]
    replay_id: str
    def __init__(self, replay_id: _Optional[str] = ...) -> None: ...

class ReplayEventsRequest(_message.Message):
    __slots__ = ("source", "start_time", "end_time", "event_types", "status", "subscription_id", "reason", "dry_run", "max_events", "rate_per_second", "force")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPES_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    MAX_EVENTS_FIELD_NUMBER: _ClassVar[int]
    RATE_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    source: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    event_types: _containers.RepeatedScalarFieldContainer[str]
    status: _event_pb2.EventStatus
    subscription_id: str
    reason: str
    dry_run: bool
    max_events: int
    rate_per_second: float
    force: bool
    def __init__(self, source: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., event_types: _Optional[_Iterable[str]] = ..., status: _Optional[_Union[_event_pb2.EventStatus, str]] = ..., subscription_id: _Optional[str] = ..., reason: _Optional[str] = ..., dry_run: _Optional[bool] = ..., max_events: _Optional[int] = ..., rate_per_second: _Optional[float] = ..., force: _Optional[bool] = ...) -> None: ...

class ReplayProgress(_message.Message):
    __slots__ = ("replay_id", "state", "matched", "queued", "done", "failed", "started_at", "finished_at", "message", "dry_run")
    REPLAY_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MATCHED_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    replay_id: str
    state: ReplayState
    matched: int
    queued: int
    done: int
    failed: int
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    message: str
    dry_run: bool
    def __init__(self, replay_id: _Optional[str] = ..., state: _Optional[_Union[ReplayState, str]] = ..., matched: _Optional[int] = ..., queued: _Optional[int] = ..., done: _Optional[int] = ..., failed: _Optional[int] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., message: _Optional[str] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class GetReplayRequest(_message.Message):
    __slots__ = ("replay_id",)
    REPLAY_ID_FIELD_NUMBER: _ClassVar[int]
    replay_id: str
    def __init__(self, replay_id: _Optional[str] = ...) -> None: ...

class CancelReplayRequest(_message.Message):
    __slots__ = ("replay_id",)
    REPLAY_ID_FIELD_NUMBER: _ClassVar[int]
    replay_id: str
    def __init__(self, replay_id: _Optional[str] = ...) -> None: ...

class ReplayEventsResponse(_message.Message):
    __slots__ = ("progress",)
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    progress: ReplayProgress
    def __init__(self, progress: _Optional[_Union[ReplayProgress, _Mapping]] = ...) -> None: ...

class GetReplayResponse(_message.Message):
    __slots__ = ("progress",)
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    progress: ReplayProgress
    def __init__(self, progress: _Optional[_Union[ReplayProgress, _Mapping]] = ...) -> None: ...

class CancelReplayResponse(_message.Message):
    __slots__ = ("progress",)
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    progress: ReplayProgress
    def __init__(self, progress: _Optional[_Union[ReplayProgress, _Mapping]] = ...) -> None: ...
