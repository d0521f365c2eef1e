"""The command line, run as tensorflow_model_server is run: a separate process, read via stderr.

Each test starts `python -m pyserving.server` with the flags TF Serving's
tensorflow_model_server_test.py passes; every process is stopped (then killed) in teardown.
"""

from __future__ import annotations

import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from server_process import (
    RUNNING_TCP,
    SERVER_COMMAND,
    START_TIMEOUT,
    Launcher,
    ServerProcess,
    assert_clean_startup_failure,
    startup_failure_line,
)
from support import TESTDATA

RPC_TIMEOUT = 20.0
MODEL_VERSION = 123
# testGoodGrpcChannelArgs' arguments, and the one RunServer always appends.
CHANNEL_ARGUMENTS = ("grpc.max_connection_age_ms=2000,grpc.lb_policy_name=grpclb,"
                     "grpc.so_reuseaddr=1")

# Every flag tensorflow_model_server's main.cc defines.
TF_SERVING_FLAGS = (
    "port", "grpc_socket_path", "rest_api_port", "rest_api_num_threads",
    "rest_api_timeout_in_ms", "rest_api_enable_cors_support", "enable_batching",
    "allow_version_labels_for_unavailable_models", "batching_parameters_file",
    "enable_per_model_batching_parameters", "model_config_file",
    "model_config_file_poll_wait_seconds", "model_name", "model_base_path", "num_load_threads",
    "num_unload_threads", "max_num_load_retries", "load_retry_interval_micros",
    "file_system_poll_wait_seconds", "flush_filesystem_caches",
    "tensorflow_session_parallelism", "tensorflow_session_config_file",
    "tensorflow_intra_op_parallelism", "tensorflow_inter_op_parallelism",
    "use_alts_credentials", "ssl_config_file", "platform_config_file",
    "per_process_gpu_memory_fraction", "saved_model_tags", "grpc_channel_arguments",
    "grpc_max_threads", "enable_model_warmup", "num_request_iterations_for_warmup", "version",
    "monitoring_config_file", "remove_unused_fields_from_bundle_metagraph",
    "prefer_tflite_model", "num_tflite_pools", "num_tflite_interpreters_per_pool",
    "enable_signature_method_name_check", "xla_cpu_compilation_enabled",
    "xla_gpu_compilation_enabled", "enable_profiler", "thread_pool_factory_config_file",
    "mixed_precision", "skip_initialize_tpu", "enable_grpc_healthcheck_service",
    "enable_serialization_as_tensor_content",
)






@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launcher]:
    launcher = Launcher(tmp_path)
    yield launcher
    launcher.close()


@pytest.fixture
def stub_for(channel_to: Callable[[str], grpc.Channel]
             ) -> Callable[[str], prediction_service_pb2_grpc.PredictionServiceStub]:
    return lambda target: prediction_service_pb2_grpc.PredictionServiceStub(channel_to(target))


