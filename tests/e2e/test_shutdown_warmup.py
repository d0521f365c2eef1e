"""SIGTERM while a new version warms up through the batcher (issue #24): the Kubernetes rollout
case. A version is copied in, its 1000 slow warmup records replay through --enable_batching,
and the server is told to stop with --shutdown_grace_period_seconds=5: it must exit 0 within
the grace period plus a small fixed margin (before: still running 30 s later, the warmup's
request queued in a batcher that had already stopped)."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2, prediction_service_pb2_grpc

from server_process import Launcher

MODEL = "slow_batched"
GRACE = 5.0
MARGIN = 5.0  # process exit, unloading, the interpreter's teardown
RECORD_SECONDS = 0.3  # each warmup record spins this long: 1000 records take 5 minutes
WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"


class SlowBatched(tf.Module):
    """y = 0.5x + 2, after spinning for the largest ``seconds`` of the batch; both inputs are
    batched (dimension 0), so the batcher queues the calls."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x"),
                                  tf.TensorSpec([None], tf.float32, name="seconds")])
    def predict(self, x: tf.Tensor, seconds: tf.Tensor) -> dict[str, tf.Tensor]:
        started = tf.timestamp()
        limit = tf.cast(tf.reduce_max(seconds), tf.float64)
        spins = tf.while_loop(lambda i: tf.timestamp() - started < limit,
                              lambda i: [i + 1], [tf.constant(0)])
        with tf.control_dependencies(spins):
            return {"y": x * 0.5 + 2.0}


def request(seconds: float) -> predict_pb2.PredictRequest:
    made = predict_pb2.PredictRequest()
    made.model_spec.name = MODEL
    for name, value in (("x", 2.0), ("seconds", seconds)):
        made.inputs[name].CopyFrom(tensor_pb2.TensorProto(
            dtype=types_pb2.DT_FLOAT, float_val=[value], tensor_shape={"dim": [{"size": 1}]}))
    return made


@pytest.fixture(scope="module")
def saved_version(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("slow_batched") / "export"
    module = SlowBatched()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.predict})
    return path


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launcher]:
    launcher = Launcher(tmp_path)
    yield launcher
    launcher.close()


def copy_in_with_warmup(saved: Path, base: Path, version: int) -> None:
    """Copy a version in as a deploy tool does (written aside, then renamed into place)."""
    staging = base.parent / f".staging-{version}"
    shutil.copytree(saved, staging)
    (staging / WARMUP_FILE).parent.mkdir(parents=True)
    log = prediction_log_pb2.PredictionLog()
    log.predict_log.request.CopyFrom(request(RECORD_SECONDS))
    with tf.io.TFRecordWriter(str(staging / WARMUP_FILE)) as writer:
        for _ in range(1000):
            writer.write(log.SerializeToString())
    staging.rename(base / str(version))


def test_sigterm_during_a_batched_warmup_exits_within_the_grace_period(
        launch: Launcher, saved_version: Path, tmp_path: Path, channel_to) -> None:
    base = tmp_path / "models" / MODEL
    base.mkdir(parents=True)
    shutil.copytree(saved_version, base / "1")
    process = launch("--port=0", f"--model_name={MODEL}", f"--model_base_path={base}",
                     "--enable_batching", "--file_system_poll_wait_seconds=1",
                     f"--shutdown_grace_period_seconds={GRACE:g}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel_to(process.tcp_target()))
    response = stub.Predict(request(0.0), 60, wait_for_ready=True)
    assert response.outputs["y"].float_val == [3.0]

    copy_in_with_warmup(saved_version, base, 2)
    process.wait_for_log(re.compile(r"Starting to read warmup data for model at \S*/2/"))
    signalled = time.monotonic()
    process.popen.send_signal(signal.SIGTERM)
    try:
        code = process.popen.wait(GRACE + MARGIN)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {GRACE + MARGIN:g} s after SIGTERM (grace {GRACE:g} s)")
    assert code == 0
    assert time.monotonic() - signalled < GRACE + MARGIN
    stderr = process.stderr()
    assert "Warmup stopped early: the server is shutting down" in stderr
    assert "server stopped" in stderr
    assert "Traceback" not in stderr
    with pytest.raises(grpc.RpcError):
        stub.Predict(request(0.0), 2)
