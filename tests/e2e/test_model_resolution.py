"""Which model and version a ModelSpec reaches, for models and policies set by --model_config_file.

Expected behaviour and texts come from TF Serving's server_core.cc (config validation, version
labels), core/manager.h and basic_manager.cc (servable requests), and its REST metadata
responses; the two-model config is TF Serving's own good_model_config.txt.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from pyserving.server import ModelServer, ServerOptions
from pyserving.server.errors import ServingError
from support import TESTDATA

TWO_VERSIONS = "saved_model_half_plus_two_2_versions"
TIMEOUT = 10.0
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE

PredictionStub = prediction_service_pb2_grpc.PredictionServiceStub
ModelStub = model_service_pb2_grpc.ModelServiceStub


# --- config files ----------------------------------------------------------------------------


def model_entry(name: str, base_path: str, *, policy: str = "",
                labels: Mapping[str, int] | None = None) -> str:
    """One ``config`` entry of a text-format ModelConfigList."""
    lines = [f'name: "{name}"', f'base_path: "{base_path}"', 'model_platform: "tensorflow"']
    if policy:
        lines.append(f"model_version_policy {{ {policy} }}")
    for label, version in (labels or {}).items():
        lines.append(f'version_labels {{ key: "{label}" value: {version} }}')
    return "config {\n  " + "\n  ".join(lines) + "\n}"


def write_config(directory: Path, *entries: str) -> str:
    path = directory / "models.config"
    path.write_text("model_config_list {\n" + "\n".join(entries) + "\n}\n")
    return str(path)


# --- requests --------------------------------------------------------------------------------


def model_spec(name: str, *, version: int | None = None,
               label: str | None = None) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=name)
    if version is not None:
        spec.version.value = version
    if label is not None:
        spec.version_label = label
    return spec


def predict_x(spec: model_pb2.ModelSpec, x: float = 2.0) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest(model_spec=spec)
    request.inputs["x"].CopyFrom(tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT, float_val=[x], tensor_shape={"dim": [{"size": 1}]}))
    return request


def served_version(stub: PredictionStub, spec: model_pb2.ModelSpec) -> int:
    """The version that answered a Predict for ``spec``."""
    return stub.Predict(predict_x(spec), TIMEOUT).model_spec.version.value


def statuses(stub: ModelStub, name: str) -> list[tuple[int, int]]:
    request = get_model_status_pb2.GetModelStatusRequest(model_spec=model_spec(name))
    response = stub.GetModelStatus(request, TIMEOUT)
    return [(status.version, status.state) for status in response.model_version_status]


def rpc_error(call: Callable[..., object], request: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as raised:
        call(request, TIMEOUT)
    return raised.value.code(), raised.value.details()


def start_failure(start: Callable[..., ModelServer], **options: object) -> tuple[
        grpc.StatusCode, str]:
    with pytest.raises(ServingError) as raised:
        start(**options)
    return raised.value.code, raised.value.message


# --- two different models ------------------------------------------------------------------


def test_tf_serving_good_model_config_serves_two_models(testdata_model, serve, channel_to,
                                                        tmp_path: Path):
    config = (TESTDATA / "good_model_config.txt").read_text()
    for placeholder, model_dir in (("TEST_HALF_PLUS_TWO_DIR", "saved_model_half_plus_two_cpu"),
                                   ("TEST_HALF_PLUS_THREE_DIR", "saved_model_half_plus_three")):
        config = config.replace("${" + placeholder + "}", testdata_model(model_dir))
    (tmp_path / "good_model_config.txt").write_text(config)
    server = serve(model_config_file=str(tmp_path / "good_model_config.txt"))
    stub = PredictionStub(channel_to(server.grpc_target))
    two = stub.Predict(predict_x(model_spec("half_plus_two")), TIMEOUT)
    three = stub.Predict(predict_x(model_spec("half_plus_three")), TIMEOUT)
    assert (list(two.outputs["y"].float_val), two.model_spec.name) == ([3.0], "half_plus_two")
    assert (list(three.outputs["y"].float_val), three.model_spec.name) == (
        [4.0], "half_plus_three")
    assert rpc_error(stub.Predict, predict_x(model_spec("default"))) == (
        grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(default)")


# --- version policies ------------------------------------------------------------------------


@pytest.fixture
def two_versions(testdata_model, serve, channel_to, tmp_path: Path
                 ) -> Callable[..., tuple[PredictionStub, ModelStub]]:
    """Serve the two-version model as "hpt" under a policy; returns its two stubs."""

    def start(policy: str = "") -> tuple[PredictionStub, ModelStub]:
        base = testdata_model(TWO_VERSIONS)
        server = serve(model_config_file=write_config(tmp_path,
                                                      model_entry("hpt", base, policy=policy)))
        channel = channel_to(server.grpc_target)
        return PredictionStub(channel), ModelStub(channel)

    return start


@pytest.mark.parametrize("policy", ["", "latest { num_versions: 1 }"], ids=["default", "latest1"])
def test_latest_policy_loads_only_the_newest_version(two_versions, policy: str):
    predictions, models = two_versions(policy)
    assert statuses(models, "hpt") == [(124, AVAILABLE)]
    assert served_version(predictions, model_spec("hpt")) == 124
    assert rpc_error(predictions.Predict, predict_x(model_spec("hpt", version=123))) == (
        grpc.StatusCode.NOT_FOUND, "Servable not found for request: Specific(hpt, 123)")


def test_latest_two_loads_both_versions(two_versions):
    _, models = two_versions("latest { num_versions: 2 }")
    assert statuses(models, "hpt") == [(124, AVAILABLE), (123, AVAILABLE)]


def test_specific_policy_loads_the_named_version(two_versions):
    predictions, models = two_versions("specific { versions: 123 }")
    assert statuses(models, "hpt") == [(123, AVAILABLE)]
    assert served_version(predictions, model_spec("hpt")) == 123
    assert rpc_error(predictions.Predict, predict_x(model_spec("hpt", version=124))) == (
        grpc.StatusCode.NOT_FOUND, "Servable not found for request: Specific(hpt, 124)")


# --- all versions, with labels: one server for these tests --------------------------------


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[grpc.Channel]:
    """hpt: both versions, stable -> 123, canary -> 124; the same model unlabelled, by its
    folder name."""
    root = tmp_path_factory.mktemp("labelled")
    shutil.copytree(TESTDATA / TWO_VERSIONS, root / TWO_VERSIONS)
    base = str(root / TWO_VERSIONS)
    config = write_config(
        root,
        model_entry("hpt", base, policy="all {}", labels={"stable": 123, "canary": 124}),
        model_entry(TWO_VERSIONS, base, policy="all {}"))
    # Labels in the start-up config need this flag in TF Serving (see test below).
    options = ServerOptions(port=0, model_config_file=config,
                            allow_version_labels_for_unavailable_models=True)
    with ModelServer(options, host="127.0.0.1") as server:
        channel = grpc.insecure_channel(server.grpc_target)
        yield channel
        channel.close()


@pytest.fixture
def labelled_predictions(labelled: grpc.Channel) -> PredictionStub:
    return PredictionStub(labelled)


def test_all_policy_loads_every_version_newest_first(labelled: grpc.Channel):
    assert statuses(ModelStub(labelled), "hpt") == [(124, AVAILABLE), (123, AVAILABLE)]


def test_latest_version_answers_when_none_is_named(labelled_predictions: PredictionStub):
    assert served_version(labelled_predictions, model_spec("hpt")) == 124


@pytest.mark.parametrize("version", [123, 124])
def test_explicit_version_selects_it(labelled_predictions: PredictionStub, version: int):
    assert served_version(labelled_predictions, model_spec("hpt", version=version)) == version


@pytest.mark.parametrize("label, version", [("stable", 123), ("canary", 124)])
def test_version_label_selects_its_version(labelled_predictions: PredictionStub, label: str,
                                           version: int):
    response = labelled_predictions.Predict(predict_x(model_spec("hpt", label=label)), TIMEOUT)
    assert list(response.outputs["y"].float_val) == [3.0]
    assert response.model_spec.WhichOneof("version_choice") == "version"
    assert response.model_spec.version.value == version


def test_version_label_selects_metadata_version(labelled_predictions: PredictionStub):
    request = get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=model_spec("hpt", label="stable"), metadata_field=["signature_def"])
    response = labelled_predictions.GetModelMetadata(request, TIMEOUT)
    assert (response.model_spec.name, response.model_spec.version.value) == ("hpt", 123)


@pytest.mark.parametrize("name, label", [("hpt", "beta"), (TWO_VERSIONS, "stable")],
                         ids=["unknown label", "label of another model"])
def test_unrecognized_label(labelled_predictions: PredictionStub, name: str, label: str):
    assert rpc_error(labelled_predictions.Predict, predict_x(model_spec(name, label=label))) == (
        grpc.StatusCode.INVALID_ARGUMENT, f"Unrecognized servable version label: {label}")


def test_long_messages_are_cut_at_1024_bytes(labelled_predictions: PredictionStub):
    # grpc_status_util.cc: 1024 bytes of the message, then "...TRUNCATED"
    prefix = "Servable not found for request: Latest("
    for name, kept in (("n" * 2000, "n" * (1024 - len(prefix))),
                       ("\u00e9" * 1000, "\u00e9" * ((1024 - len(prefix)) // 2))):
        assert rpc_error(labelled_predictions.Predict, predict_x(model_spec(name))) == (
            grpc.StatusCode.NOT_FOUND, prefix + kept + "...TRUNCATED")


def test_metadata_of_version_123_matches_tf_serving(labelled_predictions: PredictionStub):
    document = json.loads((TESTDATA / f"{TWO_VERSIONS}_metadata.json").read_text())
    expected_spec = json_format.ParseDict(document["model_spec"], model_pb2.ModelSpec())
    expected_signatures = json_format.ParseDict(document["metadata"]["signature_def"],
                                                get_model_metadata_pb2.SignatureDefMap())
    request = get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=model_spec(TWO_VERSIONS, version=123), metadata_field=["signature_def"])
    response = labelled_predictions.GetModelMetadata(request, TIMEOUT)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    assert response.model_spec == expected_spec
    assert signatures == expected_signatures


# --- labels at start-up ------------------------------------------------------------------------


@pytest.mark.parametrize("version", [125, 123])
def test_start_up_labels_need_the_unavailable_models_flag(testdata_model, serve,
                                                          tmp_path: Path, version: int):
    """TF Serving checks labels before it loads the config's versions, loaded ones included."""
    config = write_config(tmp_path, model_entry("hpt", testdata_model(TWO_VERSIONS),
                                                policy="all {}", labels={"stable": version}))
    assert start_failure(serve, model_config_file=config) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        f"Request to assign label to version {version} of model hpt, which is not currently "
        "available for inference")


