"""grpc.health.v1 and server reflection through real gRPC clients."""

from __future__ import annotations

import threading

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

MODEL = "saved_model_half_plus_two_cpu"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
TF_SERVING_NAMES = ("ModelService", "PredictionService")


def check(stub: health_pb2_grpc.HealthStub, service: str) -> int:
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status


def test_health_check_overall_and_per_model(serve, testdata_model, channel_to):
    server = serve(model_base_path=testdata_model(MODEL), model_name="half")
    stub = health_pb2_grpc.HealthStub(channel_to(server.grpc_target))
    assert check(stub, "") == SERVING
    assert check(stub, "half") == SERVING
    with pytest.raises(grpc.RpcError) as raised:
        check(stub, "no_such_model")
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_model_unloaded_by_a_config_reload_is_not_serving(serve, testdata_model, channel_to):
    server = serve(model_base_path=testdata_model(MODEL), model_name="half")
    channel = channel_to(server.grpc_target)
    stub = health_pb2_grpc.HealthStub(channel)
    watch = stub.Watch(health_pb2.HealthCheckRequest(service="half"), timeout=30)
    try:
        assert next(watch).status == SERVING
        reload = model_management_pb2.ReloadConfigRequest()
        model = reload.config.model_config_list.config.add()
        model.name, model.base_path = "other", testdata_model(MODEL, as_name="other")
        model.model_platform = "tensorflow"
        model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
            reload, timeout=30)
        assert next(watch).status == NOT_SERVING
    finally:
        watch.cancel()
    assert check(stub, "other") == SERVING
    assert check(stub, "") == SERVING


# --enable_batching serves gRPC on grpc.aio, with grpc.aio's health and reflection servicers.
BATCHING = pytest.mark.parametrize("batching", [False, True], ids=["sync", "batching (aio)"])


@BATCHING
def test_watch_sees_not_serving_when_the_server_stops(serve, testdata_model, channel_to,
                                                      batching):
    server = serve(model_base_path=testdata_model(MODEL), enable_batching=batching,
                   enable_grpc_healthcheck_service=True)
    stub = health_pb2_grpc.HealthStub(channel_to(server.grpc_target))
    services = ("", "default", *TF_SERVING_NAMES)
    watches = [stub.Watch(health_pb2.HealthCheckRequest(service=service), timeout=30)
               for service in services]
    assert [next(watch).status for watch in watches] == [SERVING] * len(services)
    stopping = threading.Thread(target=server.stop, kwargs={"grace": 5.0})
    stopping.start()
    try:
        assert [next(watch).status for watch in watches] == [NOT_SERVING] * len(services)
    finally:
        for watch in watches:
            watch.cancel()
        stopping.join(timeout=30)
    assert not stopping.is_alive()


@BATCHING
def test_tf_serving_service_names_serve_with_the_healthcheck_flag(serve, testdata_model,
                                                                  channel_to, batching):
    # TF Serving 2.15+ (model_servers/server.cc): with --enable_grpc_healthcheck_service,
    # SetServingStatus("ModelService", true) and SetServingStatus("PredictionService", true).
    flagged = serve(model_base_path=testdata_model(MODEL), enable_batching=batching,
                    enable_grpc_healthcheck_service=True)
    stub = health_pb2_grpc.HealthStub(channel_to(flagged.grpc_target))
    assert [check(stub, name) for name in TF_SERVING_NAMES] == [SERVING, SERVING]
    assert check(stub, "default") == SERVING
    plain = serve(model_base_path=testdata_model(MODEL, as_name="plain"))
    stub = health_pb2_grpc.HealthStub(channel_to(plain.grpc_target))
    for name in TF_SERVING_NAMES:
        with pytest.raises(grpc.RpcError) as raised:
            check(stub, name)
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def _reflect(channel: grpc.Channel, request: reflection_pb2.ServerReflectionRequest
             ) -> reflection_pb2.ServerReflectionResponse:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    return next(iter(stub.ServerReflectionInfo(iter([request]), timeout=10)))


@BATCHING
def test_reflection_lists_services_and_describes_them(serve, testdata_model, channel_to,
                                                      batching):
    server = serve(model_base_path=testdata_model(MODEL), enable_batching=batching)
    channel = channel_to(server.grpc_target)
    listed = _reflect(channel, reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {service.name for service in listed.list_services_response.service}
    assert names == {PREDICTION_SERVICE, "tensorflow.serving.ModelService",
                     "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                     "inference.GRPCInferenceService"}  # the V2 protocol (docs/v2.md)

    described = _reflect(channel, reflection_pb2.ServerReflectionRequest(
        file_containing_symbol=PREDICTION_SERVICE))
    files = [descriptor_pb2.FileDescriptorProto.FromString(raw)
             for raw in described.file_descriptor_response.file_descriptor_proto]
    services = {f"{file.package}.{service.name}": [method.name for method in service.method]
                for file in files for service in file.service}
    assert services[PREDICTION_SERVICE] == ["Classify", "Regress", "Predict", "MultiInference",
                                            "GetModelMetadata"]
