"""Request inputs never become file paths: only the operator (flags, config, ModelService)
names what the server reads, so a model name that looks like a path is just an unknown name."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.parse
import urllib.request

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from pyserving.client.tensors import fill_tensor_proto
from support import free_port

TIMEOUT = 10.0


@pytest.fixture
def decoy(testdata_model, tmp_path) -> str:
    """A complete, loadable model on disk that no flag or config names."""
    target = tmp_path / "decoy"
    shutil.copytree(testdata_model("saved_model_half_plus_two_cpu", "source"), target)
    return str(target)


def path_like_names(decoy: str) -> list[str]:
    return [decoy, decoy + "/00000123", "../decoy", "file://" + decoy, "/etc/passwd",
            "..", "default/../decoy"]


def test_path_like_model_names_are_unknown_over_grpc(serve, channel_to, testdata_model, decoy):
    server = serve(model_base_path=testdata_model("saved_model_half_plus_two_cpu"))
    channel = channel_to(server.grpc_target)
    predict = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict
    status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus
    for name in path_like_names(decoy):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = name
        fill_tensor_proto(request.inputs["x"], np.array([1.0], np.float32))
        with pytest.raises(grpc.RpcError) as raised:
            predict(request, timeout=TIMEOUT)
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
        assert raised.value.details() == f"Servable not found for request: Latest({name})"
        status_request = get_model_status_pb2.GetModelStatusRequest()
        status_request.model_spec.name = name
        with pytest.raises(grpc.RpcError) as raised:
            status(status_request, timeout=TIMEOUT)
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert server.manager.model_names() == ["default"]


def test_path_like_model_names_are_unknown_over_rest(serve, testdata_model, decoy):
    server = serve(model_base_path=testdata_model("saved_model_half_plus_two_cpu"),
                   rest_api_port=free_port())
    for name in path_like_names(decoy):
        quoted = urllib.parse.quote(name, safe="")
        request = urllib.request.Request(
            f"http://127.0.0.1:{server.rest_port}/v1/models/{quoted}:predict",
            data=json.dumps({"instances": [1.0]}).encode())
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(request, timeout=TIMEOUT)
        assert raised.value.code == 404
        assert json.loads(raised.value.read()) == {
            "error": f"Servable not found for request: Latest({name})"}
    assert server.manager.model_names() == ["default"]
