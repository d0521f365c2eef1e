"""Classify, Regress and MultiInference over a real channel, checked against TF Serving.

The success cases are tensorflow_model_server_test.py's _TestClassify, _TestRegress and
_TestMultiInference, run on its TF1 and TF2 half_plus_two exports; the error texts are the ones
classifier.cc, regressor.cc, multi_inference.cc, util.cc and server_core.cc return.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from tensorflow_serving.apis import (
    classification_pb2,
    inference_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from inference_requests import (
    CLASSIFY_METHOD,
    PREDICT_METHOD,
    REGRESS_METHOD,
    add_examples,
    classify_request,
    multi_request,
    regress_request,
)

TF1_MODEL = "saved_model_half_plus_two_cpu"
TF2_MODEL = "saved_model_half_plus_two_tf2_cpu"
MODEL_VERSION = 123
RPC_TIMEOUT = 20.0

Stub = prediction_service_pb2_grpc.PredictionServiceStub


@pytest.fixture(params=[TF1_MODEL, TF2_MODEL], ids=["tf1", "tf2"])
def stub(request: pytest.FixtureRequest, testdata_model: Callable[..., str],
         serve: Callable[..., Any], channel_to: Callable[[str], grpc.Channel]) -> Stub:
    """A PredictionService stub on a server of the TF1 or the TF2 half_plus_two export."""
    server = serve(model_base_path=testdata_model(request.param))
    return Stub(channel_to(server.grpc_target))


@pytest.fixture
def tf1_stub(testdata_model: Callable[..., str], serve: Callable[..., Any],
             channel_to: Callable[[str], grpc.Channel]) -> Stub:
    server = serve(model_base_path=testdata_model(TF1_MODEL))
    return Stub(channel_to(server.grpc_target))










def rpc_error(call: Callable[..., Any], request: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, RPC_TIMEOUT)
    return caught.value


def assert_model_spec(spec: Any, signature_name: str) -> None:
    """TF Serving's _VerifyModelSpec: name, signature name and version are echoed."""
    assert spec.name == "default"
    assert spec.signature_name == signature_name
    assert spec.version.value == MODEL_VERSION


def scores(response: classification_pb2.ClassificationResponse) -> list[list[float]]:
    return [[c.score for c in row.classes] for row in response.result.classifications]


def values(response: regression_pb2.RegressionResponse) -> list[float]:
    return [r.value for r in response.result.regressions]


# TF Serving's integration tests.

def test_classify(stub: Stub) -> None:
    response = stub.Classify(classify_request("classify_x_to_y", 2.0), RPC_TIMEOUT)
    assert scores(response) == [[3.0]]
    assert response.result.classifications[0].classes[0].label == ""
    assert_model_spec(response.model_spec, "classify_x_to_y")


def test_regress(stub: Stub) -> None:
    response = stub.Regress(regress_request("regress_x_to_y", 2.0), RPC_TIMEOUT)
    assert values(response) == [3.0]
    assert_model_spec(response.model_spec, "regress_x_to_y")


def test_multi_inference(stub: Stub) -> None:
    request = multi_request(("default", "regress_x_to_y", REGRESS_METHOD),
                            ("default", "classify_x_to_y", CLASSIFY_METHOD))
    response = stub.MultiInference(request, RPC_TIMEOUT)
    assert len(response.results) == 2
    assert response.results[0].regression_result.regressions[0].value == 3.0
    assert response.results[1].classification_result.classifications[0].classes[0].score == 3.0
    assert_model_spec(response.results[0].model_spec, "regress_x_to_y")
    assert_model_spec(response.results[1].model_spec, "classify_x_to_y")


# Inputs.

def test_classify_several_examples(stub: Stub) -> None:
    response = stub.Classify(classify_request("classify_x_to_y", 0.0, 1.0, 2.0), RPC_TIMEOUT)
    assert scores(response) == [[2.0], [2.5], [3.0]]


def test_regress_several_examples(stub: Stub) -> None:
    response = stub.Regress(regress_request("regress_x_to_y", 0.0, 1.0, 2.0), RPC_TIMEOUT)
    assert values(response) == [2.0, 2.5, 3.0]


def test_multi_inference_several_examples(stub: Stub) -> None:
    request = multi_request(("default", "regress_x_to_y", REGRESS_METHOD),
                            ("default", "regress_x_to_y2", REGRESS_METHOD), xs=(0.0, 2.0))
    response = stub.MultiInference(request, RPC_TIMEOUT)
    assert [r.value for r in response.results[0].regression_result.regressions] == [2.0, 3.0]
    assert [r.value for r in response.results[1].regression_result.regressions] == [3.0, 4.0]


