import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EventStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_STATUS_UNSPECIFIED: _ClassVar[EventStatus]
    EVENT_STATUS_RECEIVED: _ClassVar[EventStatus]
    EVENT_STATUS_PROCESSED: _ClassVar[EventStatus]
    EVENT_STATUS_RETRYING: _ClassVar[EventStatus]
    EVENT_STATUS_FAILED: _ClassVar[EventStatus]
    EVENT_STATUS_STALE: _ClassVar[EventStatus]

class OperationOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OPERATION_OUTCOME_UNSPECIFIED: _ClassVar[OperationOutcome]
    OPERATION_OUTCOME_OK: _ClassVar[OperationOutcome]
    OPERATION_OUTCOME_SKIPPED: _ClassVar[OperationOutcome]
    OPERATION_OUTCOME_FAILED: _ClassVar[OperationOutcome]
EVENT_STATUS_UNSPECIFIED: EventStatus
EVENT_STATUS_RECEIVED: EventStatus
EVENT_STATUS_PROCESSED: EventStatus
EVENT_STATUS_RETRYING: EventStatus
EVENT_STATUS_FAILED: EventStatus
EVENT_STATUS_STALE: EventStatus
OPERATION_OUTCOME_UNSPECIFIED: OperationOutcome
OPERATION_OUTCOME_OK: OperationOutcome
OPERATION_OUTCOME_SKIPPED: OperationOutcome
OPERATION_OUTCOME_FAILED: OperationOutcome

class OperationResult(_message.Message):
    __slots__ = ("operation", "outcome", "attempt", "duration", "finished_at", "error")
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    operation: str
    outcome: OperationOutcome
    attempt: int
    duration: _duration_pb2.Duration
    finished_at: _timestamp_pb2.Timestamp
    error: str
    def __init__(self, operation: _Optional[str] = ..., outcome: _Optional[_Union[OperationOutcome, str]] = ..., attempt: _Optional[int] = ..., duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., error: _Optional[str] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("source", "event_id", "event_type", "provider", "received_at", "provider_time", "content_type", "body", "headers", "receipt_id", "entity_id", "entity_version", "traceparent", "replay", "status", "results", "processed_at", "attempts", "last_error", "duplicates", "replay_id")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_TIME_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_ID_FIELD_NUMBER: _ClassVar[int]
    ENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    ENTITY_VERSION_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    REPLAY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    PROCESSED_AT_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    REPLAY_ID_FIELD_NUMBER: _ClassVar[int]
    source: str
    event_id: str
    event_type: str
    provider: str
    received_at: _timestamp_pb2.Timestamp
    provider_time: _timestamp_pb2.Timestamp
    content_type: str
    body: bytes
    headers: _containers.ScalarMap[str, str]
    receipt_id: str
    entity_id: str
    entity_version: int
    traceparent: str
    replay: bool
    status: EventStatus
    results: _containers.RepeatedCompositeFieldContainer[OperationResult]
    processed_at: _timestamp_pb2.Timestamp
    attempts: int
    last_error: str
    duplicates: int
    replay_id: str
    def __init__(self, source: _Optional[str] = ..., event_id: _Optional[str] = ..., event_type: _Optional[str] = ..., provider: _Optional[str] = ..., received_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., provider_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., content_type: _Optional[str] = ..., body: _Optional[bytes] = ..., headers: _Optional[_Mapping[str, str]] = ..., receipt_id: _Optional[str] = ..., entity_id: _Optional[str] = ..., entity_version: _Optional[int] = ..., traceparent: _Optional[str] = ..., replay: _Optional[bool] = ..., status: _Optional[_Union[EventStatus, str]] = ..., results: _Optional[_Iterable[_Union[OperationResult, _Mapping]]] = ..., processed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., attempts: _Optional[int] = ..., last_error: _Optional[str] = ..., duplicates: _Optional[int] = ..., replay_id: _Optional[str] = ...) -> None: ...
