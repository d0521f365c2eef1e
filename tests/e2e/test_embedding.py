"""The server as a library: a context manager that binds, loads, serves and stops cleanly."""

import threading

import grpc
import numpy as np
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from pyserving.client.tensors import fill_tensor_proto, ndarray_from_tensor_proto
from pyserving.server import ModelServer, ServerOptions


def _request(values: list[list[float]]) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "default"
    fill_tensor_proto(request.inputs["x"], np.array(values, dtype=np.float32))
    return request


def test_context_manager_serves_then_releases_port(testdata_model):
    options = ServerOptions(port=0, model_base_path=testdata_model("saved_model_half_plus_two_cpu"))
    with ModelServer(options, host="127.0.0.1") as server:
        port = server.port
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            response = stub.Predict(_request([[4.0]]), 10)
            assert ndarray_from_tensor_proto(response.outputs["y"]).tolist() == [[4.0]]
    assert not [t for t in threading.enumerate() if t.name.startswith(("grpc", "load"))]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            stub.Predict(_request([[4.0]]), 2)
            raise AssertionError("the stopped server still answered")
        except grpc.RpcError as error:
            assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_many_requests_in_flight_each_get_their_own_answer(testdata_model, serve, channel_to):
    server = serve(model_base_path=testdata_model("saved_model_half_plus_two_cpu"),
                   grpc_max_threads=16)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel_to(server.grpc_target))
    futures = [(i, stub.Predict.future(_request([[float(i)], [float(-i)]]), 30))
               for i in range(200)]
    for i, future in futures:
        outputs = ndarray_from_tensor_proto(future.result().outputs["y"])
        assert outputs.ravel().tolist() == [0.5 * i + 2, -0.5 * i + 2]

