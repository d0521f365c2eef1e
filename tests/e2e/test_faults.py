"""Faults over real channels: a TensorFlow op that fails on some inputs fails only that request
(batched or not); a base path that vanishes, a version that is garbage, truncated, or removed
mid-load leaves the loaded versions serving; a kill -9 during a load leaves nothing to clean.

Expected behaviour follows TF Serving's FileSystemStoragePathSource (a missing base path emits
nothing, so loaded versions stay) and its loader harness (a failed load ends in END with the
error, reported by GetModelStatus). tests/test_lifecycle.py covers the missing-file and
half-written cases; tests/test_batching.py the single failing request in a batch.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.data.experimental.ops import testing as tf_data_testing
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)

from pyserving.client.tensors import fill_tensor_proto, ndarray_from_tensor_proto
from support import TESTDATA, free_port, post_json, wait_for_log, wait_until

MODEL = "checked"
TIMEOUT = 20.0
WAIT_SECONDS = 30.0
NAN_MESSAGE = "x is not finite : Tensor had NaN values"
INF_MESSAGE = "x is not finite : Tensor had Inf values"
TWO_VERSIONS = TESTDATA / "saved_model_half_plus_two_2_versions"
DATA_LOSS_CODE = 15  # tensorflow.error.Code
DEVICES_LOGGED = r"no GPU visible to TensorFlow|models are placed on"

State = get_model_status_pb2.ModelVersionStatus
Stub = prediction_service_pb2_grpc.PredictionServiceStub


class _Checked(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
    def checked(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": tf.debugging.check_numerics(x, "x is not finite") * 2.0}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])
    def sleep(self, ms: tf.Tensor) -> dict[str, tf.Tensor]:
        # The sleep dataset sleeps before the element and again before end-of-sequence.
        slept = tf.data.Dataset.from_tensors(ms).apply(
            tf_data_testing.sleep(tf.reduce_max(ms) * 500)).get_single_element()
        return {"ms": slept}


@pytest.fixture(scope="module")
def checked_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """serving_default: y = 2 x, failing in TensorFlow on NaN or Inf; sleep: max(ms) ms."""
    module = _Checked()
    path = tmp_path_factory.mktemp("checked") / "1"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.checked,
                                                       "sleep": module.sleep})
    return path


def copy_tree(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    for path in [target, *target.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)
    return target


def publish(source: Path, base: Path, version: int) -> Path:
    """Publish a version atomically: copy under a non-numeric name, then rename it."""
    return copy_tree(source, base / f"incoming-{version}").rename(base / str(version))


def write_slow_warmup(version_dir: Path, ms: int, times: int = 1) -> None:
    """A warmup file whose replay makes the version's load take ``times`` x ``ms``."""
    (version_dir / "assets.extra").mkdir(exist_ok=True)
    record = prediction_log_pb2.PredictionLog()
    request = record.predict_log.request
    request.model_spec.signature_name = "sleep"
    fill_tensor_proto(request.inputs["ms"], np.array([ms], np.int64))
    path = version_dir / "assets.extra" / "tf_serving_warmup_requests"
    with tf.io.TFRecordWriter(str(path)) as writer:
        for _ in range(times):
            writer.write(record.SerializeToString())


def is_open_here(path: Path, pid: int | str = "self") -> bool:
    """Whether this process (the in-process server), or process ``pid``, has ``path`` open."""
    fds = Path(f"/proc/{pid}/fd")
    for fd in fds.iterdir():
        try:
            if os.readlink(fd) == str(path):
                return True
        except OSError:  # closed meanwhile
            continue
    return False


def checked_request(x: list[float], model: str = MODEL) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    fill_tensor_proto(request.inputs["x"], np.array(x, np.float32))
    return request


def half_plus_two_request(version: int | None = None) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "default"
    if version is not None:
        request.model_spec.version.value = version
    fill_tensor_proto(request.inputs["x"], np.array([2.0], np.float32))
    return request


