"""ModelService.GetModelStatus and PredictionService.GetModelMetadata over a real channel.

Expected texts come from TF Serving's get_model_status_impl.cc and get_model_metadata_impl.cc;
expected signatures from TF Serving's own REST metadata responses for these models.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import grpc
import pytest
from google.protobuf import json_format
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

from support import TESTDATA

TF1_MODEL = "saved_model_half_plus_two_cpu"
TF2_MODEL = "saved_model_half_plus_two_tf2_cpu"
TIMEOUT = 10.0
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
SIGNATURE_DEF_MAP_TYPE = "type.googleapis.com/tensorflow.serving.SignatureDefMap"

ModelStub = model_service_pb2_grpc.ModelServiceStub
PredictionStub = prediction_service_pb2_grpc.PredictionServiceStub


def model_spec(name: str = "default", *, version: int | None = None,
               label: str | None = None, signature: str = "") -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=name, signature_name=signature)
    if version is not None:
        spec.version.value = version
    if label is not None:
        spec.version_label = label
    return spec


def status_request(spec: model_pb2.ModelSpec | None = None
                   ) -> get_model_status_pb2.GetModelStatusRequest:
    request = get_model_status_pb2.GetModelStatusRequest()
    if spec is not None:
        request.model_spec.CopyFrom(spec)
    return request


def metadata_request(spec: model_pb2.ModelSpec | None = None,
                     fields: tuple[str, ...] = ("signature_def",)
                     ) -> get_model_metadata_pb2.GetModelMetadataRequest:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=fields)
    if spec is not None:
        request.model_spec.CopyFrom(spec)
    return request


def rpc_error(call: Callable[..., object], request: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as raised:
        call(request, TIMEOUT)
    return raised.value.code(), raised.value.details()


def signature_defs(response: get_model_metadata_pb2.GetModelMetadataResponse
                   ) -> get_model_metadata_pb2.SignatureDefMap:
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    return signatures


def tf_serving_metadata(json_name: str) -> tuple[model_pb2.ModelSpec,
                                                  get_model_metadata_pb2.SignatureDefMap]:
    """TF Serving's REST metadata response for a model, as protos."""
    document = json.loads((TESTDATA / json_name).read_text())
    spec = json_format.ParseDict(document["model_spec"], model_pb2.ModelSpec())
    signatures = json_format.ParseDict(document["metadata"]["signature_def"],
                                       get_model_metadata_pb2.SignatureDefMap())
    return spec, signatures


@pytest.fixture
def models(channel_for_testdata: Callable[[str], grpc.Channel]) -> ModelStub:
    return ModelStub(channel_for_testdata(TF1_MODEL))


@pytest.fixture
def predictions(channel_for_testdata: Callable[[str], grpc.Channel]) -> PredictionStub:
    return PredictionStub(channel_for_testdata(TF1_MODEL))


# --- GetModelStatus ---------------------------------------------------------------------------


def test_status_lists_the_loaded_version_as_available(models: ModelStub):
    response = models.GetModelStatus(status_request(model_spec()), TIMEOUT)
    assert [(s.version, s.state) for s in response.model_version_status] == [(123, AVAILABLE)]


def test_status_of_an_available_version_is_ok(models: ModelStub):
    (status,) = models.GetModelStatus(status_request(model_spec()), TIMEOUT).model_version_status
    assert status.status.error_code == 0  # tensorflow.error.OK
    assert status.status.error_message == ""


def test_status_for_an_explicit_version(models: ModelStub):
    response = models.GetModelStatus(status_request(model_spec(version=123)), TIMEOUT)
    assert [(s.version, s.state) for s in response.model_version_status] == [(123, AVAILABLE)]


def test_status_ignores_a_version_label(models: ModelStub):
    """TF Serving narrows GetModelStatus by version only; a label reads as no choice."""
    response = models.GetModelStatus(status_request(model_spec(label="stable")), TIMEOUT)
    assert [s.version for s in response.model_version_status] == [123]


STATUS_ERRORS = {
    "missing model_spec": (None, INVALID_ARGUMENT, "Missing ModelSpec"),
    "unknown version": (model_spec(version=7), NOT_FOUND,
                        "Could not find version 7 of model default"),
    "unknown model": (model_spec("nope"), NOT_FOUND,
                      "Could not find any versions of model nope"),
    "unknown model and version": (model_spec("nope", version=123), NOT_FOUND,
                                  "Could not find version 123 of model nope"),
    "empty model name": (model_spec(""), NOT_FOUND, "Could not find any versions of model "),
}


