"""Graceful shutdown of the command-line server: SIGTERM/SIGINT stop new RPCs, let in-flight
ones finish within --shutdown_grace_period_seconds, unload the models and exit 0.

The server is a separate process (as tensorflow_model_server is run) serving a model built
here whose Predict busy-waits for ``seconds`` before answering y = 0.5x + 2.
"""

from __future__ import annotations

import re
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from server_process import Launcher
from support import free_port, metrics_page_samples, wait_until

MODEL = "slow"
RPC_TIMEOUT = 60.0
EXIT_TIMEOUT = 30.0
STOPPING = re.compile(r"stopping the gRPC server: in-flight RPCs have \S+ s to finish")
UNLOADED = f"Unloaded servable version {{name: {MODEL} version: 1}}"

PredictionStub = prediction_service_pb2_grpc.PredictionServiceStub


class SlowHalfPlusTwo(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x"),
                                  tf.TensorSpec([], tf.float32, name="seconds")])
    def predict(self, x: tf.Tensor, seconds: tf.Tensor) -> dict[str, tf.Tensor]:
        started = tf.timestamp()
        spins = tf.while_loop(lambda i: tf.timestamp() - started < tf.cast(seconds, tf.float64),
                              lambda i: [i + 1], [tf.constant(0)])
        with tf.control_dependencies(spins):
            return {"y": x * 0.5 + 2.0}


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("slow") / MODEL
    module = SlowHalfPlusTwo()
    tf.saved_model.save(module, str(base / "1"), signatures={"serving_default": module.predict})
    return base


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launcher]:
    launcher = Launcher(tmp_path)
    yield launcher
    launcher.close()


@pytest.fixture
def start_slow_server(launch: Launcher, slow_model: Path, channel_to: Callable, tmp_path: Path
                      ) -> Callable[..., tuple[object, PredictionStub, Callable[[], int]]]:
    """Launch a server of the slow model; returns, once it answers, its process, a stub and
    how many Predict RPCs it is running now (from its metrics page)."""
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true path: "/metrics" }')

    def start(*flags: str) -> tuple[object, PredictionStub, Callable[[], int]]:
        rest_port = free_port()
        process = launch("--port=0", f"--model_name={MODEL}", f"--model_base_path={slow_model}",
                         f"--rest_api_port={rest_port}", f"--monitoring_config_file={monitoring}",
                         *flags)
        stub = PredictionStub(channel_to(process.tcp_target()))
        assert y_of(stub.Predict(slow_request(0.0), RPC_TIMEOUT)) == 3.0

        def in_flight() -> int:
            url = f"http://127.0.0.1:{rest_port}/metrics"
            with urllib.request.urlopen(url, timeout=RPC_TIMEOUT) as page:
                samples = metrics_page_samples(page.read().decode())
            labels = frozenset({("model_name", MODEL), ("API", "Predict"),
                                ("entrypoint", "GRPC")})
            return int(samples.get(("pyserving_inflight_requests", labels), 0))

        return process, stub, in_flight

    return start


def wait_until_refused(stub: PredictionStub) -> None:
    """Until a new RPC is refused with UNAVAILABLE (one let in before the stop still runs)."""

    def refused() -> bool:
        try:
            assert y_of(stub.Predict(slow_request(0.0), RPC_TIMEOUT)) == 3.0
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE, error
            return True
        return False

    wait_until(refused, "new RPCs to be refused")


def slow_request(seconds: float, x: float = 2.0) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs["x"].CopyFrom(tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT, float_val=[x], tensor_shape={"dim": [{"size": 1}]}))
    request.inputs["seconds"].CopyFrom(tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT,
                                                              float_val=[seconds]))
    return request


def y_of(response: predict_pb2.PredictResponse) -> float:
    return response.outputs["y"].float_val[0]


def exit_code_and_seconds(process: object, since: float) -> tuple[int, float]:
    code = process.popen.wait(EXIT_TIMEOUT)
    return code, time.monotonic() - since


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_lets_in_flight_requests_finish_then_exits_zero(start_slow_server, signum):
    grace = 30.0
    process, stub, running = start_slow_server(f"--shutdown_grace_period_seconds={grace}")
    in_flight = [stub.Predict.future(slow_request(1.0, x=float(x)), RPC_TIMEOUT)
                 for x in range(4)]
    wait_until(lambda: running() == 4, "the requests to reach the server")
    assert not any(future.done() for future in in_flight)

    signalled = time.monotonic()
    process.popen.send_signal(signum)
    process.wait_for_log(STOPPING)
    wait_until_refused(stub)

    # None of the in-flight requests is dropped.
    assert [y_of(future.result()) for future in in_flight] == [2.0, 2.5, 3.0, 3.5]
    code, seconds = exit_code_and_seconds(process, signalled)
    assert code == 0
    assert seconds < grace
    stderr = process.stderr()
    assert f"received {signum.name}, shutting down" in stderr
    assert UNLOADED in stderr
    assert stderr.index(UNLOADED) > stderr.index("stopping the gRPC server")
    assert "server stopped" in stderr
    assert "Traceback" not in stderr


def test_a_request_longer_than_the_grace_period_is_cancelled_and_the_server_exits(
        start_slow_server):
    process, stub, running = start_slow_server("--shutdown_grace_period_seconds=0.5")
    long_request = stub.Predict.future(slow_request(RPC_TIMEOUT - 10), RPC_TIMEOUT)
    wait_until(lambda: running() == 1, "the request to reach the server")
    assert not long_request.done()

    signalled = time.monotonic()
    process.popen.send_signal(signal.SIGTERM)
    # The client hears at once that the call is over; it does not hang until its deadline.
    error = long_request.exception(timeout=10)
    assert isinstance(error, grpc.RpcError)
    assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    code, seconds = exit_code_and_seconds(process, signalled)
    assert code == 0
    # Exits promptly: the running TensorFlow step is cancelled, not waited for.
    assert seconds < 10
    stderr = process.stderr()
    assert UNLOADED in stderr
    assert "Traceback" not in stderr