def served(stub: Stub, version: int | None = None) -> int:
    """The version that answered a half_plus_two Predict (y = 0.5 x + 2 = 3)."""
    response = stub.Predict(half_plus_two_request(version), TIMEOUT)
    assert list(response.outputs["y"].float_val) == [3.0]
    return response.model_spec.version.value


def statuses(channel: grpc.Channel, model: str = "default") -> dict[int, State]:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    return {status.version: status
            for status in stub.GetModelStatus(request, TIMEOUT).model_version_status}


def wait_for_states(channel: grpc.Channel, expected: dict[int, int]) -> dict[int, State]:
    found: dict[int, State] = {}

    def reached() -> bool:
        found.update(statuses(channel))
        return all(v in found and found[v].state == s for v, s in expected.items())

    wait_until(reached, f"states {expected}", WAIT_SECONDS, interval=0.05)
    return found


# --- a failing op fails only its own request -------------------------------------------------


def test_failing_op_fails_only_its_request_unbatched(serve, channel_to, checked_model, tmp_path):
    base = tmp_path / MODEL
    copy_tree(checked_model, base / "1")
    server = serve(model_name=MODEL, model_base_path=str(base), grpc_max_threads=8)
    stub = Stub(channel_to(server.grpc_target))
    inputs = [[1.0, 2.0], [float("nan")], [3.0], [float("inf"), 1.0], [4.0, 5.0, 6.0]]
    futures = [stub.Predict.future(checked_request(x), TIMEOUT) for x in inputs]
    for x, future in zip(inputs, futures, strict=False):
        if np.all(np.isfinite(x)):
            np.testing.assert_array_equal(
                ndarray_from_tensor_proto(future.result().outputs["y"]), np.array(x) * 2)
        else:
            assert future.code() == grpc.StatusCode.INVALID_ARGUMENT
            expected = NAN_MESSAGE if np.isnan(x).any() else INF_MESSAGE
            assert future.details().startswith(expected)  # TensorFlow's text, node appended


def test_failing_requests_of_grpc_and_rest_callers_in_one_batch_fail_alone(
        serve, channel_to, checked_model, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="pyserving.server.batching.batcher")
    base = tmp_path / MODEL
    copy_tree(checked_model, base / "1")
    batching = tmp_path / "batching.txt"
    batching.write_text("max_batch_size { value: 16 }\nbatch_timeout_micros { value: 300000 }\n")
    rest_port = free_port()
    server = serve(model_name=MODEL, model_base_path=str(base), enable_batching=True,
                   batching_parameters_file=str(batching), grpc_max_threads=16,
                   rest_api_port=rest_port)
    stub = Stub(channel_to(server.grpc_target))
    url = f"http://127.0.0.1:{rest_port}/v1/models/{MODEL}:predict"
    grpc_inputs = [[1.0], [float("nan"), 2.0], [3.0, 4.0], [float("inf")]]
    with ThreadPoolExecutor(2) as pool:
        rest_good = pool.submit(post_json, url, {"instances": [7.0, 8.0]})
        rest_bad = pool.submit(post_json, url, {"instances": [float("nan")]})
        futures = [stub.Predict.future(checked_request(x), TIMEOUT) for x in grpc_inputs]
        assert rest_good.result() == (200, {"predictions": [14.0, 16.0]})
        status, body = rest_bad.result()
        assert status == 400 and body["error"].startswith(NAN_MESSAGE)
    np.testing.assert_array_equal(
        ndarray_from_tensor_proto(futures[0].result().outputs["y"]), [2.0])
    np.testing.assert_array_equal(
        ndarray_from_tensor_proto(futures[2].result().outputs["y"]), [6.0, 8.0])
    assert futures[1].code() == grpc.StatusCode.INVALID_ARGUMENT
    assert futures[1].details().startswith(NAN_MESSAGE)
    assert futures[3].code() == grpc.StatusCode.INVALID_ARGUMENT
    assert futures[3].details().startswith(INF_MESSAGE)
    # They did share a batch: it failed and was re-run request by request.
    assert any(re.match(r"batch of [3-6] failed", record.getMessage())
               for record in caplog.records)


