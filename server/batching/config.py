"""TF Serving's BatchingParameters: the text-format file of --batching_parameters_file.

tensorflow-serving-api does not ship session_bundle_config.proto, so the message is built
here from its definition (field names, numbers and wrapper types as in TF Serving), in a
private descriptor pool so it never clashes with another copy.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from typing import Protocol, Sequence

from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    wrappers_pb2,
)

from pyserving.server.config import parse_proto_text_file
from pyserving.server.errors import invalid_argument

log = logging.getLogger(__name__)

_FIELDS = (  # name, number, wrapper type (None: a plain scalar field)
    ("max_batch_size", 1, "Int64Value"),
    ("batch_timeout_micros", 2, "Int64Value"),
    ("max_enqueued_batches", 3, "Int64Value"),
    ("num_batch_threads", 4, "Int64Value"),
    ("thread_pool_name", 5, "StringValue"),
    ("allowed_batch_sizes", 6, None),
    ("pad_variable_length_inputs", 7, None),
    ("enable_large_batch_splitting", 8, "BoolValue"),
    ("max_execution_batch_size", 9, "Int64Value"),
)


def _message_class() -> type:
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(descriptor_pb2.FileDescriptorProto.FromString(
        wrappers_pb2.DESCRIPTOR.serialized_pb).SerializeToString())
    file = descriptor_pb2.FileDescriptorProto(
        name="pyserving/batching_parameters.proto", package="tensorflow.serving",
        syntax="proto3", dependency=["google/protobuf/wrappers.proto"])
    message = file.message_type.add(name="BatchingParameters")
    Field = descriptor_pb2.FieldDescriptorProto
    for name, number, wrapper in _FIELDS:
        field = message.field.add(name=name, number=number, label=Field.LABEL_OPTIONAL)
        if wrapper is not None:
            field.type = Field.TYPE_MESSAGE
            field.type_name = f".google.protobuf.{wrapper}"
        elif name == "allowed_batch_sizes":
            field.type, field.label = Field.TYPE_INT64, Field.LABEL_REPEATED
        else:
            field.type = Field.TYPE_BOOL
    pool.Add(file)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


BatchingParameters = _message_class()


class BatchingParametersFields(Protocol):
    """What a BatchingParameters message holds besides its Int64Value fields (its class is
    built at run time, so mypy sees no fields)."""

    allowed_batch_sizes: Sequence[int]
    pad_variable_length_inputs: bool
    enable_large_batch_splitting: wrappers_pb2.BoolValue

    def HasField(self, field_name: str) -> bool: ...


@dataclass(frozen=True)
class BatchingOptions:
    """BatchingParameters with TF Serving's defaults filled in and checked."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = os.cpu_count() or 1
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False
    enable_large_batch_splitting: bool = False
    max_execution_batch_size: int = 1000

    @property
    def execution_batch_size(self) -> int:
        """The largest batch one TensorFlow call gets."""
        if self.enable_large_batch_splitting:
            return min(self.max_execution_batch_size, self.max_batch_size)
        return self.max_batch_size


def options_from_proto(proto: BatchingParametersFields) -> BatchingOptions:
    """The options a BatchingParameters message sets, TF Serving's defaults for the rest
    (unchecked: see ``check_thread_count`` and ``queue_options``)."""
    defaults = BatchingOptions()

    def value(name: str, default: int) -> int:
        return getattr(proto, name).value if proto.HasField(name) else default

    max_batch_size = value("max_batch_size", defaults.max_batch_size)
    return BatchingOptions(
        max_batch_size=max_batch_size,
        batch_timeout_micros=value("batch_timeout_micros", defaults.batch_timeout_micros),
        max_enqueued_batches=value("max_enqueued_batches", defaults.max_enqueued_batches),
        num_batch_threads=value("num_batch_threads", defaults.num_batch_threads),
        allowed_batch_sizes=tuple(proto.allowed_batch_sizes),
        pad_variable_length_inputs=proto.pad_variable_length_inputs,
        enable_large_batch_splitting=(proto.enable_large_batch_splitting.value
                                      if proto.HasField("enable_large_batch_splitting")
                                      else False),
        max_execution_batch_size=value("max_execution_batch_size", max_batch_size),
    )


def check_thread_count(options: BatchingOptions) -> None:
    """SharedBatchScheduler::Create's check, made at start-up for the server's one pool."""
    if options.num_batch_threads < 1:
        raise invalid_argument("num_batch_threads must be positive; was "
                               f"{options.num_batch_threads}")


def queue_options(options: BatchingOptions) -> BatchingOptions:
    """The options a loading version's queues run with, checked as TF Serving checks them
    when it wraps the session for batching (WrapSessionForBatching, then
    SharedBatchScheduler::AddQueue); a failure fails that version's load."""
    sizes = options.allowed_batch_sizes
    if sizes:
        if sizes[-1] != options.max_batch_size:
            raise invalid_argument("Last entry in allowed_batch_sizes must match "
                                   f"max_batch_size; last entry was {sizes[-1]}; expected "
                                   f"{options.max_batch_size}")
        if any(b <= a for a, b in zip(sizes, sizes[1:])) or sizes[0] < 1:
            raise invalid_argument("allowed_batch_sizes entries must be monotonically "
                                   "increasing")
    # TF Serving's size_t QueueOptions wrap a negative size around to ~2**64, a limit nobody
    # meant; here it is refused with the texts of the zero checks.
    for name, size in (("input_batch_size_limit", options.max_batch_size),
                       ("max_enqueued_batches", options.max_enqueued_batches),
                       ("max_execution_batch_size", options.max_execution_batch_size)):
        if size < 0:
            raise invalid_argument(f"{name} must be positive; was {size}")
    splitting = options.enable_large_batch_splitting
    if not splitting and options.max_enqueued_batches == 0:
        # AddQueue's rewrite: "many existing models (with very low QPS) rely on" it.
        options = replace(options, max_enqueued_batches=1)
    if options.max_batch_size == 0:
        raise invalid_argument("input_batch_size_limit must be positive; was 0")
    if options.batch_timeout_micros < 0:
        raise invalid_argument("batch_timeout_micros must be non-negative; was "
                               f"{options.batch_timeout_micros}")
    if options.max_enqueued_batches == 0:
        raise invalid_argument("max_enqueued_batches must be positive; was 0")
    if splitting and options.max_batch_size < options.max_execution_batch_size:
        raise invalid_argument(
            "When enable_large_batch_splitting is true, input_batch_size_limit must be greater "
            f"than or equal to max_execution_batch_size; input_batch_size_limit was "
            f"{options.max_batch_size}, max_execution_batch_size "
            f"{options.max_execution_batch_size}")
    return options


def read_batching_parameters(path: str) -> BatchingOptions:
    return options_from_proto(parse_proto_text_file(path, BatchingParameters()))
