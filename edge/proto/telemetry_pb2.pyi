from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SensorSeries(_message.Message):
    __slots__ = ("sensor", "unit", "timestamps_ms", "values")
    SENSOR_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMPS_MS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    sensor: str
    unit: str
    timestamps_ms: _containers.RepeatedScalarFieldContainer[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, sensor: _Optional[str] = ..., unit: _Optional[str] = ..., timestamps_ms: _Optional[_Iterable[int]] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class ReadingBatch(_message.Message):
    __slots__ = ("equipment_id", "site", "equipment_type", "gateway_id", "sequence", "sent_at_ms", "sensors", "clock_ms", "clock_offset_ms", "clock_uncertainty_ms")
    EQUIPMENT_ID_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    EQUIPMENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_MS_FIELD_NUMBER: _ClassVar[int]
    SENSORS_FIELD_NUMBER: _ClassVar[int]
    CLOCK_MS_FIELD_NUMBER: _ClassVar[int]
    CLOCK_OFFSET_MS_FIELD_NUMBER: _ClassVar[int]
    CLOCK_UNCERTAINTY_MS_FIELD_NUMBER: _ClassVar[int]
    equipment_id: str
    site: str
    equipment_type: str
    gateway_id: str
    sequence: int
    sent_at_ms: int
    sensors: _containers.RepeatedCompositeFieldContainer[SensorSeries]
    clock_ms: int
    clock_offset_ms: int
    clock_uncertainty_ms: int
    def __init__(self, equipment_id: _Optional[str] = ..., site: _Optional[str] = ..., equipment_type: _Optional[str] = ..., gateway_id: _Optional[str] = ..., sequence: _Optional[int] = ..., sent_at_ms: _Optional[int] = ..., sensors: _Optional[_Iterable[_Union[SensorSeries, _Mapping]]] = ..., clock_ms: _Optional[int] = ..., clock_offset_ms: _Optional[int] = ..., clock_uncertainty_ms: _Optional[int] = ...) -> None: ...

class Rejection(_message.Message):
    __slots__ = ("equipment_id", "sequence", "reason", "detail")
    EQUIPMENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    equipment_id: str
    sequence: int
    reason: str
    detail: str
    def __init__(self, equipment_id: _Optional[str] = ..., sequence: _Optional[int] = ..., reason: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class IngestAck(_message.Message):
    __slots__ = ("accepted_batches", "accepted_points", "duplicate_batches", "rejected_batches", "rejections", "edge_clock_ms")
    ACCEPTED_BATCHES_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_POINTS_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_BATCHES_FIELD_NUMBER: _ClassVar[int]
    REJECTED_BATCHES_FIELD_NUMBER: _ClassVar[int]
    REJECTIONS_FIELD_NUMBER: _ClassVar[int]
    EDGE_CLOCK_MS_FIELD_NUMBER: _ClassVar[int]
    accepted_batches: int
    accepted_points: int
    duplicate_batches: int
    rejected_batches: int
    rejections: _containers.RepeatedCompositeFieldContainer[Rejection]
    edge_clock_ms: int
    def __init__(self, accepted_batches: _Optional[int] = ..., accepted_points: _Optional[int] = ..., duplicate_batches: _Optional[int] = ..., rejected_batches: _Optional[int] = ..., rejections: _Optional[_Iterable[_Union[Rejection, _Mapping]]] = ..., edge_clock_ms: _Optional[int] = ...) -> None: ...