# --- the file system changes under a serving model -------------------------------------------


@pytest.mark.parametrize("vanish", ["removed", "replaced_by_a_file"])
def test_vanished_base_path_keeps_loaded_versions_serving(serve, channel_to, tmp_path, caplog,
                                                          vanish):
    caplog.set_level(logging.WARNING, logger="pyserving.server.source")
    config = tmp_path / "models.config"
    base = copy_tree(TWO_VERSIONS, tmp_path / "half_plus_two")
    config.write_text(f'model_config_list {{ config {{ name: "default" base_path: "{base}" '
                      'model_platform: "tensorflow" model_version_policy { all {} } } }\n')
    server = serve(model_config_file=str(config), file_system_poll_wait_seconds=1)
    channel = channel_to(server.grpc_target)
    stub = Stub(channel)
    assert {served(stub, 123), served(stub, 124)} == {123, 124}
    shutil.rmtree(base)
    if vanish == "replaced_by_a_file":
        base.write_text("not a directory")
    wait_until(lambda: any(str(base) in record.getMessage() for record in caplog.records),
               "a poll to report the missing base path", WAIT_SECONDS)
    polls = server.source.polls
    wait_until(lambda: server.source.polls >= polls + 2, "more polls", WAIT_SECONDS)
    # Still nothing unloads.
    assert {v: s.state for v, s in statuses(channel).items()} == {
        124: State.AVAILABLE, 123: State.AVAILABLE}
    assert (served(stub, 123), served(stub, 124), served(stub)) == (123, 124, 124)
    message = next(r.getMessage() for r in caplog.records if str(base) in r.getMessage())
    if vanish == "removed":
        assert message == ("FileSystemStoragePathSource encountered a filesystem access "
                           f"error: Could not find base path {base} for servable default with "
                           f"error NOT_FOUND: {base} not found")
    else:
        assert message.endswith(f"error: {base}; Not a directory")
    # The base path comes back with one version: the other one unloads as usual.
    base.unlink(missing_ok=True)
    copy_tree(TWO_VERSIONS / "00000124", base / "124")
    wait_for_states(channel, {124: State.AVAILABLE, 123: State.END})
    assert served(stub) == 124


def _garbage(version_dir: Path) -> None:
    (version_dir / "saved_model.pb").write_bytes(b"\x08\x96\x01 this is not a SavedModel")


def _truncated(version_dir: Path) -> None:
    model = version_dir / "saved_model.pb"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])


@pytest.mark.parametrize("damage", [_garbage, _truncated], ids=["garbage", "truncated"])
def test_unreadable_version_reports_the_error_and_the_old_one_keeps_serving(
        serve, channel_to, tmp_path, damage):
    base = tmp_path / "half_plus_two"
    copy_tree(TWO_VERSIONS / "00000123", base / "123")
    server = serve(model_base_path=str(base), file_system_poll_wait_seconds=1,
                   max_num_load_retries=1, load_retry_interval_micros=100_000)
    channel = channel_to(server.grpc_target)
    stub = Stub(channel)
    staged = copy_tree(TWO_VERSIONS / "00000124", base / "incoming")
    damage(staged)
    staged.rename(base / "124")
    found = wait_for_states(channel, {124: State.END, 123: State.AVAILABLE})
    # TensorFlow's ReadBinaryProto error, as TF Serving reports it.
    assert found[124].status.error_code == DATA_LOSS_CODE
    assert found[124].status.error_message == (
        f"Can't parse {base / '124' / 'saved_model.pb'} as binary proto")
    assert served(stub) == 123
    # Fixing the files in place does not reload it (as TF Serving); republishing does.
    polls = server.source.polls
    shutil.rmtree(base / "124")
    # A whole poll saw it gone (one under way may have listed it still).
    wait_until(lambda: server.source.polls >= polls + 2, "polls without 124", WAIT_SECONDS)
    wait_for_states(channel, {123: State.AVAILABLE})
    publish(TWO_VERSIONS / "00000124", base, 124)
    wait_for_states(channel, {124: State.AVAILABLE, 123: State.END})
    assert served(stub) == 124


