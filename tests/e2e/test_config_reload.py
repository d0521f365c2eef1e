"""Config reload: ModelService.HandleReloadConfigRequest and a polled --model_config_file.

Expected behaviour and texts come from TF Serving's model_service_impl.cc and server_core.cc
(ReloadConfig, ValidateModelConfigList, UpdateModelVersionLabelMap); the file-polling tests
are tensorflow_model_server_test.py's testModelConfigReload and
testModelConfigReloadWithZeroPollPeriod.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

import grpc
import pytest
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from pyserving.server import ModelServer
from pyserving.server.errors import ServingError
from support import wait_until

TIMEOUT = 10.0
SETTLE_SECONDS = 30.0  # how long a background load or unload may take on a busy machine
VERSION = 123
TWO = "half_plus_two"
THREE = "half_plus_three"
HPT = "hpt"  # saved_model_half_plus_two_2_versions: versions 123 and 124
LOAD_ATTEMPTS = "/tensorflow/cc/saved_model/load_attempt_count"
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
END = get_model_status_pb2.ModelVersionStatus.END

ModelConfig = model_server_config_pb2.ModelConfig
PredictionStub = prediction_service_pb2_grpc.PredictionServiceStub
ModelStub = model_service_pb2_grpc.ModelServiceStub


# --- configs ---------------------------------------------------------------------------------


def model_config(name: str, base_path: str, *, policy: str = "",
                 labels: Mapping[str, int] | None = None) -> ModelConfig:
    """One ModelConfig; ``policy`` is "all" or "latest:N" (empty: TF Serving's default)."""
    config = ModelConfig(name=name, base_path=base_path, model_platform="tensorflow")
    if policy == "all":
        config.model_version_policy.all.SetInParent()
    elif policy.startswith("latest:"):
        config.model_version_policy.latest.num_versions = int(policy.split(":")[1])
    for label, version in (labels or {}).items():
        config.version_labels[label] = version
    return config


def reload_request(*models: ModelConfig) -> model_management_pb2.ReloadConfigRequest:
    request = model_management_pb2.ReloadConfigRequest()
    request.config.model_config_list.config.extend(models)
    return request


def config_file_text(*models: tuple[str, str]) -> str:
    """The config tensorflow_model_server_test.py writes, for (name, base path) pairs."""
    entries = "".join('  config: {\n'
                      f'    name: "{name}",\n    base_path: "{base_path}",\n'
                      '    model_platform: "tensorflow"\n  }\n' for name, base_path in models)
    return "model_config_list: {\n" + entries + "}\n"


def write_atomically(path: Path, text: str) -> None:
    """Replace a config file in one step, so a poll never reads half of it."""
    staging = path.with_suffix(".tmp")
    staging.write_text(text)
    os.replace(staging, path)


# --- requests --------------------------------------------------------------------------------


def model_spec(name: str, *, version: int | None = None,
               label: str | None = None) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=name)
    if version is not None:
        spec.version.value = version
    if label is not None:
        spec.version_label = label
    return spec


def predict(stub: PredictionStub, spec: model_pb2.ModelSpec, x: float = 2.0
            ) -> tuple[float, int]:
    """y and the version that answered."""
    request = predict_pb2.PredictRequest(model_spec=spec)
    request.inputs["x"].CopyFrom(tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT, float_val=[x], tensor_shape={"dim": [{"size": 1}]}))
    response = stub.Predict(request, TIMEOUT)
    return response.outputs["y"].float_val[0], response.model_spec.version.value


def predict_error(stub: PredictionStub, spec: model_pb2.ModelSpec) -> tuple[grpc.StatusCode,
                                                                            str]:
    with pytest.raises(grpc.RpcError) as raised:
        predict(stub, spec)
    return raised.value.code(), raised.value.details()


def reload_error(stub: ModelStub, request: model_management_pb2.ReloadConfigRequest
                 ) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as raised:
        stub.HandleReloadConfigRequest(request, TIMEOUT)
    return raised.value.code(), raised.value.details()