def test_label_on_a_version_that_never_loads(testdata_model, serve, channel_to, tmp_path: Path):
    config = write_config(tmp_path, model_entry("hpt", testdata_model(TWO_VERSIONS),
                                                labels={"next": 125}))
    server = serve(model_config_file=config, allow_version_labels_for_unavailable_models=True)
    stub = PredictionStub(channel_to(server.grpc_target))
    assert rpc_error(stub.Predict, predict_x(model_spec("hpt", label="next"))) == (
        grpc.StatusCode.NOT_FOUND, "Servable not found for request: Specific(hpt, 125)")
    assert served_version(stub, model_spec("hpt")) == 124


# --- invalid configs ---------------------------------------------------------------------------


def test_model_listed_twice(testdata_model, serve, tmp_path: Path):
    base = testdata_model(TWO_VERSIONS)
    config = write_config(tmp_path, model_entry("hpt", base), model_entry("hpt", base))
    assert start_failure(serve, model_config_file=config) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Illegal to list model hpt multiple times in config list")


def test_relative_base_path(serve, tmp_path: Path):
    config = write_config(tmp_path, model_entry("hpt", "models/hpt"))
    assert start_failure(serve, model_config_file=config) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Expected model hpt to have an absolute path or URI; got base_path()=models/hpt")
