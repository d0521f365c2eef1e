"""Server options: tensorflow_model_server's flags, parsed into one immutable object.

Every flag of ``tensorflow_model_server`` is accepted with its name, default and ``--flag=value``
syntax, so launch scripts work by swapping the binary name. Flags whose feature pyserving does
not implement yet are parsed and reported at start-up (``INERT_FLAGS``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn


def _flag(default: Any, help_text: str) -> Any:
    return field(default=default, metadata={"help": help_text})


_CPUS = os.cpu_count() or 1


@dataclass(frozen=True)
class ServerOptions:
    """Everything the server reads from its command line (or an embedding application)."""

    port: int = _flag(8500, "TCP port to listen on for the gRPC API. Disabled if set to zero "
                            "(then --grpc_socket_path must be set).")
    grpc_socket_path: str = _flag("", "If non-empty, also listen on this UNIX socket for the "
                                      "gRPC API.")
    rest_api_port: int = _flag(0, "Port for the HTTP/REST API; 0 disables it. Must differ from "
                                  "--port.")
    rest_api_num_threads: int = _flag(4 * _CPUS, "Number of threads for HTTP/REST API "
                                                 "processing.")
    rest_api_timeout_in_ms: int = _flag(30000, "Timeout for HTTP/REST API calls.")
    rest_api_enable_cors_support: bool = _flag(False, "Enable CORS headers in REST responses.")
    rest_api_max_request_bytes: int = _flag(
        2**30, "pyserving: largest HTTP/REST request body accepted; larger ones get HTTP 413.")
    max_request_tensor_bytes: int = _flag(
        2**31, "pyserving: most bytes the input tensors of one Predict (gRPC or REST) may "
               "decode to, checked against their declared shapes before allocating; larger "
               "requests get INVALID_ARGUMENT 'tensor parsing error'.")
    enable_batching: bool = _flag(False, "Enable dynamic request batching.")
    allow_version_labels_for_unavailable_models: bool = _flag(
        False, "Allow assigning version labels to versions that are not available yet.")
    batching_parameters_file: str = _flag("", "Text-format BatchingParameters file "
                                              "(requires --enable_batching).")
    batching_wait_for_full_batch: bool = _flag(
        False, "pyserving: with --enable_batching, an open batch waits until it is full or "
               "batch_timeout_micros passed, as in TF Serving, even when no request that could "
               "join it is in flight. By default it closes as soon as none is.")
    enable_per_model_batching_parameters: bool = _flag(
        False, "Read batching_params.pbtxt from each SavedModel directory.")
    model_config_file: str = _flag("", "Text-format ModelServerConfig file listing the models "
                                       "to serve (if set, --model_name and --model_base_path "
                                       "are ignored).")
    model_config_file_poll_wait_seconds: int = _flag(0, "Seconds between re-reads of "
                                                        "--model_config_file; 0 reads it once.")
    model_name: str = _flag("default", "Name of the model (ignored with --model_config_file).")
    model_base_path: str = _flag("", "Directory whose numeric sub-directories are the model's "
                                     "versions (required unless --model_config_file is set).")
    model_cache_dir: str = _flag(
        "", "pyserving: local directory where versions from s3:// and gs:// base paths are "
            "copied before they load (in a sub-directory of this server's own, removed at "
            "exit); empty: a temporary directory.")
    num_load_threads: int = _flag(0, "Threads used to load servables (0 loads serially).")
    num_unload_threads: int = _flag(0, "Threads used to unload servables (0 unloads serially).")
    max_num_load_retries: int = _flag(5, "Retries of a failed load before giving up.")
    load_retry_interval_micros: int = _flag(60_000_000, "Microseconds between load retries.")
    file_system_poll_wait_seconds: int = _flag(
        1, "Seconds between polls of the model base paths for new versions; 0 polls once; a "
           "negative value disables polling entirely, so start-up waits indefinitely.")
    flush_filesystem_caches: bool = _flag(True, "Flush filesystem caches after loads.")
    tensorflow_session_parallelism: int = _flag(0, "Threads for running a TensorFlow session "
                                                   "(0 = auto).")
    tensorflow_session_config_file: str = _flag("", "Text-format TensorFlow ConfigProto for "
                                                    "every session.")
    tensorflow_intra_op_parallelism: int = _flag(0, "Threads used to parallelise one op "
                                                    "(0 = auto).")
    tensorflow_inter_op_parallelism: int = _flag(
        0, "Ops that may run at once (0 = auto: TensorFlow's pool, and a short graph measured "
           "faster in the calling thread runs there; -1 = every graph in the calling thread).")
    use_alts_credentials: bool = _flag(False, "Use Google ALTS credentials.")
    ssl_config_file: str = _flag("", "Text-format SSLConfig (PEM server_key, server_cert, "
                                     "custom_ca; client_verify): serve gRPC over TLS, or mutual "
                                     "TLS with client_verify.")
    platform_config_file: str = _flag("", "Text-format PlatformConfigMap.")
    per_process_gpu_memory_fraction: float = _flag(
        0.0, "Fraction of each GPU's memory this process may take, 0.0 to 1.0; 0 lets "
             "TensorFlow grow its allocation on demand.")
    saved_model_tags: str = _flag("serve", "Comma-separated tags of the MetaGraphDef to load.")
    grpc_channel_arguments: str = _flag("", "Comma-separated gRPC server arguments, e.g. "
                                            "grpc.max_connection_age_ms=2000.")
    grpc_max_threads: int = _flag(4 * _CPUS, "Max gRPC server threads handling requests.")
    enable_model_warmup: bool = _flag(True, "Replay assets.extra/tf_serving_warmup_requests "
                                            "before a version serves.")
    num_request_iterations_for_warmup: int = _flag(0, "Times each warmup request is replayed "
                                                      "(used if > 0).")
    version: bool = _flag(False, "Display version and exit.")
    monitoring_config_file: str = _flag("", "Text-format MonitoringConfig file.")
    remove_unused_fields_from_bundle_metagraph: bool = _flag(
        True, "Remove unused fields from the MetaGraphDef to save memory.")
    prefer_tflite_model: bool = _flag(False, "Prefer model.tflite (not supported).")
    num_tflite_pools: int = _flag(_CPUS, "TFLite interpreter pools (not supported).")
    num_tflite_interpreters_per_pool: int = _flag(1, "TFLite interpreters per pool "
                                                     "(not supported).")
    enable_signature_method_name_check: bool = _flag(
        False, "Check that Predict signatures have a predict, classify or regress method_name.")
    xla_cpu_compilation_enabled: bool = _flag(False, "Enable XLA:CPU JIT.")
    xla_gpu_compilation_enabled: bool = _flag(False, "Enable XLA:CPU and XLA:GPU JIT.")
    enable_profiler: bool = _flag(True, "Enable the profiler service.")
    thread_pool_factory_config_file: str = _flag("", "Text-format ThreadPoolConfig file.")
    mixed_precision: str = _flag("", "Mixed precision mode.")
    skip_initialize_tpu: bool = _flag(False, "Skip auto-initialising a TPU.")
    enable_grpc_healthcheck_service: bool = _flag(
        False, "Also mark the gRPC health service names ModelService and PredictionService "
               "SERVING, as TF Serving does (pyserving always serves grpc.health.v1 for the "
               "server and each model).")
    enable_v2_protocol: bool = _flag(
        True, "pyserving: also serve the Open Inference Protocol (KServe V2): REST under /v2 "
              "on --rest_api_port and gRPC inference.GRPCInferenceService on --port "
              "(docs/v2.md).")
    enable_serialization_as_tensor_content: bool = _flag(
        False, "Serialise Predict outputs as tensor_content instead of typed *_val fields.")
    shutdown_grace_period_seconds: float = _flag(
        10.0, "pyserving: on SIGTERM/SIGINT, seconds in-flight RPCs get to finish before the "
              "server stops and unloads its models.")
    workers: str = _flag(
        "1", "pyserving: server processes sharing the gRPC and REST ports (SO_REUSEPORT), each "
             "with its own models and batching; 'auto' starts one per CPU core.")
    max_in_flight_requests_per_model: int = _flag(
        256, "pyserving: requests (Predict, Classify, Regress, MultiInference; gRPC and REST "
             "together) one model may have in flight; more fail at once with UNAVAILABLE. "
             "0 = unlimited.")
    grpc_max_concurrent_rpcs: int = _flag(
        1024, "pyserving: RPCs the gRPC server accepts at once (all services); more are "
              "answered RESOURCE_EXHAUSTED by gRPC. 0 = unlimited.")
    custom_op_libraries: str = _flag(
        "", "pyserving: comma-separated compiled TensorFlow op libraries (.so), loaded as "
            "tf.load_op_library loads them before any model loads; one that cannot be loaded "
            "fails start-up. TensorFlow Text's ops need no flag: pip install 'pyserving[text]'.")
    rollout_config_file: str = _flag(
        "", "pyserving: text-format pyserving.RolloutConfig (protos/pyserving/rollout.proto): "
            "how requests that name no version are split between versions, mirrored to a "
            "shadow version and guarded. Invalid at start-up: the server does not start.")
    rollout_config_poll_wait_seconds: int = _flag(
        10, "pyserving: seconds between re-reads of --rollout_config_file (0 reads it once); "
            "an invalid file is logged and the rollouts in force stay.")
    request_log_max_file_bytes: int = _flag(
        128 << 20, "pyserving: size at which a request log file (ModelConfig.logging_config) "
                   "is closed and the next one started.")
    request_log_queue_size: int = _flag(
        4096, "pyserving: request log records waiting for the writer at most; past it new "
              "records are dropped (and counted), never a request delayed.")
    enable_tracing: bool = _flag(
        False, "pyserving: OpenTelemetry traces of requests (needs pyserving[tracing]), "
               "configured by the standard OTEL_* environment variables (exporter, endpoint, "
               "sampler, service name); a caller's W3C traceparent continues its trace.")
    log_format: str = _flag(
        "text", "pyserving: 'text', or 'json' for one JSON object per log line; lines about a "
                "request carry its request ID (x-request-id) and trace ID.")

    @property
    def tags(self) -> tuple[str, ...]:
        # str_util::Split as server.cc calls it: no trimming, empty tags kept ("serve," asks
        # for a MetaGraphDef tagged "serve" and ""); the tag set holds each tag once.
        return tuple(dict.fromkeys(self.saved_model_tags.split(",")))

    def replace(self, **changes: Any) -> ServerOptions:
        return dataclasses.replace(self, **changes)


# Flags that parse and keep their meaning for launch scripts, but change nothing yet.
INERT_FLAGS = frozenset({
    "flush_filesystem_caches",
    "use_alts_credentials", "platform_config_file",
    "remove_unused_fields_from_bundle_metagraph", "prefer_tflite_model", "num_tflite_pools",
    "num_tflite_interpreters_per_pool", "xla_cpu_compilation_enabled",
    "xla_gpu_compilation_enabled", "enable_profiler", "thread_pool_factory_config_file",
    "mixed_precision", "skip_initialize_tpu",
})


def parse_bool(text: str) -> bool:
    """TensorFlow's flag syntax for booleans: true/false/1/0."""
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean value: {text!r}")


