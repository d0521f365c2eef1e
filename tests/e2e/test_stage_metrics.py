"""pyserving_request_stage_latency: where a request's time goes (queue, run, encode), per
model, after real gRPC and REST traffic, with and without --enable_batching."""

from __future__ import annotations

import urllib.request
from concurrent import futures
from pathlib import Path

import numpy as np
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from support import free_port, metrics_page_samples

MODEL = "saved_model_half_plus_two_cpu"
STAGE = "pyserving_request_stage_latency"


def x_is(value: float) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "default"
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT,
                                    tensor_content=np.array([value], np.float32).tobytes())
    tensor.tensor_shape.dim.add().size = 1
    request.inputs["x"].CopyFrom(tensor)
    return request


def stage_counts(server: object) -> dict[str, tuple[float, float]]:
    """(count, sum in µs) of each stage of model "default"."""
    samples = metrics_page_samples(server.metrics.render()[0].decode())
    counts = {}
    for stage in ("queue", "run", "encode"):
        labels = frozenset({("model_name", "default"), ("stage", stage)})
        counts[stage] = (samples.get((f"{STAGE}_count", labels), 0.0),
                         samples.get((f"{STAGE}_sum", labels), 0.0))
    return counts


def test_unbatched_requests_have_run_and_encode_stages(serve, testdata_model, channel_to):
    server = serve(model_base_path=testdata_model(MODEL), rest_api_port=free_port())
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel_to(server.grpc_target))
    for number in range(3):
        stub.Predict(x_is(number), timeout=10)
    rest = urllib.request.Request(
        f"http://127.0.0.1:{server.rest_port}/v1/models/default:predict",
        data=b'{"instances": [1.0]}', method="POST")
    with urllib.request.urlopen(rest, timeout=10) as response:
        assert response.status == 200
    counts = stage_counts(server)
    assert counts["queue"] == (0, 0)
    assert counts["run"][0] == 4 and counts["run"][1] > 0
    assert counts["encode"][0] == 4 and counts["encode"][1] > 0


def test_batched_requests_have_a_queue_stage(serve, testdata_model, channel_to,
                                             tmp_path: Path):
    parameters = tmp_path / "batching.pbtxt"
    parameters.write_text("max_batch_size { value: 8 }\nbatch_timeout_micros { value: 20000 }\n"
                          "num_batch_threads { value: 1 }\n")
    server = serve(model_base_path=testdata_model(MODEL), enable_batching=True,
                   batching_parameters_file=str(parameters))
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel_to(server.grpc_target))
    with futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda v: stub.Predict(x_is(v), timeout=10), range(4)))
    counts = stage_counts(server)
    assert counts["queue"][0] == 4 and counts["queue"][1] > 0
    assert counts["run"][0] == 4 and counts["encode"][0] == 4
