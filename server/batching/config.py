"""TF Serving's BatchingParameters: the text-format file of --batching_parameters_file.

tensorflow-serving-api does not ship session_bundle_config.proto:
protos/pyserving/batching_parameters.proto is TF Serving's message (field names, numbers and
wrapper types as in TF Serving), compiled by `make protos`.
"""

from __future__ import annotations

import itertools
import logging
import os
from dataclasses import dataclass, replace

from pyserving.client.protos.pyserving.batching_parameters_pb2 import BatchingParameters
from pyserving.server.config import parse_proto_text_file
from pyserving.server.errors import invalid_argument

log = logging.getLogger(__name__)

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


def options_from_proto(proto: BatchingParameters) -> BatchingOptions:
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
        if any(b <= a for a, b in itertools.pairwise(sizes)) or sizes[0] < 1:
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