def statuses(stub: ModelStub, name: str) -> list[tuple[int, int]]:
    request = get_model_status_pb2.GetModelStatusRequest(model_spec=model_spec(name))
    response = stub.GetModelStatus(request, TIMEOUT)
    return [(status.version, status.state) for status in response.model_version_status]


def eventually(check: Callable[[], object], expected: object,
               seconds: float = SETTLE_SECONDS) -> None:
    """Poll ``check`` until it returns ``expected`` (background loads and unloads)."""
    results: list[object] = []
    with contextlib.suppress(AssertionError):  # the last result shows what differs
        wait_until(lambda: results.append(check()) or results[-1] == expected,
                   f"{expected!r}", seconds, interval=0.1)
    assert results[-1] == expected


def returns(call: Callable[[], object]) -> Callable[[], object]:
    """``call``'s result, or its gRPC error as (code, details)."""
    def run() -> object:
        try:
            return call()
        except grpc.RpcError as error:
            return error.code(), error.details()
    return run


# --- servers ---------------------------------------------------------------------------------


class Served:
    """A server and its stubs, with the base paths of the copied test models."""

    def __init__(self, server: ModelServer, channel: grpc.Channel,
                 base_paths: Mapping[str, str]) -> None:
        self.server = server
        self.predictions = PredictionStub(channel)
        self.models = ModelStub(channel)
        self.two = base_paths[TWO]
        self.three = base_paths[THREE]
        self.hpt = base_paths[HPT]

    def reload(self, *models: ModelConfig) -> model_management_pb2.ReloadConfigResponse:
        return self.models.HandleReloadConfigRequest(reload_request(*models), TIMEOUT)


@pytest.fixture
def start(testdata_model, serve, channel_to) -> Callable[..., Served]:
    """Serve half_plus_two (as "half_plus_two") with copies of the other models at hand."""
    base_paths = {TWO: testdata_model("saved_model_half_plus_two_cpu"),
                  THREE: testdata_model("saved_model_half_plus_three"),
                  HPT: testdata_model("saved_model_half_plus_two_2_versions")}

    def start_server(**options: object) -> Served:
        server = serve(model_name=TWO, model_base_path=base_paths[TWO], **options)
        return Served(server, channel_to(server.grpc_target), base_paths)

    return start_server


@pytest.fixture
def served(start: Callable[..., Served]) -> Served:
    return start()


# --- adding and removing models --------------------------------------------------------------


def test_reload_adds_a_model_and_returns_once_it_serves(served: Served):
    assert predict(served.predictions, model_spec(TWO)) == (3.0, VERSION)
    response = served.reload(model_config(TWO, served.two), model_config(THREE, served.three))
    assert response.status.error_code == 0
    # No waiting: HandleReloadConfigRequest returns once new models are AVAILABLE.
    assert predict(served.predictions, model_spec(THREE)) == (4.0, VERSION)
    assert predict(served.predictions, model_spec(TWO)) == (3.0, VERSION)
    assert statuses(served.models, THREE) == [(VERSION, AVAILABLE)]


