"""The Open Inference Protocol (KServe V2) end to end: REST /v2 (JSON and binary tensors) and
gRPC inference.GRPCInferenceService on a real server, next to TF Serving's API."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest

from pyserving.client.protos.inference import grpc_service_pb2 as pb
from pyserving.client.protos.inference import grpc_service_pb2_grpc
from pyserving.server import ModelServer, ServerOptions
from support import free_port
from v2_support import V2_DTYPES, export_v2_model, http, infer_binary, infer_json, raw, sample

SHAPES = [(), (0,), (5,), (2, 3)]


@pytest.fixture(scope="module")
def v2_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return export_v2_model(tmp_path_factory.mktemp("models") / "v2model", versions=(1, 2))


@pytest.fixture(scope="module")
def server(v2_model: str, tmp_path_factory: pytest.TempPathFactory):
    config = tmp_path_factory.mktemp("config") / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "m" base_path: "{v2_model}" '
                      'model_platform: "tensorflow" model_version_policy { all {} } '
                      'version_labels { key: "stable" value: 1 } } }')
    options = ServerOptions(port=0, rest_api_port=free_port(), model_config_file=str(config),
                            allow_version_labels_for_unavailable_models=True)
    with ModelServer(options, host="127.0.0.1") as running:
        yield running


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(server.grpc_target)
    yield grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def url(server, path: str) -> str:
    return f"http://127.0.0.1:{server.rest_port}{path}"


def identity_json(name: str, array: np.ndarray) -> dict:
    data = [item.decode("utf-8", "replace") for item in array.ravel()] if name == "BYTES" \
        else array.ravel().tolist()
    return {"parameters": {"signature_name": f"identity_{name}"},
            "inputs": [{"name": "x", "datatype": name, "shape": list(array.shape),
                        "data": data}]}


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype
    assert got.tobytes() == want.tobytes() if got.dtype != object else \
        list(got.ravel()) == list(want.ravel())


# --- every datatype, every encoding -------------------------------------------------------------

@pytest.mark.parametrize("name", [*V2_DTYPES, "BF16"])
def test_every_datatype_round_trips_exactly_in_binary_over_rest(server, name):
    for shape in SHAPES:
        array = sample(name, shape)
        document = {"parameters": {"signature_name": f"identity_{name}",
                                   "binary_data_output": True},
                    "inputs": [{"name": "x", "datatype": name, "shape": list(shape),
                                "parameters": {"binary_data_size": len(raw(array, name))}}]}
        status, answer, tail = infer_binary(server.rest_port, "m", document, [raw(array, name)])
        assert status == 200, answer
        (output,) = answer["outputs"]
        assert output == {"name": "y", "datatype": name, "shape": list(shape),
                          "parameters": {"binary_data_size": len(tail)}}
        assert tail == raw(array, name), (name, shape)


@pytest.mark.parametrize("name", [n for n in V2_DTYPES if n not in ("FP16",)])
def test_every_json_datatype_round_trips_exactly_over_rest(server, name):
    for shape in SHAPES:
        array = sample(name, shape)
        status, answer = infer_json(server.rest_port, "m", identity_json(name, array))
        assert status == 200, answer
        (output,) = answer["outputs"]
        assert output["datatype"] == name and output["shape"] == list(shape)
        assert output["data"] == identity_json(name, array)["inputs"][0]["data"], (name, shape)


def test_fp16_json_comes_back_as_the_same_half_values(server):
    array = sample("FP16", (2, 3))
    status, answer = infer_json(server.rest_port, "m", identity_json("FP16", array))
    assert status == 200, answer
    assert np.array(answer["outputs"][0]["data"], np.float16).tobytes() == array.tobytes()


def grpc_request(name: str, array: np.ndarray, *, raw_contents: bool) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    request.parameters["signature_name"].string_param = f"identity_{name}"
    tensor = request.inputs.add(name="x", datatype=name, shape=array.shape)
    if raw_contents:
        request.raw_input_contents.append(raw(array, name))
    else:
        field = {"BOOL": "bool_contents", "INT64": "int64_contents", "UINT64": "uint64_contents",
                 "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"
                 }.get(name, "uint_contents" if name.startswith("UINT") else "int_contents")
        getattr(tensor.contents, field).extend(array.ravel().tolist())
    return request


@pytest.mark.parametrize("raw_contents", [True, False], ids=["raw", "typed"])
def test_every_datatype_round_trips_exactly_over_grpc(stub, raw_contents):
    names = [*V2_DTYPES, "BF16"] if raw_contents else \
        [n for n in V2_DTYPES if n != "FP16"]
    for name in names:
        for shape in SHAPES:
            array = sample(name, shape)
            response = stub.ModelInfer(grpc_request(name, array, raw_contents=raw_contents), 30)
            (output,) = response.outputs
            assert (output.name, output.datatype, list(output.shape)) == ("y", name, list(shape))
            assert response.raw_output_contents[0] == raw(array, name), (name, shape)


def test_fp16_and_bf16_have_no_typed_contents_over_grpc(stub):
    for name in ("FP16", "BF16"):
        request = pb.ModelInferRequest(model_name="m")
        request.parameters["signature_name"].string_param = f"identity_{name}"
        request.inputs.add(name="x", datatype=name, shape=[1])
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request, 30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "raw_input_contents" in caught.value.details()


# --- the default signature, versions, labels, outputs, id -----------------------------------

def serving_body(**extra) -> dict:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3],
                        "data": [[1, 2, 3], [4, 5, 6]]},
                       {"name": "k", "datatype": "INT64", "shape": [2], "data": [7, 8]}],
            **extra}


def test_infer_answers_every_output_with_the_latest_version_and_echoes_the_id(server):
    status, answer = infer_json(server.rest_port, "m", serving_body(id="abc"))
    assert status == 200, answer
    assert answer["model_name"] == "m" and answer["model_version"] == "2"
    assert answer["id"] == "abc"
    outputs = {output["name"]: output for output in answer["outputs"]}
    assert outputs["doubled"] == {"name": "doubled", "datatype": "FP32", "shape": [2, 3],
                                  "data": [2, 4, 6, 8, 10, 12]}
    assert outputs["total"]["data"] == [8.0, 17.0]  # sum + version 2
    assert outputs["k_out"] == {"name": "k_out", "datatype": "INT64", "shape": [2],
                                "data": [8, 9]}


def test_requested_outputs_filter_and_order_the_answer(server):
    body = serving_body(outputs=[{"name": "total"}, {"name": "k_out",
                                                      "parameters": {"binary_data": True}}])
    header = json.dumps(body).encode()
    status, payload, headers = http("POST", url(server, "/v2/models/m/infer"), header)
    assert status == 200
    length = int(headers["Inference-Header-Content-Length"])
    answer = json.loads(payload[:length])
    assert [output["name"] for output in answer["outputs"]] == ["total", "k_out"]
    assert answer["outputs"][1]["parameters"] == {"binary_data_size": 16}
    assert np.frombuffer(payload[length:], "<i8").tolist() == [8, 9]
    assert headers["Content-Type"] == "application/octet-stream"


def test_version_numbers_and_labels_choose_the_version(server, v2_model):
    status, answer = infer_json(server.rest_port, "m", serving_body(), version="1")
    assert status == 200 and answer["model_version"] == "1"
    outputs = {output["name"]: output["data"] for output in answer["outputs"]}
    assert outputs["total"] == [7.0, 16.0]
    response = ModelInfer_serving(server, version="1")
    assert response.model_version == "1"
    status, answer = infer_json(server.rest_port, "m", serving_body(), version="stable")
    assert status == 200 and answer["model_version"] == "1"
    assert ModelInfer_serving(server, version="stable").model_version == "1"


def ModelInfer_serving(server, version: str = "") -> pb.ModelInferResponse:
    channel = grpc.insecure_channel(server.grpc_target)
    try:
        request = pb.ModelInferRequest(model_name="m", model_version=version, id="g1")
        x = request.inputs.add(name="x", datatype="FP32", shape=[1, 3])
        x.contents.fp32_contents.extend([1, 2, 3])
        k = request.inputs.add(name="k", datatype="INT64", shape=[1])
        k.contents.int64_contents.append(5)
        return grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, 30)
    finally:
        channel.close()


def test_grpc_infer_echoes_id_and_answers_raw_outputs(server):
    response = ModelInfer_serving(server)
    assert (response.model_name, response.model_version, response.id) == ("m", "2", "g1")
    outputs = {output.name: raw for output, raw in
               zip(response.outputs, response.raw_output_contents, strict=False)}
    assert np.frombuffer(outputs["doubled"], "<f4").tolist() == [2, 4, 6]
    assert np.frombuffer(outputs["k_out"], "<i8").tolist() == [6]


def test_large_binary_tensor(server):
    array = np.random.default_rng(0).random((1000, 1000), dtype=np.float32)
    document = {"parameters": {"signature_name": "identity_FP32", "binary_data_output": True},
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [1000, 1000],
                            "parameters": {"binary_data_size": array.nbytes}}]}
    status, answer, tail = infer_binary(server.rest_port, "m", document, [array.tobytes()])
    assert status == 200, answer
    assert tail == array.tobytes()


# --- metadata, health, readiness -------------------------------------------------------------

def test_server_metadata_health_and_readiness_over_rest(server):
    status, body, _ = http("GET", url(server, "/v2"))
    assert status == 200
    metadata = json.loads(body)
    assert metadata["name"] == "pyserving" and metadata["extensions"] == ["binary_tensor_data"]
    assert http("GET", url(server, "/v2/health/live"))[0] == 200
    assert http("GET", url(server, "/v2/health/ready"))[0] == 200
    assert http("GET", url(server, "/v2/models/m/ready"))[0] == 200
    assert http("GET", url(server, "/v2/models/m/versions/1/ready"))[0] == 200
    status, body, _ = http("GET", url(server, "/v2/models/m/versions/9/ready"))
    assert (status, json.loads(body)) == (400, {"error": "Model version not ready"})
    assert http("GET", url(server, "/v2/models/nope/ready"))[0] == 400


def test_model_metadata_comes_from_the_signature(server):
    status, body, _ = http("GET", url(server, "/v2/models/m"))
    assert status == 200
    assert json.loads(body) == {
        "name": "m", "versions": ["1", "2"], "platform": "tensorflow_savedmodel",
        "inputs": [{"name": "k", "datatype": "INT64", "shape": [-1]},
                   {"name": "x", "datatype": "FP32", "shape": [-1, 3]}],
        "outputs": [{"name": "doubled", "datatype": "FP32", "shape": [-1, 3]},
                    {"name": "k_out", "datatype": "INT64", "shape": [-1]},
                    {"name": "total", "datatype": "FP32", "shape": [-1]}]}
    status, body, _ = http("GET", url(server, "/v2/models/m/versions/1?signature_name="
                                              "identity_BYTES"))
    assert status == 200
    assert json.loads(body)["inputs"] == [{"name": "x", "datatype": "BYTES", "shape": [-1]}]


def test_grpc_health_metadata_and_readiness(stub):
    assert stub.ServerLive(pb.ServerLiveRequest(), 10).live
    assert stub.ServerReady(pb.ServerReadyRequest(), 10).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name="m"), 10).ready
    assert not stub.ModelReady(pb.ModelReadyRequest(name="m", version="7"), 10).ready
    metadata = stub.ServerMetadata(pb.ServerMetadataRequest(), 10)
    assert metadata.name == "pyserving" and list(metadata.extensions) == ["binary_tensor_data"]
    model = stub.ModelMetadata(pb.ModelMetadataRequest(name="m", version="1"), 10)
    assert (model.name, list(model.versions), model.platform) == (
        "m", ["1", "2"], "tensorflow_savedmodel")
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [
        ("k", "INT64", [-1]), ("x", "FP32", [-1, 3])]


def test_other_rpcs_are_unimplemented_with_a_clear_text(stub):
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelConfig(pb.ModelConfigRequest(name="m"), 10)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "ModelConfig is not implemented by pyserving" in caught.value.details()


def test_reflection_and_health_name_the_v2_service(server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    channel = grpc.insecure_channel(server.grpc_target)
    try:
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
        assert "inference.GRPCInferenceService" in services
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService"), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        channel.close()


# --- errors ------------------------------------------------------------------------------------

def error_of(server, body: bytes, headers: dict | None = None, path: str = "/v2/models/m/infer",
             method: str = "POST") -> tuple[int, str]:
    status, payload, _ = http(method, url(server, path), body, headers)
    return status, json.loads(payload)["error"]


REST_ERRORS = [
    # (path, body, extra headers, status, text in the error)
    ("/v2/models/nope/infer", serving_body(), None, 404, "Servable not found"),
    ("/v2/models/m/versions/9/infer", serving_body(), None, 404, "Specific(m, 9)"),
    ("/v2/models/m/versions/nolabel/infer", serving_body(), None, 400,
     "Unrecognized servable version label"),
    ("/v2/models/m/infer", {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 3],
                                        "data": [1, 2, 3]}]}, None, 400,
     "inference input 'x' data-type is 'FP64', but model 'm' expects 'FP32'"),
    ("/v2/models/m/infer", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4],
                                        "data": [1, 2, 3, 4]}]}, None, 400,
     "unexpected shape for input 'x' for model 'm'. Expected [-1,3], got [1,4]"),
    ("/v2/models/m/infer", {"inputs": [{"name": "zz", "datatype": "FP32", "shape": [1],
                                        "data": [1]}]}, None, 400,
     "unexpected inference input 'zz' for model 'm'"),
    ("/v2/models/m/infer", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3],
                                        "data": [1, 2]}]}, None, 400,
     "unexpected number of elements for input 'x'"),
    ("/v2/models/m/infer", {"inputs": [{"name": "x", "datatype": "INT64", "shape": [1],
                                        "data": [1.5]}]}, None, 400, "expected INT64 values"),
    ("/v2/models/m/infer", {"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1],
                                        "data": [300]}]}, None, 400, "does not fit UINT8"),
    ("/v2/models/m/infer", {"inputs": [{"name": "x", "datatype": "BOOL", "shape": [1],
                                        "data": [1]}]}, None, 400, "expected BOOL values"),
    ("/v2/models/m/infer", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1],
                                        "data": [1]}]}, None, 400, "invalid dimensions"),
    ("/v2/models/m/infer", {"inputs": [{"name": "x", "datatype": "NOPE", "shape": [1],
                                        "data": [1]}]}, None, 400, "invalid datatype 'NOPE'"),
    ("/v2/models/m/infer", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]},
     None, 400, "must specify 'data' or 'binary_data_size'"),
    ("/v2/models/m/infer", {"inputs": 3}, None, 400, "Unable to parse 'inputs'"),
    ("/v2/models/m/infer", serving_body(id=5), None, 400, "Unable to parse 'id'"),
    ("/v2/models/m/infer", serving_body(outputs=[{"name": "nope"}]), None, 400,
     "output tensor alias not found in signature: nope"),
    ("/v2/models/m/infer", serving_body(parameters={"signature_name": "nope"}), None, 400,
     'Serving signature key "nope" not found.'),
    ("/v2/models/m/infer", serving_body(parameters={"timeout": "soon"}), None, 400,
     "Unable to parse 'timeout'"),
    ("/v2/models/m/infer", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3],
                                        "parameters": {"binary_data_size": 12}}]},
     None, 400, "unexpected size for input 'x', expecting 12 additional bytes"),
]


@pytest.mark.parametrize("path, body, headers, status, text", REST_ERRORS)
def test_bad_rest_requests_get_clear_errors(server, path, body, headers, status, text):
    got_status, message = error_of(server, json.dumps(body).encode(), headers, path)
    assert (got_status, text in message) == (status, True), message


def test_bad_binary_framing_gets_clear_errors(server):
    header = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3],
                                     "parameters": {"binary_data_size": 12}}]}).encode()
    good = np.ones(3, np.float32).tobytes()
    length = {"Inference-Header-Content-Length": str(len(header))}
    assert error_of(server, header + good + b"x", length) == (
        400, "unexpected additional input data for model 'm'")
    assert error_of(server, header + good[:8], length)[1].startswith(
        "unexpected size for input 'x', expecting 4 additional bytes")
    assert error_of(server, header + good, {"Inference-Header-Content-Length": "abc"}) == (
        400, "Unable to parse Inference-Header-Content-Length, got: abc")
    status, message = error_of(server, header + good,
                               {"Inference-Header-Content-Length": "100000"})
    assert status == 400 and "inference header size should be in range" in message
    assert error_of(server, b"{not json")[0] == 400
    bytes_header = json.dumps({"parameters": {"signature_name": "identity_BYTES"},
                               "inputs": [{"name": "x", "datatype": "BYTES", "shape": [2],
                                           "parameters": {"binary_data_size": 9}}]}).encode()
    status, message = error_of(server, bytes_header + b"\x01\0\0\0a\x09\0\0\0",
                               {"Inference-Header-Content-Length": str(len(bytes_header))})
    assert status == 400 and "element 1 claims 9 bytes, 0 are left" in message


def test_unknown_paths_and_methods(server):
    assert error_of(server, b"", path="/v2/nothing", method="GET") == (404, "Not Found")
    assert error_of(server, b"", path="/v2/models/m/infer", method="GET") == (
        405, "Method Not Allowed")
    assert error_of(server, b"{}", path="/v2/models/m", method="POST") == (
        405, "Method Not Allowed")
    status, message = error_of(server, b"", path="/v2/models/m/config", method="GET")
    assert status == 501 and "not implemented by pyserving" in message


def test_bad_grpc_requests_get_clear_statuses(stub):
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 3])
    request.raw_input_contents.extend([b"\0" * 12, b"\0"])
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request, 10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "expected 1 raw_input_contents" in caught.value.details()
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(pb.ModelInferRequest(model_name="nope"), 10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 3]).contents.fp32_contents.append(1)
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request, 10)
    assert "unexpected number of elements for input 'x'" in caught.value.details()


def test_a_zero_timeout_parameter_is_a_deadline_already_past(server, stub):
    status, message = error_of(server, json.dumps(serving_body(parameters={"timeout": 0}))
                               .encode())
    assert status == 504, message
    request = pb.ModelInferRequest(model_name="m")
    request.parameters["timeout"].int64_param = 0
    x = request.inputs.add(name="x", datatype="FP32", shape=[1, 3])
    x.contents.fp32_contents.extend([1, 2, 3])
    request.inputs.add(name="k", datatype="INT64", shape=[1]).contents.int64_contents.append(1)
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request, 10)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_metrics_count_v2_requests_by_api(server):
    infer_json(server.rest_port, "m", serving_body())
    ModelInfer_serving(server)
    page = server.metrics.render()[0].decode()
    assert 'API="ModelInfer",entrypoint="REST"' in page
    assert 'API="ModelInfer",entrypoint="GRPC"' in page