def predict_y(stub: prediction_service_pb2_grpc.PredictionServiceStub, model_name: str,
              x: float = 2.0) -> tuple[float, int]:
    """TF Serving's VerifyPredictRequest: returns y and the version that answered."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = "serving_default"
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].float_val.append(x)
    request.inputs["x"].tensor_shape.dim.add().size = 1
    request.output_filter.append("y")
    response = stub.Predict(request, RPC_TIMEOUT, wait_for_ready=True)
    y = response.outputs["y"]
    assert y.dtype == types_pb2.DT_FLOAT
    assert len(y.float_val) == 1
    assert response.model_spec.name == model_name
    return y.float_val[0], response.model_spec.version.value






# Flags that answer without a model.

def test_help_lists_every_flag_quickly() -> None:
    started = time.monotonic()
    result = subprocess.run([*SERVER_COMMAND, "--help"], capture_output=True, text=True,
                            timeout=30)
    assert time.monotonic() - started < 5.0
    assert result.returncode == 0
    for flag in TF_SERVING_FLAGS:
        assert re.search(rf"--{flag}\b", result.stdout), flag


def test_help_does_not_import_tensorflow() -> None:
    result = subprocess.run([sys.executable, "-X", "importtime", *SERVER_COMMAND[1:], "--help"],
                            capture_output=True, text=True, timeout=30)
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert "pyserving.server.cli" in imported
    assert not {name for name in imported if name.split(".")[0] == "tensorflow"}


def test_version() -> None:
    result = subprocess.run([*SERVER_COMMAND, "--version"], capture_output=True, text=True,
                            timeout=START_TIMEOUT)
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0].startswith("TensorFlow ModelServer: ")
    assert re.fullmatch(r"TensorFlow Library: \d+\.\d+\.\S+", lines[1])


# Serving.

@pytest.fixture(scope="module")
def tf_serving_test_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server launched as TF Serving's RunServer launches it (with testGoodGrpcChannelArgs'
    channel arguments), plus a flag tensorflow_model_server does not know."""
    root = tmp_path_factory.mktemp("tf_serving_test_server")
    base = root / "saved_model_half_plus_two_cpu"
    shutil.copytree(TESTDATA / base.name, base)
    for path in [base, *base.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)
    launcher = Launcher(root)
    yield launcher("--port=0", "--rest_api_timeout_in_ms=5000", "--model_name=default",
                   f"--model_base_path={base}", f"--grpc_channel_arguments={CHANNEL_ARGUMENTS}",
                   "--no_such_flag=1")
    launcher.close()


def test_serves_predict_on_logged_port_with_tf_serving_test_flags(
        tf_serving_test_server: ServerProcess, stub_for: Callable) -> None:
    # Includes --grpc_channel_arguments as testGoodGrpcChannelArgs and RunServer pass it.
    stub = stub_for(tf_serving_test_server.tcp_target())
    assert predict_y(stub, "default") == (3.0, MODEL_VERSION)


def test_unknown_flag_is_reported_and_ignored(tf_serving_test_server: ServerProcess,
                                              stub_for: Callable) -> None:
    target = tf_serving_test_server.tcp_target()
    # as tensorflow_model_server: the first one named and the usage on stdout, then it starts
    assert tf_serving_test_server.stdout().startswith("unknown argument: --no_such_flag=1\nusage: ")
    assert predict_y(stub_for(target), "default") == (3.0, MODEL_VERSION)


