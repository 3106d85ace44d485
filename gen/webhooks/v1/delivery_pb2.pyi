import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from webhooks.v1 import event_pb2 as _event_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DeliveryTask(_message.Message):
    __slots__ = ("delivery_id", "subscription_id", "event", "created_at", "replay_id")
    DELIVERY_ID_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    REPLAY_ID_FIELD_NUMBER: _ClassVar[int]
    delivery_id: str
    subscription_id: str
    event: _event_pb2.Event
    created_at: _timestamp_pb2.Timestamp
    replay_id: str
    def __init__(self, delivery_id: _Optional[str] = ..., subscription_id: _Optional[str] = ..., event: _Optional[_Union[_event_pb2.Event, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., replay_id: _Optional[str] = ...) -> None: ...