def test_regress_x_to_y2_is_half_plus_three(stub: Stub) -> None:
    response = stub.Regress(regress_request("regress_x_to_y2", 2.0, 4.0), RPC_TIMEOUT)
    assert values(response) == [4.0, 5.0]
    assert_model_spec(response.model_spec, "regress_x_to_y2")


def test_example_list_with_context_gives_each_example_the_context(stub: Stub) -> None:
    request = regress_request("regress_x_to_y")
    listed = request.input.example_list_with_context
    listed.context.features.feature["x"].float_list.value.append(2.0)
    listed.examples.add()
    listed.examples.add()
    response = stub.Regress(request, RPC_TIMEOUT)
    assert values(response) == [3.0, 3.0]


def test_example_feature_overrides_the_context(stub: Stub) -> None:
    # TF Serving feeds context + example serialized back to back, so the example's value wins.
    request = classify_request("classify_x_to_y")
    listed = request.input.example_list_with_context
    listed.context.features.feature["x"].float_list.value.append(2.0)
    listed.examples.add()
    listed.examples.add().features.feature["x"].float_list.value.append(4.0)
    response = stub.Classify(request, RPC_TIMEOUT)
    assert scores(response) == [[3.0], [4.0]]


def test_explicit_version_is_echoed(stub: Stub) -> None:
    request = regress_request("regress_x_to_y", 2.0)
    request.model_spec.version.value = MODEL_VERSION
    response = stub.Regress(request, RPC_TIMEOUT)
    assert_model_spec(response.model_spec, "regress_x_to_y")


# Errors of Classify and Regress.

def test_classify_unknown_signature(stub: Stub) -> None:
    error = rpc_error(stub.Classify, classify_request("nope", 2.0))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "No signature was found with the name: nope"


def test_regress_unknown_signature(stub: Stub) -> None:
    error = rpc_error(stub.Regress, regress_request("nope", 2.0))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "No signature was found with the name: nope"