def test_grpc_socket_path_serves_over_unix_socket(
        launch: Launcher, testdata_model: Callable[..., str], stub_for: Callable,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    # A short directory: UNIX socket paths are limited to about 100 bytes.
    socket_path = tmp_path_factory.mktemp("uds") / "s.sock"
    server = launch("--port=0", f"--grpc_socket_path={socket_path}",
                    f"--model_base_path={testdata_model('saved_model_half_plus_two_cpu')}")
    server.wait_for_log(re.compile(
        re.escape(f"Running gRPC ModelServer at UNIX socket {socket_path} ...")))
    assert predict_y(stub_for(f"unix:{socket_path}"), "default") == (3.0, MODEL_VERSION)
    # As in TF Serving, --port=0 with a socket path means no TCP port.
    assert not RUNNING_TCP.search(server.stderr())


def test_good_model_config_serves_both_models(launch: Launcher, tmp_path: Path,
                                              testdata_model: Callable[..., str],
                                              stub_for: Callable) -> None:
    config = (TESTDATA / "good_model_config.txt").read_text()
    config = config.replace("${TEST_HALF_PLUS_TWO_DIR}",
                            testdata_model("saved_model_half_plus_two_cpu"))
    config = config.replace("${TEST_HALF_PLUS_THREE_DIR}",
                            testdata_model("saved_model_half_plus_three"))
    config_path = tmp_path / "good_model_config.conf"
    config_path.write_text(config)
    server = launch("--port=0", f"--model_config_file={config_path}")
    stub = stub_for(server.tcp_target())
    assert predict_y(stub, "half_plus_two") == (3.0, MODEL_VERSION)
    assert predict_y(stub, "half_plus_three") == (4.0, MODEL_VERSION)


def test_sigterm_exits_zero(launch: Launcher, testdata_model: Callable[..., str]) -> None:
    server = launch("--port=0",
                    f"--model_base_path={testdata_model('saved_model_half_plus_two_cpu')}")
    server.tcp_target()
    # At once: from the "Running gRPC ModelServer" line on, SIGTERM is a graceful stop.
    server.popen.send_signal(signal.SIGTERM)
    assert server.wait_for_exit() == 0
    assert "Traceback" not in server.stderr()


# Start-up waits for models without versions, as tensorflow_model_server does.

def publish_version(source: Path, base: Path, version: int) -> None:
    """Make ``source`` version ``version`` of ``base`` in one rename (base may not exist)."""
    staging = base.parent / f"staging-{base.name}"
    shutil.copytree(source, staging / str(version))
    if base.exists():
        (staging / str(version)).rename(base / str(version))
        staging.rmdir()
    else:
        staging.rename(base)


def specific_policy_config(tmp_path: Path, base: Path, version: int) -> Path:
    path = tmp_path / "specific.config"
    path.write_text(f'model_config_list {{ config {{ name: "default" base_path: "{base}" '
                    f'model_platform: "tensorflow" '
                    f'model_version_policy {{ specific {{ versions: {version} }} }} }} }}')
    return path


def no_base_path(tmp_path: Path, base: Path) -> tuple[list[str], str]:
    return ([f"--model_base_path={base}"],
            "FileSystemStoragePathSource encountered a filesystem access error: Could not find "
            f"base path {base} for servable default with error NOT_FOUND: {base} not found")


def no_version_dirs(tmp_path: Path, base: Path) -> tuple[list[str], str]:
    (base / "not_a_version").mkdir(parents=True)
    return ([f"--model_base_path={base}"],
            f"No versions of servable default found under base path {base}. Did you forget to "
            "name your leaf directory as a number (eg. '/1/')?")


def no_specific_version(tmp_path: Path, base: Path) -> tuple[list[str], str]:
    (base / "122").mkdir(parents=True)
    return ([f"--model_config_file={specific_policy_config(tmp_path, base, MODEL_VERSION)}"],
            f"Version {MODEL_VERSION} of servable default, which was requested to be served as "
            "a 'specific' version in the servable's version policy, was not found in the file "
            "system")


@pytest.mark.parametrize("setup", [no_base_path, no_version_dirs, no_specific_version],
                         ids=lambda setup: setup.__name__)
def test_start_up_waits_until_a_version_appears(launch: Launcher, tmp_path: Path,
                                                stub_for: Callable, setup: Callable) -> None:
    base = tmp_path / "models" / "half_plus_two"
    flags, logged = setup(tmp_path, base)
    server = launch("--port=0", "--file_system_poll_wait_seconds=1", *flags)
    first = server.wait_for_log(re.compile(re.escape(logged)))
    server.wait_for_log(re.compile(re.escape(logged)), after=first.end())  # polled again
    assert server.popen.poll() is None
    assert not RUNNING_TCP.search(server.stderr())
    publish_version(TESTDATA / "saved_model_half_plus_two_cpu" / "00000123", base,
                    MODEL_VERSION)
    assert predict_y(stub_for(server.tcp_target()), "default") == (3.0, MODEL_VERSION)
    assert server.stdout() == ""


def test_negative_poll_wait_never_polls_and_waits_at_start_up(
        launch: Launcher, testdata_model: Callable[..., str]) -> None:
    server = launch("--port=0", "--file_system_poll_wait_seconds=-1",
                    f"--model_base_path={testdata_model('saved_model_half_plus_two_cpu')}")
    server.wait_for_log(re.compile(re.escape(" (Re-)adding model: default")))
    # Still starting: a signal ends it at once, as it ends tensorflow_model_server. (That a
    # negative period never scans, so the version present never loads, is
    # tests/unit/test_source.py's to show: here only the end of the wait is visible.)
    server.popen.send_signal(signal.SIGTERM)
    assert server.wait_for_exit() == -signal.SIGTERM
    stderr = server.stderr()
    assert not RUNNING_TCP.search(stderr)
    assert "Successfully loaded servable version" not in stderr


# Start-up failures.

def test_bad_flag_value_prints_usage_and_exits_255() -> None:
    result = subprocess.run([*SERVER_COMMAND, "--file_system_poll_wait_seconds=abc"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 255
    assert result.stdout.startswith("usage: ")
    assert "--file_system_poll_wait_seconds" in result.stdout
    assert result.stderr == ("Couldn't interpret value abc for flag "
                             "file_system_poll_wait_seconds.\n")


def test_missing_model_config_file(launch: Launcher, tmp_path: Path) -> None:
    missing = tmp_path / "no_such.config"
    process = launch("--port=0", f"--model_config_file={missing}")
    assert startup_failure_line(process) == f"NOT_FOUND: {missing}; No such file or directory"


def test_bad_model_config(launch: Launcher, tmp_path: Path) -> None:
    config_path = tmp_path / "bad_model_config.txt"
    config_path.write_bytes((TESTDATA / "bad_model_config.txt").read_bytes())
    process = launch("--port=0", f"--model_config_file={config_path}")
    assert startup_failure_line(process) == \
        f"INVALID_ARGUMENT: Invalid protobuf file: '{config_path}'"
    # The parser's own complaint goes to the log (stderr), as protobuf's logging does.
    assert "Error parsing text-format tensorflow.serving.ModelServerConfig" in process.stderr()


def test_versions_that_fail_to_load_are_all_listed(launch: Launcher, tmp_path: Path,
                                                    testdata_model: Callable[..., str]) -> None:
    """Load errors as TF Serving's loader words them, wrapped as ServerCore's start-up wait
    (ConnectSourcesWithFastInitialLoad) reports them; retries first (--max_num_load_retries)."""
    bad = testdata_model("bad_half_plus_two")  # a session bundle: export.meta, no SavedModel
    empty = tmp_path / "empty_version"
    (empty / "7").mkdir(parents=True)
    config = tmp_path / "two_bad.config"
    config.write_text("model_config_list { "
                      f'config {{ name: "session_bundle" base_path: "{bad}" '
                      'model_platform: "tensorflow" } '
                      f'config {{ name: "empty" base_path: "{empty}" '
                      'model_platform: "tensorflow" } }')
    process = launch("--port=0", f"--model_config_file={config}", "--max_num_load_retries=1",
                     "--load_retry_interval_micros=100000")
    assert startup_failure_line(process) == (
        "UNKNOWN: 2 servable(s) did not become available: {"
        "{{name: empty version: 7} due to error: NOT_FOUND: Specified file path does not "
        "appear to contain a SavedModel bundle (should have a file called `saved_model.pb`)\n"
        f"Specified file path: {empty / '7'}}}, "
        "{{name: session_bundle version: 123} due to error: UNIMPLEMENTED: Session Bundle is "
        "deprecated and removed.}, }")


@pytest.mark.parametrize("tags, shown", [("foo", "foo"), ("serve,", "serve ")])
def test_tags_that_match_no_meta_graph_are_not_found(launch: Launcher, tags: str, shown: str,
                                                     testdata_model: Callable[..., str]) -> None:
    # server.cc splits --saved_model_tags without trimming; reader.cc FindMetaGraphDef's text
    model = testdata_model("saved_model_half_plus_two_cpu")
    process = launch("--port=0", f"--model_base_path={model}", f"--saved_model_tags={tags}",
                     "--max_num_load_retries=0")
    assert startup_failure_line(process) == (
        "UNKNOWN: 1 servable(s) did not become available: {{{name: default version: 123} due "
        f"to error: NOT_FOUND: Could not find meta graph def matching supplied tags: {{ {shown} "
        "}. To inspect available tag-sets in the SavedModel, please use the SavedModel CLI: "
        "`saved_model_cli`}, }")


def test_conflicting_parallelism_flags_fail_start_up_cleanly(launch: Launcher,
                                                             testdata_model: Callable[..., str]
                                                             ) -> None:
    base = testdata_model("saved_model_half_plus_two_cpu")
    process = launch("--port=0", f"--model_base_path={base}",
                     "--tensorflow_session_parallelism=2",
                     "--tensorflow_intra_op_parallelism=2",
                     "--tensorflow_inter_op_parallelism=2")
    assert_clean_startup_failure(process, "You cannot configure all.")
