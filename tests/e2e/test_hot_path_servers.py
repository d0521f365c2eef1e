"""The one data path through real servers: REST waits for batches without holding threads,
and grpc.aio answers undecodable requests as the sync server did."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, as_completed

import grpc
import numpy as np
import pytest

from pyserving.client.tensors import make_tensor_proto, ndarray_from_tensor_proto
from pyserving.server.apis import predict_pb2, tensor_pb2
from pyserving.server.grpc_aio import UNDECODABLE
from support import free_port, post_json

TF1_MODEL = "saved_model_half_plus_two_cpu"


def predict_request(values: list[float], model: str) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["x"].CopyFrom(make_tensor_proto(tensor_pb2.TensorProto,
                                                   np.array(values, dtype=np.float32)))
    return request


@pytest.mark.parametrize("batching", [False, True], ids=["unbatched", "batched"])
def test_undecodable_request_is_internal_in_every_mode(serve, testdata_model, channel_to,
                                                       batching):
    server = serve(model_base_path=testdata_model(TF1_MODEL), enable_batching=batching)
    call = channel_to(server.grpc_target).unary_unary(
        "/tensorflow.serving.PredictionService/Predict")
    with pytest.raises(grpc.RpcError) as raised:
        call(b"\xff\xff\xff", timeout=10)
    assert (raised.value.code(), raised.value.details()) == (grpc.StatusCode.INTERNAL,
                                                             UNDECODABLE)
    good = predict_request([1.0], model="default").SerializeToString()
    reply = predict_pb2.PredictResponse.FromString(call(good, timeout=10))
    assert ndarray_from_tensor_proto(reply.outputs["y"]).tolist() == [2.5]


def test_batched_rest_requests_wait_without_holding_rest_threads(serve, testdata_model,
                                                                 tmp_path):
    # One REST thread and batches that close only when full: 4 callers can share a batch
    # only if none of them holds the thread while it waits.
    parameters = tmp_path / "batching.txt"
    parameters.write_text("max_batch_size { value: 4 }\nbatch_timeout_micros { value: 30000000 }\n"
                          "num_batch_threads { value: 1 }\n")
    rest_port = free_port()
    server = serve(model_base_path=testdata_model(TF1_MODEL), enable_batching=True,
                   batching_parameters_file=str(parameters), rest_api_port=rest_port,
                   rest_api_num_threads=1, batching_wait_for_full_batch=True)
    url = f"http://127.0.0.1:{rest_port}/v1/models/default:predict"
    with ThreadPoolExecutor(4) as callers:
        answers = [callers.submit(post_json, url, {"instances": [float(n)]}, 20.0)
                   for n in range(4)]
        results = sorted(future.result()[1]["predictions"][0]
                         for future in as_completed(answers))
    assert results == [2.0, 2.5, 3.0, 3.5]
    assert server.rest_port == rest_port
