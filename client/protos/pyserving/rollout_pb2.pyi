from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RolloutConfig(_message.Message):
    __slots__ = ("rollouts",)
    ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    rollouts: _containers.RepeatedCompositeFieldContainer[ModelRollout]
    def __init__(self, rollouts: _Optional[_Iterable[_Union[ModelRollout, _Mapping]]] = ...) -> None: ...

class ModelRollout(_message.Message):
    __slots__ = ("model_name", "split", "sticky_metadata_key", "shadow", "guard")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    STICKY_METADATA_KEY_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    GUARD_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    split: _containers.RepeatedCompositeFieldContainer[Arm]
    sticky_metadata_key: str
    shadow: Shadow
    guard: Guard
    def __init__(self, model_name: _Optional[str] = ..., split: _Optional[_Iterable[_Union[Arm, _Mapping]]] = ..., sticky_metadata_key: _Optional[str] = ..., shadow: _Optional[_Union[Shadow, _Mapping]] = ..., guard: _Optional[_Union[Guard, _Mapping]] = ...) -> None: ...

class Arm(_message.Message):
    __slots__ = ("label", "version", "weight")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    label: str
    version: int
    weight: float
    def __init__(self, label: _Optional[str] = ..., version: _Optional[int] = ..., weight: _Optional[float] = ...) -> None: ...

class Shadow(_message.Message):
    __slots__ = ("label", "version", "fraction", "max_abs_diff", "budget", "timeout_seconds")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    MAX_ABS_DIFF_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    label: str
    version: int
    fraction: float
    max_abs_diff: float
    budget: float
    timeout_seconds: float
    def __init__(self, label: _Optional[str] = ..., version: _Optional[int] = ..., fraction: _Optional[float] = ..., max_abs_diff: _Optional[float] = ..., budget: _Optional[float] = ..., timeout_seconds: _Optional[float] = ...) -> None: ...

class Guard(_message.Message):
    __slots__ = ("max_error_rate", "min_requests", "max_mismatch_rate")
    MAX_ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    MIN_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MAX_MISMATCH_RATE_FIELD_NUMBER: _ClassVar[int]
    max_error_rate: float
    min_requests: int
    max_mismatch_rate: float
    def __init__(self, max_error_rate: _Optional[float] = ..., min_requests: _Optional[int] = ..., max_mismatch_rate: _Optional[float] = ...) -> None: ...
