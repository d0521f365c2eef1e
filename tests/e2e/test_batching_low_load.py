"""Issue 28 end to end: with --enable_batching and a long batch_timeout_micros, a lone
request over gRPC or REST answers without waiting the timeout out, unless
--batching_wait_for_full_batch asks for TF Serving's wait."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from pyserving.client.tensors import fill_tensor_proto, ndarray_from_tensor_proto
from support import free_port

MODEL = "saved_model_half_plus_two_cpu"
LONG_TIMEOUT = 5.0  # batch_timeout_micros, seconds: a lone request must not wait it out
SHORT_TIMEOUT = 0.3  # with the always-wait flag: a lone request waits at least this long


def batching_server(serve: Callable[..., object], testdata_model: Callable[..., str],
                    tmp_path: Path, timeout: float, **options: object) -> object:
    parameters = tmp_path / "batching.pbtxt"
    parameters.write_text("max_batch_size { value: 32 }\n"
                          f"batch_timeout_micros {{ value: {int(timeout * 1e6)} }}\n")
    return serve(model_name="half", model_base_path=testdata_model(MODEL),
                 enable_batching=True, batching_parameters_file=str(parameters),
                 rest_api_port=free_port(), **options)


def grpc_predict(server: object, channel_to: Callable[[str], grpc.Channel]) -> list[float]:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half"
    fill_tensor_proto(request.inputs["x"], np.array([[1.0], [3.0]], np.float32))
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel_to(server.grpc_target))
    response = stub.Predict(request, timeout=30)
    return ndarray_from_tensor_proto(response.outputs["y"]).ravel().tolist()


def rest_predict(server: object, body: dict | None = None) -> tuple[int, object]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.rest_port}/v1/models/half:predict",
        data=json.dumps(body or {"instances": [[1.0], [3.0]]}).encode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def seconds(call: Callable[[], object]) -> tuple[float, object]:
    started = time.monotonic()
    result = call()
    return time.monotonic() - started, result


def test_a_lone_request_answers_well_under_the_batch_timeout(serve, testdata_model, tmp_path,
                                                             channel_to):
    server = batching_server(serve, testdata_model, tmp_path, LONG_TIMEOUT)
    for _ in range(3):  # each request alone, one after another, on both transports
        took, y = seconds(lambda: grpc_predict(server, channel_to))
        assert y == [2.5, 3.5] and took < LONG_TIMEOUT / 2
        took, (status, body) = seconds(lambda: rest_predict(server))
        assert (status, body) == (200, {"predictions": [[2.5], [3.5]]})
        assert took < LONG_TIMEOUT / 2


def test_a_bad_request_neither_waits_nor_holds_the_counts(serve, testdata_model, tmp_path,
                                                          channel_to):
    server = batching_server(serve, testdata_model, tmp_path, LONG_TIMEOUT)
    took, (status, body) = seconds(lambda: rest_predict(server, {"instances": [["text"]]}))
    assert status == 400 and "error" in body and took < LONG_TIMEOUT / 2
    took, (status, _) = seconds(lambda: rest_predict(server, {"inputs": {"nope": [1.0]}}))
    assert status == 400 and took < LONG_TIMEOUT / 2
    # Counted out on the way out: the next lone request is not held for them.
    took, y = seconds(lambda: grpc_predict(server, channel_to))
    assert y == [2.5, 3.5] and took < LONG_TIMEOUT / 2
    traffic = server.batcher.traffic.of("half")
    assert (len(traffic.requests), traffic.queued, traffic.lone) == (0, 0, 0)


def test_the_always_wait_flag_restores_tf_servings_wait(serve, testdata_model, tmp_path,
                                                        channel_to):
    server = batching_server(serve, testdata_model, tmp_path, SHORT_TIMEOUT,
                             batching_wait_for_full_batch=True)
    assert server.batcher.traffic is None and server.metrics.batch_traffic is None
    took, y = seconds(lambda: grpc_predict(server, channel_to))
    assert y == [2.5, 3.5] and took >= SHORT_TIMEOUT
    took, (status, _) = seconds(lambda: rest_predict(server))
    assert status == 200 and took >= SHORT_TIMEOUT