def test_reload_removes_a_model(served: Served):
    served.reload(model_config(TWO, served.two), model_config(THREE, served.three))
    served.reload(model_config(THREE, served.three))
    eventually(returns(lambda: predict(served.predictions, model_spec(TWO))),
               (grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({TWO})"))
    assert predict_error(served.predictions, model_spec(TWO, version=VERSION)) == (
        grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Specific({TWO}, {VERSION})")
    eventually(lambda: statuses(served.models, TWO), [(VERSION, END)])
    assert predict(served.predictions, model_spec(THREE)) == (4.0, VERSION)


def test_a_removed_model_can_be_added_back(served: Served):
    served.reload(model_config(THREE, served.three))
    eventually(lambda: statuses(served.models, TWO), [(VERSION, END)])
    served.reload(model_config(TWO, served.two), model_config(THREE, served.three))
    assert predict(served.predictions, model_spec(TWO)) == (3.0, VERSION)
    assert statuses(served.models, TWO) == [(VERSION, AVAILABLE)]


def test_reloading_the_same_config_changes_nothing(served: Served):
    config = (model_config(TWO, served.two), model_config(THREE, served.three))
    served.reload(*config)
    served.reload(*config)
    assert predict(served.predictions, model_spec(THREE)) == (4.0, VERSION)
    assert statuses(served.models, TWO) == [(VERSION, AVAILABLE)]


# --- version policies ------------------------------------------------------------------------


def test_reload_widens_a_version_policy(served: Served):
    served.reload(model_config(HPT, served.hpt, policy="latest:1"))
    assert statuses(served.models, HPT) == [(124, AVAILABLE)]
    served.reload(model_config(HPT, served.hpt, policy="all"))
    eventually(lambda: statuses(served.models, HPT), [(124, AVAILABLE), (123, AVAILABLE)])
    assert predict(served.predictions, model_spec(HPT, version=123)) == (3.0, 123)
    assert predict(served.predictions, model_spec(HPT)) == (3.0, 124)


def test_reload_narrows_a_version_policy(served: Served):
    served.reload(model_config(HPT, served.hpt, policy="all"))
    assert statuses(served.models, HPT) == [(124, AVAILABLE), (123, AVAILABLE)]
    served.reload(model_config(HPT, served.hpt, policy="latest:1"))
    eventually(lambda: statuses(served.models, HPT), [(124, AVAILABLE), (123, END)])
    assert predict_error(served.predictions, model_spec(HPT, version=123)) == (
        grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Specific({HPT}, 123)")


# --- version labels --------------------------------------------------------------------------


def test_labels_resolve_to_their_versions(served: Served):
    served.reload(model_config(HPT, served.hpt, policy="all"))
    served.reload(model_config(HPT, served.hpt, policy="all",
                               labels={"stable": 123, "canary": 124}))
    assert predict(served.predictions, model_spec(HPT, label="stable")) == (3.0, 123)
    assert predict(served.predictions, model_spec(HPT, label="canary")) == (3.0, 124)


def test_moving_a_label_is_atomic_for_requests(served: Served):
    served.reload(model_config(HPT, served.hpt, policy="all"))
    served.reload(model_config(HPT, served.hpt, policy="all", labels={"stable": 123}))
    reloaded = threading.Event()
    stop = threading.Event()
    answers: list[tuple[bool, object]] = []  # (sent after the reload returned, answer)

    def loop_on_stable() -> None:
        call = returns(lambda: predict(served.predictions, model_spec(HPT, label="stable")))
        while not stop.is_set():
            after = reloaded.is_set()
            answers.append((after, call()))

    client = threading.Thread(target=loop_on_stable)
    client.start()
    try:
        eventually(lambda: len(answers) >= 20, True)
        served.reload(model_config(HPT, served.hpt, policy="all",
                                   labels={"stable": 124, "canary": 123}))
        reloaded.set()
        count = len(answers)
        eventually(lambda: len(answers) >= count + 20, True)
    finally:
        stop.set()
        client.join()
    assert {answer for _, answer in answers} <= {(3.0, 123), (3.0, 124)}
    assert (False, (3.0, 123)) in answers
    assert {answer for after, answer in answers if after} == {(3.0, 124)}
    assert predict(served.predictions, model_spec(HPT, label="canary")) == (3.0, 123)


def test_a_removed_label_is_unrecognized(served: Served):
    served.reload(model_config(HPT, served.hpt, policy="all"))
    served.reload(model_config(HPT, served.hpt, policy="all", labels={"stable": 123}))
    served.reload(model_config(HPT, served.hpt, policy="all"))
    assert predict_error(served.predictions, model_spec(HPT, label="stable")) == (
        grpc.StatusCode.INVALID_ARGUMENT, "Unrecognized servable version label: stable")


@pytest.mark.parametrize("version", [123, 125], ids=["not_loaded", "not_on_disk"])
def test_a_label_on_an_unavailable_version_is_refused(served: Served, version: int):
    served.reload(model_config(HPT, served.hpt, policy="latest:1"))
    request = reload_request(model_config(HPT, served.hpt, policy="latest:1",
                                          labels={"stable": version}))
    assert reload_error(served.models, request) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        f"Request to assign label to version {version} of model {HPT}, which is not currently "
        "available for inference")
    assert predict_error(served.predictions, model_spec(HPT, label="stable")) == (
        grpc.StatusCode.INVALID_ARGUMENT, "Unrecognized servable version label: stable")


def test_allow_version_labels_for_unavailable_models_accepts_a_new_label(
        start: Callable[..., Served]):
    served = start(allow_version_labels_for_unavailable_models=True)
    served.reload(model_config(HPT, served.hpt, policy="latest:1", labels={"stable": 125}))
    assert predict_error(served.predictions, model_spec(HPT, label="stable")) == (
        grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Specific({HPT}, 125)")
    assert predict(served.predictions, model_spec(HPT)) == (3.0, 124)


def test_allow_version_labels_for_unavailable_models_does_not_move_a_label(
        start: Callable[..., Served]):
    # Only a label that does not exist yet (or keeps its version) may name an unavailable one.
    served = start(allow_version_labels_for_unavailable_models=True)
    served.reload(model_config(HPT, served.hpt, policy="latest:1", labels={"stable": 124}))
    request = reload_request(model_config(HPT, served.hpt, policy="latest:1",
                                          labels={"stable": 125}))
    assert reload_error(served.models, request) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        f"Request to assign label to version 125 of model {HPT}, which is not currently "
        "available for inference")
    assert predict(served.predictions, model_spec(HPT, label="stable")) == (3.0, 124)


# --- refused configs -------------------------------------------------------------------------


def not_a_model_config_list(served: Served) -> model_management_pb2.ReloadConfigRequest:
    request = model_management_pb2.ReloadConfigRequest()
    request.config.custom_model_config.Pack(model_server_config_pb2.ModelConfigList())
    return request


def no_config(served: Served) -> model_management_pb2.ReloadConfigRequest:
    return model_management_pb2.ReloadConfigRequest()


def a_model_listed_twice(served: Served) -> model_management_pb2.ReloadConfigRequest:
    return reload_request(model_config(THREE, served.three), model_config(TWO, served.two),
                          model_config(THREE, served.three))


def a_relative_base_path(served: Served) -> model_management_pb2.ReloadConfigRequest:
    return reload_request(model_config(TWO, served.two),
                          model_config(THREE, "models/half_plus_three"))


def a_relative_path_then_a_model_listed_twice(served: Served
                                              ) -> model_management_pb2.ReloadConfigRequest:
    # ValidateModelConfigList checks every name before any path.
    return reload_request(model_config(THREE, "models/half_plus_three"),
                          model_config(TWO, served.two), model_config(TWO, served.two))


def a_label_on_a_new_model(served: Served) -> model_management_pb2.ReloadConfigRequest:
    # Labels are checked before the config's models load, so a new model cannot have one.
    return reload_request(model_config(TWO, served.two),
                          model_config(THREE, served.three, labels={"stable": VERSION}))


def a_new_model_without_a_platform(served: Served) -> model_management_pb2.ReloadConfigRequest:
    three = model_config(THREE, served.three)
    three.ClearField("model_platform")
    return reload_request(model_config(TWO, served.two), three)


def a_new_model_with_type_and_platform(served: Served
                                       ) -> model_management_pb2.ReloadConfigRequest:
    three = model_config(THREE, served.three)
    three.model_type = model_server_config_pb2.TENSORFLOW
    return reload_request(model_config(TWO, served.two), three)


def a_new_model_on_another_platform(served: Served) -> model_management_pb2.ReloadConfigRequest:
    three = model_config(THREE, served.three)
    three.model_platform = "foo"
    return reload_request(model_config(TWO, served.two), three)


def a_changed_platform(served: Served) -> model_management_pb2.ReloadConfigRequest:
    two = model_config(TWO, served.two)
    two.model_platform = "foo"
    return reload_request(two, model_config(THREE, served.three))


@pytest.mark.parametrize("make_request, message", [
    (a_new_model_without_a_platform,
     "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
     f"ModelServerConfig::model_platform, model name is {THREE}"),
    (a_new_model_with_type_and_platform,
     "Illegal setting both ModelServerConfig::model_type (deprecated) and "
     f"ModelServerConfig::model_platform, model name is {THREE}"),
    (a_new_model_on_another_platform, f"Model {THREE} requests unsupported platform foo"),
    (a_changed_platform, f"Illegal to change a model's platform. For model {TWO} platform was "
                         "tensorflow and new platform requested is foo"),
], ids=lambda value: getattr(value, "__name__", None))
def test_a_platform_that_is_missing_unknown_or_changed_is_refused(
        served: Served, make_request: Callable[[Served], model_management_pb2.ReloadConfigRequest],
        message: str):
    assert reload_error(served.models, make_request(served)) == (
        grpc.StatusCode.INVALID_ARGUMENT, message)
    assert predict(served.predictions, model_spec(TWO)) == (3.0, VERSION)
    assert predict_error(served.predictions, model_spec(THREE))[0] == grpc.StatusCode.NOT_FOUND


def test_a_refused_platform_is_remembered_as_tf_serving_does(served: Served):
    """ServerCore::ReloadConfig keeps a config that passed ValidateNoModelsChangePlatforms as
    its own even when a later check refuses it: the next platform check compares with it."""
    reload_error(served.models, a_new_model_on_another_platform(served))
    assert reload_error(served.models, reload_request(
        model_config(TWO, served.two), model_config(THREE, served.three))) == (
        grpc.StatusCode.INVALID_ARGUMENT, f"Illegal to change a model's platform. For model "
                                          f"{THREE} platform was foo and new platform requested "
                                          "is tensorflow")
    served.reload(model_config(TWO, served.two))
    served.reload(model_config(TWO, served.two), model_config(THREE, served.three))
    assert predict(served.predictions, model_spec(THREE)) == (4.0, VERSION)


def test_resending_a_config_checks_its_labels_again(served: Served):
    """No same-config shortcut (TF Serving has none): a label whose version went away fails."""
    config = (model_config(TWO, served.two),
              model_config(HPT, served.hpt, policy="all", labels={"stable": VERSION}))
    served.reload(config[0], model_config(HPT, served.hpt, policy="all"))
    served.reload(*config)
    shutil.rmtree(Path(served.hpt) / "00000123")
    eventually(lambda: statuses(served.models, HPT), [(124, AVAILABLE), (VERSION, END)])
    assert reload_error(served.models, reload_request(*config)) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        f"Request to assign label to version {VERSION} of model {HPT}, which is not currently "
        "available for inference")


def test_a_new_model_without_versions_blocks_the_reload_until_one_appears(served: Served,
                                                                          tmp_path: Path):
    """TF Serving waits for a new model without timeout: the client's deadline ends the call,
    the reload goes on and completes once a version is published."""
    later = tmp_path / "later"
    request = reload_request(model_config(TWO, served.two), model_config(THREE, str(later)))
    with pytest.raises(grpc.RpcError) as raised:
        served.models.HandleReloadConfigRequest(request, 2.0)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert predict(served.predictions, model_spec(TWO)) == (3.0, VERSION)
    shutil.copytree(served.three, tmp_path / "staging")
    (tmp_path / "staging").rename(later)
    eventually(returns(lambda: predict(served.predictions, model_spec(THREE))), (4.0, VERSION))


UNSUPPORTED_CONFIG = ("ServerModelConfig type not supported by HandleReloadConfigRequest. "
                      "Only ModelConfigList is currently supported")


@pytest.mark.parametrize("make_request, code, message", [
    (not_a_model_config_list, grpc.StatusCode.INVALID_ARGUMENT, UNSUPPORTED_CONFIG),
    (no_config, grpc.StatusCode.INVALID_ARGUMENT, UNSUPPORTED_CONFIG),
    (a_model_listed_twice, grpc.StatusCode.INVALID_ARGUMENT,
     f"Illegal to list model {THREE} multiple times in config list"),
    (a_relative_base_path, grpc.StatusCode.INVALID_ARGUMENT,
     f"Expected model {THREE} to have an absolute path or URI; "
     "got base_path()=models/half_plus_three"),
    (a_relative_path_then_a_model_listed_twice, grpc.StatusCode.INVALID_ARGUMENT,
     f"Illegal to list model {TWO} multiple times in config list"),
    (a_label_on_a_new_model, grpc.StatusCode.FAILED_PRECONDITION,
     f"Request to assign label to version {VERSION} of model {THREE}, which is not currently "
     "available for inference"),
], ids=lambda value: getattr(value, "__name__", None))
def test_a_refused_reload_keeps_the_old_config_serving(
        served: Served, make_request: Callable[[Served], model_management_pb2.ReloadConfigRequest],
        code: grpc.StatusCode, message: str):
    assert reload_error(served.models, make_request(served)) == (code, message)
    assert predict(served.predictions, model_spec(TWO)) == (3.0, VERSION)
    assert predict_error(served.predictions, model_spec(THREE)) == (
        grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({THREE})")
    # ... and the next valid reload is applied as usual.
    served.reload(model_config(TWO, served.two), model_config(THREE, served.three))
    assert predict(served.predictions, model_spec(THREE)) == (4.0, VERSION)


def test_a_refused_label_leaves_labels_and_models_unchanged(served: Served):
    served.reload(model_config(TWO, served.two), model_config(HPT, served.hpt, policy="all"))
    served.reload(model_config(TWO, served.two),
                  model_config(HPT, served.hpt, policy="all", labels={"stable": 123}))
    request = reload_request(model_config(HPT, served.hpt, policy="all",
                                          labels={"stable": 124, "canary": 125}))
    assert reload_error(served.models, request)[0] == grpc.StatusCode.FAILED_PRECONDITION
    assert predict(served.predictions, model_spec(HPT, label="stable")) == (3.0, 123)
    # The refused config also dropped half_plus_two; it must still be served.
    assert predict(served.predictions, model_spec(TWO)) == (3.0, VERSION)


def test_a_new_model_that_fails_to_load_fails_the_reload(start: Callable[..., Served],
                                                         testdata_model):
    served = start(max_num_load_retries=0)
    bad = testdata_model("bad_half_plus_two")
    request = reload_request(model_config(TWO, served.two), model_config("bad", bad))
    code, message = reload_error(served.models, request)
    status = get_model_status_pb2.GetModelStatusRequest(model_spec=model_spec("bad"))
    [failed] = served.models.GetModelStatus(status, TIMEOUT).model_version_status
    assert (failed.version, failed.state) == (VERSION, END)
    code_name = next(code.name for code in grpc.StatusCode
                     if code.value[0] == failed.status.error_code)
    load_error = f"{code_name}: {failed.status.error_message}"
    # ServerCore::WaitUntilModelsAvailable's message.
    assert (code, message) == (
        grpc.StatusCode.UNKNOWN,
        f"1 model(s) did not become available: {{{{{{name: bad version: {VERSION}}} due to "
        f"error: {load_error}}}, }}")
    assert predict(served.predictions, model_spec(TWO)) == (3.0, VERSION)


# --- a polled --model_config_file (tensorflow_model_server_test.py) -------------------------


@pytest.fixture
def config_file(tmp_path: Path, testdata_model) -> tuple[Path, str, str]:
    """model_config.txt serving half_plus_two; returns it and the two models' base paths."""
    two = testdata_model("saved_model_half_plus_two_cpu")
    three = testdata_model("saved_model_half_plus_three")
    path = tmp_path / "model_config.txt"
    path.write_text(config_file_text((TWO, two)))
    return path, two, three


def test_model_config_reload(config_file: tuple[Path, str, str], serve, channel_to):
    path, _, three = config_file
    server = serve(model_config_file=str(path), model_config_file_poll_wait_seconds=1)
    stub = PredictionStub(channel_to(server.grpc_target))
    assert predict(stub, model_spec(TWO)) == (3.0, VERSION)
    write_atomically(path, config_file_text((THREE, three)))
    # TF Serving's test sleeps 10 s and then expects the new model.
    eventually(returns(lambda: predict(stub, model_spec(THREE))), (4.0, VERSION), seconds=10)
    eventually(returns(lambda: predict(stub, model_spec(TWO))),
               (grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({TWO})"))


def test_model_config_reload_with_zero_poll_period(config_file: tuple[Path, str, str], serve,
                                                   channel_to):
    path, _, three = config_file
    server = serve(model_config_file=str(path), model_config_file_poll_wait_seconds=0)
    stub = PredictionStub(channel_to(server.grpc_target))
    assert predict(stub, model_spec(TWO)) == (3.0, VERSION)
    write_atomically(path, config_file_text((THREE, three)))
    # TF Serving's test sleeps poll_period + 1 s; here no thread exists that could reload.
    assert not server.configurator.watching_file
    assert predict(stub, model_spec(TWO)) == (3.0, VERSION)
    assert predict_error(stub, model_spec(THREE)) == (
        grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({THREE})")


def test_a_polled_config_file_that_is_refused_keeps_the_old_config(
        config_file: tuple[Path, str, str], serve, channel_to):
    path, _two, three = config_file
    server = serve(model_config_file=str(path), model_config_file_poll_wait_seconds=1)
    stub = PredictionStub(channel_to(server.grpc_target))
    polls = server.configurator.file_polls
    write_atomically(path, config_file_text((THREE, three), (THREE, three)))
    # A whole poll after the write (one under way may have read the old file) refused it.
    wait_until(lambda: server.configurator.file_polls >= polls + 2, "two more config polls")
    assert predict(stub, model_spec(TWO)) == (3.0, VERSION)
    write_atomically(path, config_file_text((THREE, three)))
    eventually(returns(lambda: predict(stub, model_spec(THREE))), (4.0, VERSION))


# --- config files that are missing, empty or hold no models ----------------------------------


def test_a_missing_config_file_is_not_found(serve, tmp_path: Path):
    missing = tmp_path / "no_such.config"
    with pytest.raises(ServingError) as raised:
        serve(model_config_file=str(missing))
    assert (raised.value.code, raised.value.message) == (
        grpc.StatusCode.NOT_FOUND, f"{missing}; No such file or directory")


def test_an_empty_config_file_is_an_invalid_argument(serve, tmp_path: Path):
    """TensorFlow reads the file with mmap, which refuses 0 bytes."""
    empty = tmp_path / "empty.config"
    empty.write_bytes(b"")
    with pytest.raises(ServingError) as raised:
        serve(model_config_file=str(empty))
    assert (raised.value.code, raised.value.message) == (
        grpc.StatusCode.INVALID_ARGUMENT, f"{empty}; Invalid argument")


def test_a_config_without_models_serves_none_until_a_reload_adds_them(
        serve, channel_to, tmp_path: Path, testdata_model, caplog):
    path = tmp_path / "comments.config"
    path.write_text("# no models yet\n")
    caplog.set_level(logging.INFO)
    server = serve(model_config_file=str(path))
    assert "Taking no action for empty config." in caplog.messages
    channel = channel_to(server.grpc_target)
    assert predict_error(PredictionStub(channel), model_spec(TWO)) == (
        grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({TWO})")
    request = reload_request(model_config(TWO, testdata_model("saved_model_half_plus_two_cpu")))
    request.metric_names.extend([LOAD_ATTEMPTS, "/no/such/metric"])
    response = ModelStub(channel).HandleReloadConfigRequest(request, TIMEOUT)
    # model_service_impl.cc: status always set (OK), one Metric per requested name.
    assert response.HasField("status") and response.status.error_code == 0
    assert [(metric.name, metric.WhichOneof("value_increase"), metric.int64_value_increase)
            for metric in response.metric] == [
        (LOAD_ATTEMPTS, "int64_value_increase", 1), ("/no/such/metric", "int64_value_increase",
                                                     0)]
    assert predict(PredictionStub(channel), model_spec(TWO)) == (3.0, VERSION)