@pytest.mark.parametrize("spec, code, message", STATUS_ERRORS.values(), ids=STATUS_ERRORS.keys())
def test_status_error(models: ModelStub, spec: model_pb2.ModelSpec | None,
                      code: grpc.StatusCode, message: str):
    assert rpc_error(models.GetModelStatus, status_request(spec)) == (code, message)


# --- GetModelMetadata -------------------------------------------------------------------------


def test_metadata_holds_only_a_signature_def_map(predictions: PredictionStub):
    response = predictions.GetModelMetadata(metadata_request(model_spec()), TIMEOUT)
    assert list(response.metadata) == ["signature_def"]
    assert response.metadata["signature_def"].type_url == SIGNATURE_DEF_MAP_TYPE


def test_metadata_signatures_match_tf_serving(predictions: PredictionStub):
    response = predictions.GetModelMetadata(metadata_request(model_spec()), TIMEOUT)
    _, expected = tf_serving_metadata("half_plus_two_model_metadata.json")
    assert signature_defs(response) == expected


def test_metadata_model_spec_has_name_and_version_but_no_signature(predictions: PredictionStub):
    request = metadata_request(model_spec(signature="regress_x_to_y"))
    response = predictions.GetModelMetadata(request, TIMEOUT)
    expected_spec, _ = tf_serving_metadata("half_plus_two_model_metadata.json")
    assert response.model_spec == expected_spec
    assert (response.model_spec.name, response.model_spec.version.value) == ("default", 123)
    assert response.model_spec.signature_name == ""


def test_metadata_for_an_explicit_version(predictions: PredictionStub):
    response = predictions.GetModelMetadata(metadata_request(model_spec(version=123)), TIMEOUT)
    assert response.model_spec.version.value == 123
    assert "serving_default" in signature_defs(response).signature_def


def test_metadata_field_named_twice_is_answered_once(predictions: PredictionStub):
    request = metadata_request(model_spec(), fields=("signature_def", "signature_def"))
    response = predictions.GetModelMetadata(request, TIMEOUT)
    assert list(response.metadata) == ["signature_def"]


def test_tf2_metadata_keeps_the_init_op_signature(
        channel_for_testdata: Callable[[str], grpc.Channel]):
    """TF Serving's metadata for its TF2 export lists ``__saved_model_init_op`` too."""
    stub = PredictionStub(channel_for_testdata(TF2_MODEL))
    signatures = signature_defs(stub.GetModelMetadata(metadata_request(model_spec()), TIMEOUT))
    _, expected = tf_serving_metadata("saved_model_half_plus_two_tf2_2_versions_metadata.json")
    # This export's serving_default gained `defaults {x: 0}` after TF Serving recorded the JSON.
    assert signatures.signature_def["serving_default"].defaults["x"].float_val == [0.0]
    signatures.signature_def["serving_default"].ClearField("defaults")
    assert signatures == expected


METADATA_ERRORS = {
    "missing model_spec": (
        metadata_request(None), INVALID_ARGUMENT, "Missing ModelSpec"),
    "missing model_spec and metadata_field": (
        metadata_request(None, fields=()), INVALID_ARGUMENT, "Missing ModelSpec"),
    "no metadata_field": (
        metadata_request(model_spec(), fields=()), INVALID_ARGUMENT,
        "GetModelMetadataRequest must specify at least one metadata_field"),
    "unsupported metadata_field": (
        metadata_request(model_spec(), fields=("foo",)), INVALID_ARGUMENT,
        "Metadata field foo is not supported"),
    "unsupported metadata_field after a supported one": (
        metadata_request(model_spec(), fields=("signature_def", "foo")), INVALID_ARGUMENT,
        "Metadata field foo is not supported"),
    "fields are checked before the model is looked up": (
        metadata_request(model_spec("nope"), fields=()), INVALID_ARGUMENT,
        "GetModelMetadataRequest must specify at least one metadata_field"),
    "empty model name": (
        metadata_request(model_spec("")), INVALID_ARGUMENT, "ModelSpec has no name specified."),
    "unknown model": (
        metadata_request(model_spec("nope")), NOT_FOUND,
        "Servable not found for request: Latest(nope)"),
    "unknown version": (
        metadata_request(model_spec(version=7)), NOT_FOUND,
        "Servable not found for request: Specific(default, 7)"),
    "unknown label": (
        metadata_request(model_spec(label="stable")), INVALID_ARGUMENT,
        "Unrecognized servable version label: stable"),
}


@pytest.mark.parametrize("request_, code, message", METADATA_ERRORS.values(),
                         ids=METADATA_ERRORS.keys())
def test_metadata_error(predictions: PredictionStub,
                        request_: get_model_metadata_pb2.GetModelMetadataRequest,
                        code: grpc.StatusCode, message: str):
    assert rpc_error(predictions.GetModelMetadata, request_) == (code, message)
