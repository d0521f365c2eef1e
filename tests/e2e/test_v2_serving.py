"""V2 traffic gets the server's behaviour: batching shared with TF Serving's Predict, the
in-flight limit, deadlines, rollouts; and a real V2 client (tritonclient) works against it."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from pyserving.client.protos.inference import grpc_service_pb2 as pb
from pyserving.client.protos.inference import grpc_service_pb2_grpc
from pyserving.client.tensors import fill_tensor_proto, ndarray_from_tensor_proto
from pyserving.server.apis import predict_pb2, prediction_service_pb2_grpc
from support import free_port, wait_until
from v2_support import export_rows_model, export_v2_model, http, infer_binary, infer_json

TIMEOUT = 30.0


@pytest.fixture(scope="module")
def rows_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return export_rows_model(tmp_path_factory.mktemp("models") / "rows")


def rows_of(caller: int, size: int) -> np.ndarray:
    first = np.arange(caller * 10, caller * 10 + size, dtype=np.float32)
    return np.stack([first, first + 1000], axis=1)


def v2_rest_json(server: Any, x: np.ndarray) -> dict[str, np.ndarray]:
    status, answer = infer_json(server.rest_port, "default", {"inputs": [
        {"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.tolist()}]})
    assert status == 200, answer
    return {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in answer["outputs"]}


def v2_rest_binary(server: Any, x: np.ndarray) -> dict[str, np.ndarray]:
    document = {"parameters": {"binary_data_output": True}, "inputs": [
        {"name": "x", "datatype": "FP32", "shape": list(x.shape),
         "parameters": {"binary_data_size": x.nbytes}}]}
    status, answer, tail = infer_binary(server.rest_port, "default", document, [x.tobytes()])
    assert status == 200, answer
    outputs, offset = {}, 0
    for output in answer["outputs"]:
        size = output["parameters"]["binary_data_size"]
        dtype = {"FP32": "<f4", "INT32": "<i4", "INT64": "<i8"}[output["datatype"]]
        outputs[output["name"]] = np.frombuffer(tail[offset:offset + size], dtype).reshape(
            output["shape"])
        offset += size
    return outputs


def v2_grpc(channel: grpc.Channel, x: np.ndarray) -> dict[str, np.ndarray]:
    request = pb.ModelInferRequest(model_name="default")
    request.inputs.add(name="x", datatype="FP32", shape=x.shape)
    request.raw_input_contents.append(x.tobytes())
    response = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
        request, TIMEOUT)
    dtypes = {"FP32": "<f4", "INT32": "<i4", "INT64": "<i8"}
    return {o.name: np.frombuffer(raw, dtypes[o.datatype]).reshape(list(o.shape))
            for o, raw in zip(response.outputs, response.raw_output_contents, strict=False)}


def tf_serving_grpc(channel: grpc.Channel, x: np.ndarray) -> dict[str, np.ndarray]:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "default"
    fill_tensor_proto(request.inputs["x"], x)
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
        request, TIMEOUT)
    return {key: ndarray_from_tensor_proto(proto) for key, proto in response.outputs.items()}


@pytest.mark.parametrize("enable_batching", [True, False], ids=["batching", "unbatched"])
def test_mixed_v2_and_tf_serving_traffic_each_get_their_own_rows(
        serve, rows_model, tmp_path, enable_batching):
    options: dict[str, Any] = {}
    if enable_batching:
        parameters = tmp_path / "batching.txt"
        parameters.write_text("max_batch_size { value: 16 }\n"
                              "batch_timeout_micros { value: 200000 }\n"
                              "num_batch_threads { value: 2 }\n")
        options = {"enable_batching": True, "batching_parameters_file": str(parameters)}
    server = serve(model_base_path=rows_model, rest_api_port=free_port(),
                   rest_api_num_threads=16, grpc_max_threads=16, **options)
    channel = grpc.insecure_channel(server.grpc_target)
    senders: list[Callable[[np.ndarray], dict[str, np.ndarray]]] = [
        lambda x: v2_rest_json(server, x), lambda x: v2_rest_binary(server, x),
        lambda x: v2_grpc(channel, x), lambda x: tf_serving_grpc(channel, x)]
    inputs = [rows_of(caller, 1 + caller % 2) for caller in range(12)]
    try:
        with ThreadPoolExecutor(12) as pool:
            results = list(pool.map(lambda i: senders[i % 4](inputs[i]), range(12)))
    finally:
        channel.close()
    apis_per_call: dict[int, set[int]] = {}
    for caller, (x, result) in enumerate(zip(inputs, results, strict=False)):
        np.testing.assert_array_equal(np.asarray(result["y"], np.float32), x * 10)
        call = int(result["call"][0])
        apis_per_call.setdefault(call, set()).add(caller % 4)
    if enable_batching:  # V2 and TF Serving requests shared TensorFlow calls
        assert len(apis_per_call) < len(inputs)
        assert any(len(apis) > 1 for apis in apis_per_call.values()), apis_per_call


def nap_body(seconds: float, **parameters: Any) -> dict[str, Any]:
    return {"parameters": {"signature_name": "nap", **parameters},
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [seconds]}]}


def test_the_timeout_parameter_ends_a_slow_request_and_others_go_on(serve, rows_model):
    server = serve(model_base_path=rows_model, rest_api_port=free_port())
    status, answer = infer_json(server.rest_port, "default", nap_body(3.0, timeout=200_000))
    assert status == 504, answer
    assert v2_rest_json(server, rows_of(1, 1))["y"].tolist() == [[100, 10100]]


def test_the_in_flight_limit_applies_to_v2_requests(serve, rows_model):
    server = serve(model_base_path=rows_model, rest_api_port=free_port(),
                   max_in_flight_requests_per_model=1)
    slow = threading.Thread(target=infer_json, args=(server.rest_port, "default",
                                                     nap_body(1.5)))
    slow.start()
    try:
        wait_until(lambda: 'pyserving_inflight_requests{API="ModelInfer",entrypoint="REST",'
                   'model_name="default"} 1.0' in server.metrics.render()[0].decode(),
                   "the slow request in flight")
        status, answer = infer_json(server.rest_port, "default", nap_body(0.0))
        assert status == 503 and "--max_in_flight_requests_per_model" in answer["error"], answer
        channel = grpc.insecure_channel(server.grpc_target)
        with pytest.raises(grpc.RpcError) as caught:
            v2_grpc(channel, rows_of(0, 1))
        channel.close()
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        slow.join()


def test_a_rollout_routes_v2_requests_without_a_version(tmp_path):
    from pyserving.server import ModelServer, ServerOptions

    base = Path(export_v2_model(tmp_path / "m", versions=(1, 2)))
    config = tmp_path / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "m" base_path: "{base}" '
                      'model_platform: "tensorflow" model_version_policy { all {} } '
                      'version_labels { key: "stable" value: 1 } '
                      'version_labels { key: "canary" value: 2 } } }')
    rollout = tmp_path / "rollout.txt"
    rollout.write_text('rollouts { model_name: "m" split { label: "stable" weight: 100 } '
                       'split { label: "canary" weight: 0 } }')
    options = ServerOptions(port=0, rest_api_port=free_port(), model_config_file=str(config),
                            rollout_config_file=str(rollout),
                            allow_version_labels_for_unavailable_models=True)
    with ModelServer(options, host="127.0.0.1") as server:
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3],
                            "data": [1, 2, 3]},
                           {"name": "k", "datatype": "INT64", "shape": [1], "data": [1]}]}
        for _ in range(3):
            status, answer = infer_json(server.rest_port, "m", body)
            assert (status, answer["model_version"]) == (200, "1"), answer
        status, answer = infer_json(server.rest_port, "m", body, version="2")
        assert (status, answer["model_version"]) == (200, "2")  # a version bypasses the split
        _, payload, _ = http("GET", f"http://127.0.0.1:{server.rest_port}/v1/models/m/rollout")
        assert json.loads(payload)["arms"][0]["requests"] >= 3


# --- tritonclient ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def triton_server(tmp_path_factory: pytest.TempPathFactory):
    from pyserving.server import ModelServer, ServerOptions

    base = export_v2_model(tmp_path_factory.mktemp("models") / "m")
    options = ServerOptions(port=0, rest_api_port=free_port(), model_name="m",
                            model_base_path=base)
    with ModelServer(options, host="127.0.0.1") as server:
        yield server


def test_tritonclient_http_infers_with_binary_and_json_tensors(triton_server):
    httpclient = pytest.importorskip("tritonclient.http")
    client = httpclient.InferenceServerClient(f"127.0.0.1:{triton_server.rest_port}")
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("m")
        metadata = client.get_model_metadata("m")
        assert metadata["platform"] == "tensorflow_savedmodel"
        x = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
        k = np.array([7, 8], np.int64)
        for binary in (True, False):
            inputs = [httpclient.InferInput("x", [2, 3], "FP32"),
                      httpclient.InferInput("k", [2], "INT64")]
            inputs[0].set_data_from_numpy(x, binary_data=binary)
            inputs[1].set_data_from_numpy(k, binary_data=binary)
            outputs = [httpclient.InferRequestedOutput("doubled", binary_data=binary),
                       httpclient.InferRequestedOutput("k_out", binary_data=not binary)]
            result = client.infer("m", inputs, outputs=outputs, request_id="r1")
            np.testing.assert_array_equal(result.as_numpy("doubled"), x * 2)
            np.testing.assert_array_equal(result.as_numpy("k_out"), k + 1)
            assert result.as_numpy("total") is None
            assert result.get_response()["id"] == "r1"
        words = np.array([b"hello", "wörld".encode(), b"\x00\xff"], dtype=object)
        text = httpclient.InferInput("x", [3], "BYTES")
        text.set_data_from_numpy(words, binary_data=True)
        result = client.infer("m", [text], parameters={"signature_name": "identity_BYTES"})
        assert list(result.as_numpy("y")) == list(words)
        with pytest.raises(Exception) as caught:
            client.infer("nope", inputs)
        assert "Servable not found" in str(caught.value)
    finally:
        client.close()


def test_enable_v2_protocol_false_serves_neither_v2_api(serve, rows_model):
    server = serve(model_base_path=rows_model, rest_api_port=free_port(),
                   enable_v2_protocol=False)
    status, payload, _ = http("GET", f"http://127.0.0.1:{server.rest_port}/v2/health/live")
    assert (status, json.loads(payload)) == (404, {"error": "Not Found: /v2/health/live"})
    channel = grpc.insecure_channel(server.grpc_target)
    try:
        with pytest.raises(grpc.RpcError) as caught:
            v2_grpc(channel, rows_of(0, 1))
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        channel.close()


def test_bad_v2_requests_next_to_good_ones_disturb_nothing(serve, rows_model):
    server = serve(model_base_path=rows_model, rest_api_port=free_port(),
                   rest_api_num_threads=8)
    url = f"http://127.0.0.1:{server.rest_port}/v2/models/default/infer"
    header = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2],
                                     "parameters": {"binary_data_size": 8}}]}).encode()
    bad = [(b"{", {}), (header + b"\0" * 3, {"Inference-Header-Content-Length": str(len(header))}),
           (header, {"Inference-Header-Content-Length": "-1"}),
           (json.dumps({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1, 2],
                                    "data": ["a", "b"]}]}).encode(), {})]

    def good(caller: int) -> bool:
        return bool((v2_rest_json(server, rows_of(caller, 1))["y"] == rows_of(caller, 1) * 10)
                    .all())

    def misbehave(index: int) -> int:
        body, headers = bad[index % len(bad)]
        return http("POST", url, body, headers)[0]

    with ThreadPoolExecutor(8) as pool:
        statuses = pool.map(misbehave, range(16))
        answers = pool.map(good, range(16))
        assert set(statuses) == {400} and all(answers)


def test_v2_requests_are_request_logged_as_predict_logs(serve, rows_model, tmp_path):
    import tensorflow as tf

    from pyserving.server.apis import prediction_log_pb2

    folder = tmp_path / "logs"
    config = tmp_path / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "default" base_path: "{rows_model}" '
                      'model_platform: "tensorflow" logging_config { log_collector_config { '
                      f'type: "tfrecord" filename_prefix: "{folder / "default"}" }} '
                      'sampling_config { sampling_rate: 1.0 } } } }')
    server = serve(model_config_file=str(config), rest_api_port=free_port())
    x = rows_of(4, 2)
    v2_rest_binary(server, x)
    channel = grpc.insecure_channel(server.grpc_target)
    try:
        v2_grpc(channel, x)
    finally:
        channel.close()

    def logs() -> list[Any]:
        files = sorted(str(path) for path in folder.glob("*.tfrecord"))
        return [prediction_log_pb2.PredictionLog.FromString(record)
                for record in tf.data.TFRecordDataset(files).as_numpy_iterator()] if files else []

    wait_until(lambda: len(logs()) == 2, "both V2 requests logged")
    for log in logs():
        request = log.predict_log.request
        assert request.model_spec.name == "default"
        assert ndarray_from_tensor_proto(request.inputs["x"]).tolist() == x.tolist()
