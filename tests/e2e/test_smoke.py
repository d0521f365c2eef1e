"""The TF Serving integration test's Predict, through an in-process server."""

from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc


def test_predict_half_plus_two(testdata_model, serve, channel_to):
    server = serve(model_base_path=testdata_model("saved_model_half_plus_two_cpu"))
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel_to(server.grpc_target))
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "default"
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].float_val.append(2.0)
    request.inputs["x"].tensor_shape.dim.add().size = 1
    response = stub.Predict(request, 10)
    assert list(response.outputs["y"].float_val) == [3.0]
    assert response.model_spec.version.value == 123
    assert response.model_spec.signature_name == "serving_default"