def test_classify_missing_model_spec(tf1_stub: Stub) -> None:
    request = classification_pb2.ClassificationRequest()
    add_examples(request.input, 2.0)
    error = rpc_error(tf1_stub.Classify, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "Missing ModelSpec"


@pytest.mark.parametrize("kind", ["no_input", "empty_example_list", "empty_with_context"])
def test_regress_empty_input(stub: Stub, kind: str) -> None:
    request = regress_request("regress_x_to_y")
    if kind == "empty_example_list":
        request.input.example_list.SetInParent()
    elif kind == "empty_with_context":
        context = request.input.example_list_with_context.context
        context.features.feature["x"].float_list.value.append(2.0)
    error = rpc_error(stub.Regress, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "Input is empty."


def test_classify_empty_input(stub: Stub) -> None:
    error = rpc_error(stub.Classify, classify_request("classify_x_to_y"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "Input is empty."


def test_signature_is_checked_before_the_input(stub: Stub) -> None:
    error = rpc_error(stub.Regress, regress_request("nope"))
    assert error.details() == "No signature was found with the name: nope"


@pytest.mark.parametrize("signature_name", ["", "serving_default"])
def test_regress_on_predict_signature(stub: Stub, signature_name: str) -> None:
    # serving_default's input is "x", not "inputs".
    error = rpc_error(stub.Regress, regress_request(signature_name, 2.0))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("No regression inputs found in SignatureDef: ")
    assert 'key: "x"' in error.details()


def test_classify_on_predict_signature(stub: Stub) -> None:
    error = rpc_error(stub.Classify, classify_request("", 2.0))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("No classification inputs found in SignatureDef: ")


def test_regress_on_classify_signature(stub: Stub) -> None:
    error = rpc_error(stub.Regress, regress_request("classify_x_to_y", 2.0))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("No regression outputs found in SignatureDef: ")


def test_classify_on_regress_signature(stub: Stub) -> None:
    error = rpc_error(stub.Classify, classify_request("regress_x_to_y", 2.0))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(
        'Expected classification signature outputs to contain at least one of "classes" or '
        '"scores". Signature was: ')


def test_example_without_the_feature(stub: Stub) -> None:
    # The model's ParseExample op fails; TF Serving returns TensorFlow's status as is.
    request = regress_request("regress_x_to_y")
    request.input.example_list.examples.add().features.feature["y"].float_list.value.append(2.0)
    error = rpc_error(stub.Regress, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Feature: x (data type: float) is required but could not be found." in error.details()


# --enable_signature_method_name_check: the TF2 export's classify/regress signatures carry
# method_name tensorflow/serving/predict, so TF Serving rejects them only with the check on.

def test_method_name_check_rejects_tf2_classify_signature(
        testdata_model: Callable[..., str], serve: Callable[..., Any],
        channel_to: Callable[[str], grpc.Channel]) -> None:
    server = serve(model_base_path=testdata_model(TF2_MODEL),
                   enable_signature_method_name_check=True)
    stub = Stub(channel_to(server.grpc_target))
    error = rpc_error(stub.Classify, classify_request("classify_x_to_y", 2.0))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == ("Expected classification signature method_name to be "
                               f"{CLASSIFY_METHOD}. Was: {PREDICT_METHOD}")
    error = rpc_error(stub.Regress, regress_request("regress_x_to_y", 2.0))
    assert error.details() == ("Expected regression signature method_name to be "
                               f"{REGRESS_METHOD}. Was: {PREDICT_METHOD}")


def test_method_name_check_accepts_tf1_signatures(
        testdata_model: Callable[..., str], serve: Callable[..., Any],
        channel_to: Callable[[str], grpc.Channel]) -> None:
    server = serve(model_base_path=testdata_model(TF1_MODEL),
                   enable_signature_method_name_check=True)
    stub = Stub(channel_to(server.grpc_target))
    assert scores(stub.Classify(classify_request("classify_x_to_y", 2.0), RPC_TIMEOUT)) == [[3.0]]
    assert values(stub.Regress(regress_request("regress_x_to_y", 2.0), RPC_TIMEOUT)) == [3.0]


# Errors of MultiInference.

def assert_multi_inference_error(stub: Stub, request: inference_pb2.MultiInferenceRequest,
                                 code: grpc.StatusCode, details: str) -> None:
    error = rpc_error(stub.MultiInference, request)
    assert error.code() == code
    assert error.details() == details


def test_multi_inference_first_task_without_model_name(stub: Stub) -> None:
    # The servable is looked up with the first task's ModelSpec before the tasks are checked.
    request = multi_request(("", "regress_x_to_y", REGRESS_METHOD))
    assert_multi_inference_error(stub, request, grpc.StatusCode.INVALID_ARGUMENT,
                                 "ModelSpec has no name specified.")


def test_multi_inference_without_tasks(stub: Stub) -> None:
    assert_multi_inference_error(stub, multi_request(), grpc.StatusCode.INVALID_ARGUMENT,
                                 "ModelSpec has no name specified.")


def test_multi_inference_later_task_without_model_name(stub: Stub) -> None:
    request = multi_request(("default", "regress_x_to_y", REGRESS_METHOD),
                            ("", "classify_x_to_y", CLASSIFY_METHOD))
    assert_multi_inference_error(stub, request, grpc.StatusCode.INVALID_ARGUMENT,
                                 "Found ModelSpec with an empty model name.")


def test_multi_inference_two_model_names(stub: Stub) -> None:
    request = multi_request(("default", "regress_x_to_y", REGRESS_METHOD),
                            ("other", "classify_x_to_y", CLASSIFY_METHOD))
    assert_multi_inference_error(
        stub, request, grpc.StatusCode.INVALID_ARGUMENT,
        "All ModelSpecs in a MultiInferenceRequest must access the same model name.")


def test_multi_inference_duplicate_signature(stub: Stub) -> None:
    request = multi_request(("default", "regress_x_to_y", REGRESS_METHOD),
                            ("default", "regress_x_to_y", REGRESS_METHOD))
    assert_multi_inference_error(stub, request, grpc.StatusCode.INVALID_ARGUMENT,
                                 "Duplicate evaluation of signature: regress_x_to_y")


def test_multi_inference_unsupported_method_name(stub: Stub) -> None:
    request = multi_request(("default", "regress_x_to_y", PREDICT_METHOD))
    assert_multi_inference_error(stub, request, grpc.StatusCode.UNIMPLEMENTED,
                                 f"Unsupported signature method_name: {PREDICT_METHOD}")


def test_multi_inference_missing_signature(stub: Stub) -> None:
    request = multi_request(("default", "regress_x_to_y", REGRESS_METHOD),
                            ("default", "nope", CLASSIFY_METHOD))
    assert_multi_inference_error(stub, request, grpc.StatusCode.INVALID_ARGUMENT,
                                 "Requested signature not found in model graph: nope")


def test_multi_inference_empty_input(stub: Stub) -> None:
    request = multi_request(("default", "regress_x_to_y", REGRESS_METHOD), xs=())
    assert_multi_inference_error(stub, request, grpc.StatusCode.INVALID_ARGUMENT,
                                 "Input is empty.")


def test_multi_inference_wrong_signature_kind(stub: Stub) -> None:
    request = multi_request(("default", "classify_x_to_y", REGRESS_METHOD))
    error = rpc_error(stub.MultiInference, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("No regression outputs found in SignatureDef: ")