def test_version_removed_during_its_load_ends_and_the_old_one_keeps_serving(
        serve, channel_to, tmp_path, checked_model):
    base = tmp_path / MODEL
    copy_tree(checked_model, base / "1")
    server = serve(model_name=MODEL, model_base_path=str(base), file_system_poll_wait_seconds=1)
    channel = channel_to(server.grpc_target)
    stub = Stub(channel)
    staged = copy_tree(checked_model, base / "incoming")
    write_slow_warmup(staged, ms=500, times=6)  # a 3 s load
    staged.rename(base / "2")

    def states() -> dict[int, int]:
        return {v: s.state for v, s in statuses(channel, MODEL).items()}

    # Remove it once its warmup replay (3 s) is under way: removed earlier, the missing
    # warmup file would make the load finish before the next poll could see the removal.
    warmup = base / "2" / "assets.extra" / "tf_serving_warmup_requests"
    wait_until(lambda: states().get(2) == State.LOADING and is_open_here(warmup),
               "the warmup replay of version 2", WAIT_SECONDS)
    shutil.rmtree(base / "2")

    def ended_while_1_serves() -> bool:
        response = stub.Predict(checked_request([1.0]), TIMEOUT)
        assert response.model_spec.version.value == 1
        return states() == {2: State.END, 1: State.AVAILABLE}

    wait_until(ended_while_1_serves, "version 2 to end", WAIT_SECONDS, interval=0.05)
    assert stub.Predict(checked_request([1.0]), TIMEOUT).model_spec.version.value == 1


# --- kill -9 during a load -------------------------------------------------------------------


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def _start(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as stderr:
        return subprocess.Popen([sys.executable, "-m", "pyserving.server", *args],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=stderr)


def _wait_for_log(process: subprocess.Popen, log: Path, pattern: str) -> re.Match[str]:
    return wait_for_log(lambda: log.read_text(errors="replace"), pattern, process)


def test_kill_9_during_a_load_then_restart_serves_cleanly(tmp_path, checked_model):
    base = tmp_path / MODEL
    version = copy_tree(checked_model, base / "1")
    write_slow_warmup(version, ms=500, times=6)  # a 3 s load
    before = _tree(base)
    args = ["--port=0", f"--model_name={MODEL}", f"--model_base_path={base}"]
    first = _start(args, tmp_path / "first.log")
    try:
        # Kill inside the 3 s load: while its warmup replay has the records file open.
        _wait_for_log(first, tmp_path / "first.log", DEVICES_LOGGED)
        warmup = version / "assets.extra" / "tf_serving_warmup_requests"
        wait_until(lambda: is_open_here(warmup, first.pid), "the warmup replay", WAIT_SECONDS)
        assert "Running gRPC ModelServer" not in (tmp_path / "first.log").read_text()
        os.kill(first.pid, signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert _tree(base) == before  # nothing was written next to the model
    second = _start(args, tmp_path / "second.log")
    try:
        port = _wait_for_log(second, tmp_path / "second.log",
                             r"Running gRPC ModelServer at 0\.0\.0\.0:(\d+)").group(1)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            response = Stub(channel).Predict(checked_request([1.5]), TIMEOUT)
            np.testing.assert_array_equal(ndarray_from_tensor_proto(response.outputs["y"]), [3.0])
            assert {v: s.state for v, s in statuses(channel, MODEL).items()} == {
                1: State.AVAILABLE}
    finally:
        second.send_signal(signal.SIGTERM)
        try:
            assert second.wait(30) == 0
        finally:
            if second.poll() is None:
                second.kill()
                second.wait()
    assert _tree(base) == before