class _FlagParser(argparse.ArgumentParser):
    """Bad flag values fail as in tensorflow_model_server: the error on stderr, the usage on
    stdout, exit status 255 (main returns -1)."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(re.sub(r"^argument [^:]+: ", "", message) + "\n")
        self.print_help(sys.stdout)
        self.exit(255)


def _typed(kind: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    """A flag value converter whose error is TensorFlow's flag parser's."""
    def convert(text: str) -> Any:
        try:
            return kind(text)
        except (ValueError, argparse.ArgumentTypeError):
            raise argparse.ArgumentTypeError(
                f"Couldn't interpret value {text} for flag {name}.") from None
    return convert


def build_parser(prog: str = "pyserving") -> argparse.ArgumentParser:
    parser = _FlagParser(
        prog=prog,
        description="A TensorFlow Serving compatible model server. Accepts "
                    "tensorflow_model_server's flags (--flag=value or --flag value).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    for spec in dataclasses.fields(ServerOptions):
        help_text = spec.metadata["help"]
        if spec.name in INERT_FLAGS:
            help_text += " [accepted; not implemented yet]"
        flag = f"--{spec.name}"
        if spec.type in ("bool", bool):
            parser.add_argument(flag, type=_typed(parse_bool, spec.name), nargs="?",
                                const=True, default=spec.default, help=help_text,
                                metavar="BOOL")
        else:
            kind = {"int": int, "float": float, "str": str}[str(spec.type)]
            parser.add_argument(flag, type=_typed(kind, spec.name), default=spec.default,
                                help=help_text)
    return parser


def parse_options(argv: Sequence[str] | None = None) -> tuple[ServerOptions, list[str]]:
    """Parse flags; returns the options and the arguments that were not recognised."""
    parser = build_parser()
    namespace, unknown = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    return ServerOptions(**vars(namespace)), unknown


def explicitly_set_inert_flags(options: ServerOptions) -> list[str]:
    """Names of not-yet-implemented flags whose value differs from the default."""
    defaults = ServerOptions()
    return sorted(name for name in INERT_FLAGS
                  if getattr(options, name) != getattr(defaults, name))
