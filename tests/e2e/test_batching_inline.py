"""Issue 28 end to end: a lone request to a signature measured fast runs its batch on the event
loop, so it answers even while a slow signature's lone batch holds the only batch thread;
SIGTERM in a stream of such requests stops the server cleanly, every answer right or
UNAVAILABLE."""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from pyserving.client.tensors import fill_tensor_proto, ndarray_from_tensor_proto
from server_process import Launcher
from slow_models import slow_base, slow_model  # noqa: F401 (fixtures)
from support import free_port, wait_until

HALF = "saved_model_half_plus_two_cpu"
LONG_TIMEOUT = 5.0  # batch_timeout_micros, seconds: no request here may wait it out
SLOW_MS = 3000  # the slow signature's run, holding the only batch thread
RPC_TIMEOUT = 30.0
Stub = prediction_service_pb2_grpc.PredictionServiceStub


def parameters_file(tmp_path: Path) -> str:
    path = tmp_path / "batching.pbtxt"
    path.write_text("max_batch_size { value: 32 }\n"
                    f"batch_timeout_micros {{ value: {int(LONG_TIMEOUT * 1e6)} }}\n"
                    "num_batch_threads { value: 1 }\n")
    return str(path)


def half_request(x: list[float]) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half"
    fill_tensor_proto(request.inputs["x"], np.array([[v] for v in x], np.float32))
    return request


def half_y(response: predict_pb2.PredictResponse) -> list[float]:
    return ndarray_from_tensor_proto(response.outputs["y"]).ravel().tolist()


def rest_half(port: int, x: float) -> object:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models/half:predict",
                                     data=json.dumps({"instances": [[x]]}).encode())
    with urllib.request.urlopen(request, timeout=RPC_TIMEOUT) as response:
        return json.loads(response.read())


def until_inline(stub: Stub, runs_inline: Callable[[], bool]) -> None:
    """Lone requests, one after another, until the server runs the model's lone batches on
    its event loop (it measures 16 batch-thread runs first)."""
    def one_more() -> bool:
        assert half_y(stub.Predict(half_request([1.0]), RPC_TIMEOUT)) == [2.5]
        return runs_inline()
    wait_until(one_more, "half_plus_two's lone batches to run on the event loop", timeout=60)


def test_a_fast_lone_request_answers_while_a_slow_batch_holds_the_thread(
        serve, testdata_model, tmp_path, channel_to,
        slow_base):  # noqa: F811 (the fixture)
    config = tmp_path / "models.config"
    config.write_text("model_config_list { "
                      f'config {{ name: "half" base_path: "{testdata_model(HALF)}" '
                      'model_platform: "tensorflow" } '
                      f'config {{ name: "slow" base_path: "{slow_base}" '
                      'model_platform: "tensorflow" } }')
    server = serve(model_config_file=str(config), enable_batching=True,
                   batching_parameters_file=parameters_file(tmp_path),
                   rest_api_port=free_port())
    stub = Stub(channel_to(server.grpc_target))
    until_inline(stub, lambda: server.batcher.runs_lone_batches_inline("half"))

    slow = predict_pb2.PredictRequest()
    slow.model_spec.name = "slow"
    fill_tensor_proto(slow.inputs["ms"], np.array([SLOW_MS], np.int64))
    slow_future = stub.Predict.future(slow, RPC_TIMEOUT)
    traffic = server.batcher.traffic.of("slow")
    wait_until(lambda: len(traffic.requests) == 1 and traffic.queued == 0,
               "the slow batch to hold the batch thread")
    started = time.monotonic()
    for value in (1.0, 3.0, 5.0):
        assert half_y(stub.Predict(half_request([value]), RPC_TIMEOUT)) == [value / 2 + 2]
        assert rest_half(server.rest_port, value) == {"predictions": [[value / 2 + 2]]}
    assert time.monotonic() - started < SLOW_MS / 1000  # none waited for the batch thread
    assert not slow_future.done()
    response = slow_future.result(RPC_TIMEOUT)
    assert ndarray_from_tensor_proto(response.outputs["ms"]).tolist() == [SLOW_MS]
    assert not server.batcher.runs_lone_batches_inline("slow")


def test_sigterm_in_a_stream_of_inline_lone_requests_stops_cleanly(testdata_model, tmp_path,
                                                                   channel_to):
    launcher = Launcher(tmp_path)
    try:
        process = launcher("--port=0", "--model_name=half",
                           f"--model_base_path={testdata_model(HALF)}", "--enable_batching",
                           f"--batching_parameters_file={parameters_file(tmp_path)}")
        stub = Stub(channel_to(process.tcp_target()))
        for _ in range(40):  # more than the 16 runs measured before running on the loop
            assert half_y(stub.Predict(half_request([1.0]), RPC_TIMEOUT)) == [2.5]
        answers: list[float] = []
        errors: list[grpc.StatusCode] = []
        stop = threading.Event()

        def stream() -> None:
            value = 0.0
            while not stop.is_set():
                value += 1.0
                try:
                    answers.append(half_y(stub.Predict(half_request([value]), RPC_TIMEOUT))[0]
                                   - (value / 2 + 2))
                except grpc.RpcError as error:
                    errors.append(error.code())
                    return

        client = threading.Thread(target=stream, daemon=True)
        client.start()
        wait_until(lambda: len(answers) >= 50, "lone requests to stream")
        process.popen.send_signal(signal.SIGTERM)
        assert process.wait_for_exit() == 0
        stop.set()
        client.join(RPC_TIMEOUT)
        assert not client.is_alive()
        assert set(answers) == {0.0}  # every answer right
        # the call in flight as gRPC shuts down: refused (UNAVAILABLE), or, when gRPC had
        # taken it off the wire but not yet handed it to the server, CANCELLED by gRPC
        assert set(errors) <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
        assert "Traceback" not in process.stderr()
    finally:
        launcher.close()
