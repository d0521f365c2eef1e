"""Where models run: the TensorFlow session config built from the server options."""

from __future__ import annotations

import logging

from pyserving.server.apis import config_pb2
from pyserving.server.config import parse_proto_text_file
from pyserving.server.errors import invalid_argument
from pyserving.server.options import ServerOptions

log = logging.getLogger(__name__)


def session_config(options: ServerOptions) -> config_pb2.ConfigProto:
    """The ConfigProto every model session gets: soft placement (GPU when TensorFlow sees one),
    thread pools, and GPU memory (a fixed fraction, or growth on demand)."""
    config = config_pb2.ConfigProto()
    if options.tensorflow_session_config_file:
        parse_proto_text_file(options.tensorflow_session_config_file, config)
    config.allow_soft_placement = True
    if options.tensorflow_session_parallelism > 0 and \
            options.tensorflow_intra_op_parallelism > 0 and \
            options.tensorflow_inter_op_parallelism > 0:
        raise invalid_argument(
            "Either configure server_options.tensorflow_session_parallelism or "
            "(server_options.tensorflow_intra_op_parallelism, "
            "server_options.tensorflow_inter_op_parallelism) separately. You cannot configure "
            "all.")
    if options.tensorflow_session_parallelism:
        config.intra_op_parallelism_threads = options.tensorflow_session_parallelism
        config.inter_op_parallelism_threads = options.tensorflow_session_parallelism
    if options.tensorflow_intra_op_parallelism:
        config.intra_op_parallelism_threads = options.tensorflow_intra_op_parallelism
    if options.tensorflow_inter_op_parallelism:
        config.inter_op_parallelism_threads = options.tensorflow_inter_op_parallelism
    fraction = options.per_process_gpu_memory_fraction
    if not 0.0 <= fraction <= 1.0:
        raise invalid_argument("per_process_gpu_memory_fraction must be between 0.0 and 1.0, "
                               f"got {fraction}")
    if fraction > 0:
        config.gpu_options.per_process_gpu_memory_fraction = fraction
    elif not config.gpu_options.HasField("experimental") and \
            not config.gpu_options.per_process_gpu_memory_fraction:
        config.gpu_options.allow_growth = True
    return config


def describe_devices() -> str:
    """A line for the start-up log: the GPUs TensorFlow sees, or that models run on the CPU."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "no GPU visible to TensorFlow; models run on the CPU"
    return "models are placed on " + ", ".join(gpu.name for gpu in gpus)
