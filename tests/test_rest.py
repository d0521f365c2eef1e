"""The HTTP/REST API over real HTTP: TF Serving's REST tests, formats, routes and errors."""

from __future__ import annotations

import base64
import json
import shutil
import stat
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import grpc
import numpy as np
import pytest

from support import TESTDATA, free_port

TF1_MODEL = "saved_model_half_plus_two_cpu"
TWO_VERSIONS = "saved_model_half_plus_two_2_versions"


def call(port: int, path: str, body: Any = None, *, method: str | None = None,
         headers: dict | None = None) -> tuple[int, bytes, dict]:
    """(HTTP status, body, headers); ``body`` is JSON-encoded unless it is bytes."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                     method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


def call_json(port: int, path: str, body: Any = None, **kwargs: Any) -> tuple[int, Any]:
    status, payload, _ = call(port, path, body, **kwargs)
    return status, json.loads(payload)


def _copy(name: str, target: Path) -> str:
    shutil.copytree(TESTDATA / name, target)
    for path in [target, *target.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)
    return str(target)


def _build_multi_model(base: Path) -> str:
    """Two inputs (float x, string text), three outputs incl. *_bytes; a wide signature, one
    with a scalar output and one that echoes strings."""
    import tensorflow as tf

    class Multi(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x"),
                                      tf.TensorSpec([None], tf.string, name="text")])
        def serve(self, x: tf.Tensor, text: tf.Tensor) -> dict:
            return {"sum": tf.reduce_sum(x, axis=1), "echo_bytes": text,
                    "length": tf.strings.length(text)}

        @tf.function(input_signature=[tf.TensorSpec([None, 100], tf.float32, name="x")])
        def wide(self, x: tf.Tensor) -> dict:
            return {"y": x * 2.0}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def scalar(self, x: tf.Tensor) -> dict:
            return {"total": tf.reduce_sum(x), "x": tf.identity(x)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def strings(self, text: tf.Tensor) -> dict:
            return {"text": tf.identity(text)}

    module = Multi()
    tf.saved_model.save(module, str(base / "1"),
                        signatures={"serving_default": module.serve, "wide": module.wide,
                                    "scalar": module.scalar, "strings": module.strings})
    return str(base)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("rest_models")
    return {"default": _copy(TF1_MODEL, root / "default"),
            "two": _copy(TWO_VERSIONS, root / "two"),
            "multi": _build_multi_model(root / "multi")}


@pytest.fixture(scope="module")
def server(models: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from pyserving.server import ModelServer, ServerOptions

    config = tmp_path_factory.mktemp("rest_config") / "models.config"
    config.write_text(f"""model_config_list {{
  config {{ name: "default" base_path: "{models['default']}" model_platform: "tensorflow" }}
  config {{ name: "my model" base_path: "{models['default']}" model_platform: "tensorflow" }}
  config {{ name: "multi" base_path: "{models['multi']}" model_platform: "tensorflow" }}
  config {{ name: "two" base_path: "{models['two']}" model_platform: "tensorflow"
           model_version_policy {{ all {{}} }}
           version_labels {{ key: "stable" value: 123 }}
           version_labels {{ key: "canary" value: 124 }} }}
}}""")
    options = ServerOptions(port=0, rest_api_port=free_port(), model_config_file=str(config),
                            allow_version_labels_for_unavailable_models=True)
    model_server = ModelServer(options, host="127.0.0.1").start()
    yield model_server
    model_server.stop(grace=None)


@pytest.fixture
def port(server: Any) -> int:
    return server.rest_port


# --- TF Serving's tensorflow_model_server_test.py REST tests ------------------------------------

def test_predict_rest(port: int) -> None:
    assert call_json(port, "/v1/models/default:predict", {"instances": [2.0, 3.0, 4.0]}) == \
        (200, {"predictions": [3.0, 3.5, 4.0]})


def test_predict_columnar_rest(port: int) -> None:
    assert call_json(port, "/v1/models/default:predict", {"inputs": [2.0, 3.0, 4.0]}) == \
        (200, {"outputs": [3.0, 3.5, 4.0]})


def test_classify_rest(port: int) -> None:
    body = {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}
    assert call_json(port, "/v1/models/default:classify", body) == \
        (200, {"results": [[["", 3.0]]]})


def test_regress_rest(port: int) -> None:
    body = {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]}
    assert call_json(port, "/v1/models/default:regress", body) == (200, {"results": [3.0]})


def test_get_status_rest(port: int) -> None:
    assert call_json(port, "/v1/models/default") == (200, {
        "model_version_status": [{"version": "123", "state": "AVAILABLE",
                                  "status": {"error_code": "OK", "error_message": ""}}]})


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return sorted((key, _sorted(item)) for key, item in value.items())
    if isinstance(value, list):
        return sorted(_sorted(item) for item in value)
    return value


def test_get_model_metadata_rest(port: int) -> None:
    expected = json.loads((TESTDATA / "half_plus_two_model_metadata.json").read_text())
    status, metadata = call_json(port, "/v1/models/default/metadata")
    assert status == 200
    assert _sorted(metadata) == _sorted(expected)


# --- formats -----------------------------------------------------------------------------------

def test_row_format_with_named_inputs_and_outputs(port: int) -> None:
    body = {"instances": [{"x": [1.0, 2.0], "text": "ab"}, {"x": [3.0, 4.5], "text": "xyz"}]}
    assert call_json(port, "/v1/models/multi:predict", body) == (200, {"predictions": [
        {"sum": 3.0, "echo_bytes": {"b64": base64.b64encode(b"ab").decode()}, "length": 2},
        {"sum": 7.5, "echo_bytes": {"b64": base64.b64encode(b"xyz").decode()}, "length": 3}]})


def test_columnar_format_with_b64_input_and_bytes_output(port: int) -> None:
    raw = b"\x00\xffbin"
    body = {"inputs": {"x": [[1.0, 1.0]], "text": [{"b64": base64.b64encode(raw).decode()}]}}
    status, result = call_json(port, "/v1/models/multi:predict", body)
    assert status == 200
    assert result == {"outputs": {"sum": [2.0], "length": [5],
                                  "echo_bytes": [{"b64": base64.b64encode(raw).decode()}]}}


def test_signature_name_selects_signature_and_single_output_drops_its_name(port: int) -> None:
    body = {"signature_name": "wide", "instances": [[1.5] * 100]}
    assert call_json(port, "/v1/models/multi:predict", body) == \
        (200, {"predictions": [[3.0] * 100]})


# --- response bytes: rapidjson's PrettyWriter and json_tensor.cc's WriteDecimal -----------------

def _bytes_of(port: int, path: str, body: Any = None) -> bytes:
    status, payload, headers = call(port, path, body)
    assert status == 200, payload
    assert headers["Content-Type"] == "application/json"
    return payload


def test_row_format_bytes_are_tf_servings(port: int) -> None:
    # TF Serving's documented answer: rows on one line, the array closed on its own line.
    assert _bytes_of(port, "/v1/models/default:predict", {"instances": [1.0, 2.0, 5.0]}) == \
        b'{\n    "predictions": [2.5, 3.0, 4.5\n    ]\n}'


def test_columnar_format_bytes_put_each_value_on_its_own_line(port: int) -> None:
    assert _bytes_of(port, "/v1/models/default:predict", {"inputs": [1.0, 2.0, 5.0]}) == \
        b'{\n    "outputs": [\n        2.5,\n        3.0,\n        4.5\n    ]\n}'


def test_floats_have_six_digits_or_all_nine(port: int) -> None:
    # 0.5 * 17999996 + 2 = 9e+06 exactly (%g); 0.5 * 0.3333333 + 2 needs max_digits10.
    body = {"instances": [17999996.0, 0.3333333, 0.1, 1e7]}
    assert _bytes_of(port, "/v1/models/default:predict", body) == \
        b'{\n    "predictions": [9e+06, 2.16666675, 2.05, 5000002.0\n    ]\n}'


def test_nan_and_infinity_tokens_round_trip(port: int) -> None:
    body = b'{"instances": [NaN, Infinity, -Infinity]}'
    assert _bytes_of(port, "/v1/models/default:predict", body) == \
        b'{\n    "predictions": [NaN, Infinity, -Infinity\n    ]\n}'


def test_row_format_bytes_with_several_outputs_and_b64(port: int) -> None:
    body = b'{"instances": [{"x": [NaN, 1.0], "text": "a"}, {"x": [0.1, 0.2], "text": "b"}]}'
    row = ('\n        {{\n            "echo_bytes": {{\n                "b64": "{}"\n'
           '            }},\n            "length": 1,\n            "sum": {}\n        }}')
    expected = ('{\n    "predictions": [' + row.format("YQ==", "NaN") + ","
                + row.format("Yg==", "0.3") + "\n    ]\n}")
    assert _bytes_of(port, "/v1/models/multi:predict", body) == expected.encode()


def test_columnar_format_bytes_with_several_outputs(port: int) -> None:
    body = b'{"inputs": {"x": [[1.0, 2.0]], "text": ["a\\"\\n\\u0001"]}}'
    assert _bytes_of(port, "/v1/models/multi:predict", body) == (
        b'{\n    "outputs": {\n        "echo_bytes": [\n            {\n                "b64": '
        b'"YSIKAQ=="\n            }\n        ],\n        "length": [\n            4\n        ],'
        b'\n        "sum": [\n            3.0\n        ]\n    }\n}')


def test_scalar_output_is_a_bare_value_in_columnar_format(port: int) -> None:
    body = {"signature_name": "scalar", "inputs": [1.0, 2.5]}
    assert _bytes_of(port, "/v1/models/multi:predict", body) == (
        b'{\n    "outputs": {\n        "total": 3.5,\n        "x": [\n            1.0,\n'
        b'            2.5\n        ]\n    }\n}')


def test_string_outputs_are_escaped_as_rapidjson_does(port: int) -> None:
    body = {"signature_name": "strings", "instances": ['q"\\\t\u001f\u00e9']}
    assert _bytes_of(port, "/v1/models/multi:predict", body) == \
        '{\n    "predictions": ["q\\"\\\\\\t\\u001F\u00e9"\n    ]\n}'.encode()


def test_classify_and_regress_bytes(port: int) -> None:
    classify = {"signature_name": "classify_x_to_y", "examples": [{"x": 20.0}, {"x": 1.0}]}
    assert _bytes_of(port, "/v1/models/default:classify", classify) == \
        b'{\n    "results": [[["", 12.0]], [["", 2.5]]\n    ]\n}'
    regress = {"signature_name": "regress_x_to_y", "examples": [{"x": 80.0}, {"x": 0.5}]}
    assert _bytes_of(port, "/v1/models/default:regress", regress) == \
        b'{\n    "results": [42.0, 2.25]\n}'


def test_error_bytes(port: int) -> None:
    status, payload, headers = call(port, "/v1/models/nope:predict", {"instances": [1.0]})
    assert (status, headers["Content-Type"]) == (404, "application/json")
    assert payload == b'{\n    "error": "Servable not found for request: Latest(nope)"\n}'


def test_status_bytes_are_protobufs_json_printer(port: int) -> None:
    status, payload, _ = call(port, "/v1/models/default")
    assert status == 200
    assert payload == (b'{\n "model_version_status": [\n  {\n   "version": "123",\n   "state": '
                       b'"AVAILABLE",\n   "status": {\n    "error_code": "OK",\n    '
                       b'"error_message": ""\n   }\n  }\n ]\n}\n')


def test_metadata_bytes_join_two_printed_protos(port: int) -> None:
    status, payload, _ = call(port, "/v1/models/default/metadata")
    assert status == 200
    assert payload.startswith(b'{\n"model_spec":{\n "name": "default",\n "version": "123",\n'
                              b' "signature_name": ""\n}\n,\n"metadata": {"signature_def": {\n'
                              b' "signature_def": {\n  "')
    assert payload.endswith(b'\n  }\n }\n}\n}\n}\n')
    # fields in field-number order: TensorInfo name (1), dtype (2), tensor_shape (3)
    assert b'"name": "x:0",\n     "dtype": "DT_FLOAT",\n     "tensor_shape": {' in payload


def test_integer_values_convert_to_float_inputs(port: int) -> None:
    assert call_json(port, "/v1/models/default:predict", {"instances": [2, 4]}) == \
        (200, {"predictions": [3.0, 4.0]})


# --- routes ------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", [
    "/v1/models/default/versions/123:predict",
    "/V1/MODELS/default:PREDICT".replace("PREDICT", "predict"),
    "/v1/Models/default/Versions/123:predict",
    "/v1/models/my%20model:predict",
])
def test_predict_routes(port: int, path: str) -> None:
    assert call_json(port, path, {"instances": [2.0]}) == (200, {"predictions": [3.0]})


def test_version_and_label_routes(port: int) -> None:
    for path, version in [("/v1/models/two/labels/stable", "123"),
                          ("/v1/models/two/labels/canary", "124"),
                          ("/v1/models/two/versions/124", "124")]:
        status, metadata = call_json(port, path + "/metadata")
        assert (status, metadata["model_spec"]["version"]) == (200, version)
        assert call_json(port, path + ":predict", {"instances": [2.0]}) == \
            (200, {"predictions": [3.0]})


def test_status_of_one_version_and_of_all(port: int) -> None:
    status, body = call_json(port, "/v1/models/two/versions/124")
    assert status == 200
    assert [entry["version"] for entry in body["model_version_status"]] == ["124"]
    status, body = call_json(port, "/v1/models/two")
    assert sorted(entry["version"] for entry in body["model_version_status"]) == ["123", "124"]


def test_path_outside_v1_is_not_found(port: int) -> None:
    assert call(port, "/v2/models/default")[0] == 404


# --- errors ------------------------------------------------------------------------------------

@pytest.mark.parametrize("path,body,code,message", [
    ("/v1/models/default:predict", {"signature_name": "serving_default"}, 400,
     "Missing 'inputs' or 'instances' key"),
    ("/v1/models/default:predict", {"inputs": [1.0], "instances": [1.0]}, 400,
     "JSON Value: {\n    \"inputs\": [1.0],\n    \"instances\": [1.0]\n} Not formatted "
     "correctly expecting only one of 'inputs' or 'instances' keys to exist "),
    # rapidjson's writer refuses NaN and stops there; large values stop past 256 bytes
    ("/v1/models/default:predict", {"instances": 5, "a": [1e21, 1.5e-7, float("nan"), 2]}, 400,
     "JSON Value: {\n    \"instances\": 5,\n    \"a\": [1e21, 1.5e-7,  Expecting "
     "'instances' to be an list/array"),
    ("/v1/models/default:predict", {"instances": "x" * 300, "b": 1}, 400,
     'JSON Value: {\n    "instances": "' + "x" * 300 + '" Expecting \'instances\' to be an '
     "list/array"),
    ("/v1/foo", {}, 400, "Malformed request: POST /v1/foo"),
    ("/v1/models/default:predict", {"signature_name": "X", "instances": [1.0]}, 400,
     'Serving signature name: "X" not found in signature def'),
    ("/v1/models/default:PREDICT", {"instances": [1.0]}, 400,
     "Malformed request: POST /v1/models/default:PREDICT"),
    ("/v1/models/nope:predict", {"instances": [1.0]}, 404,
     "Servable not found for request: Latest(nope)"),
    ("/v1/models/default/versions/7:predict", {"instances": [1.0]}, 404,
     "Servable not found for request: Specific(default, 7)"),
    ("/v1/models/default:predict", {"instances": ["a"]}, 400,
     "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: "
     "JSON Value: \"a\" Type: String is not of expected type: float"),
    ("/v1/models/default:predict", {"instances": []}, 400,
     "JSON Value: {\n    \"instances\": []\n} No values in 'instances' array"),
    ("/v1/models/multi:predict", {"inputs": {"x": [[1.0, 2.0]]}}, 400,
     "Missing named input: text in 'inputs' object."),
    ("/v1/models/multi:predict", {"instances": [[1.0, 2.0]]}, 400,
     "instances is a plain list, but expecting list of objects as multiple input tensors "
     "required as per tensorinfo_map"),
    ("/v1/models/default:regress", {"signature_name": "regress_x_to_y"}, 400,
     "JSON Value: {\n    \"signature_name\": \"regress_x_to_y\"\n} When method is classify, key "
     "'examples' is expected and was not found"),
])
def test_error_messages_and_codes(port: int, path: str, body: Any, code: int,
                                  message: str) -> None:
    status, payload, headers = call(port, path, body)
    assert (status, json.loads(payload)) == (code, {"error": message})
    assert headers["Content-Type"] == "application/json"


def test_empty_body_and_bad_json(port: int) -> None:
    assert call_json(port, "/v1/models/default:predict", b"") == \
        (400, {"error": "JSON Parse error: The document is empty"})
    status, body = call_json(port, "/v1/models/default:predict", b"{nope")
    assert status == 400 and body["error"].startswith("JSON Parse error: ")


def test_status_without_model_name(port: int) -> None:
    assert call_json(port, "/v1/models") == (400, {"error": "Missing model name in request."})


def test_grpc_codes_map_to_tf_serving_http_codes() -> None:
    from pyserving.server.errors import ServingError
    from pyserving.server.rest import RestOptions, RestServer

    class FailingCore:
        code = grpc.StatusCode.OK

        def model_status(self, request: Any) -> Any:
            raise ServingError(self.code, f"failed with {self.code.name}")

    core = FailingCore()
    rest = RestServer(core, RestOptions(port=0, num_threads=2, timeout_ms=5000,
                                        enable_cors=False, max_request_bytes=1024),
                      host="127.0.0.1").start()
    try:
        for code, http in [(grpc.StatusCode.INVALID_ARGUMENT, 400),
                           (grpc.StatusCode.FAILED_PRECONDITION, 400),
                           (grpc.StatusCode.NOT_FOUND, 404), (grpc.StatusCode.UNAVAILABLE, 503),
                           (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
                           (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
                           (grpc.StatusCode.UNIMPLEMENTED, 501), (grpc.StatusCode.INTERNAL, 500),
                           (grpc.StatusCode.CANCELLED, 499)]:
            core.code = code
            assert call_json(rest.port, "/v1/models/m") == \
                (http, {"error": f"failed with {code.name}"})
    finally:
        rest.stop()


def test_rest_api_timeout_answers_504() -> None:
    from pyserving.server.rest import RestOptions, RestServer

    class SlowCore:
        def model_status(self, request: Any) -> Any:
            time.sleep(1.0)

    rest = RestServer(SlowCore(), RestOptions(port=0, num_threads=1, timeout_ms=100,
                                              enable_cors=False, max_request_bytes=1024),
                      host="127.0.0.1").start()
    try:
        assert call_json(rest.port, "/v1/models/m") == (504, {"error": "Deadline Exceeded"})
    finally:
        rest.stop()


# --- server options ----------------------------------------------------------------------------

def test_too_large_body_is_413(serve: Callable, testdata_model: Callable) -> None:
    server = serve(rest_api_port=free_port(), rest_api_max_request_bytes=1000,
                   model_name="default", model_base_path=testdata_model(TF1_MODEL))
    status, body = call_json(server.rest_port, "/v1/models/default:predict",
                             {"instances": [1.0] * 1000})
    assert status == 413
    assert "exceeds the limit of 1000 bytes" in body["error"]


def test_cors_headers_when_enabled(serve: Callable, testdata_model: Callable) -> None:
    server = serve(rest_api_port=free_port(), rest_api_enable_cors_support=True,
                   model_name="default", model_base_path=testdata_model(TF1_MODEL))
    status, _, headers = call(server.rest_port, "/v1/models/default")
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert headers["Access-Control-Allow-Methods"] == "POST, GET"
    preflight = call(server.rest_port, "/v1/models/default:predict", method="OPTIONS",
                     headers={"Origin": "http://example.com"})
    assert preflight[0] == 200
    missing = call(server.rest_port, "/v1/models/default:predict", method="OPTIONS")
    assert (missing[0], json.loads(missing[1])) == \
        (400, {"error": "Origin header is missing in CORS preflight"})


def test_no_cors_headers_by_default(port: int) -> None:
    assert "Access-Control-Allow-Origin" not in call(port, "/v1/models/default")[2]


def test_rest_port_zero_is_off(serve: Callable, testdata_model: Callable) -> None:
    server = serve(model_name="default", model_base_path=testdata_model(TF1_MODEL))
    assert server.rest_port is None


def test_rest_port_equal_to_grpc_port_is_a_start_up_error(serve: Callable,
                                                          testdata_model: Callable) -> None:
    from pyserving.server.errors import ServingError

    same = free_port()
    with pytest.raises(ServingError, match="server_options.http_port cannot be same as "
                                           "grpc_port"):
        serve(port=same, rest_api_port=same, model_name="default",
              model_base_path=testdata_model(TF1_MODEL))


# --- measurement -------------------------------------------------------------------------------

def test_measure_large_float_predict_rest_vs_grpc(server: Any) -> None:
    from pyserving.client.tensors import make_tensor_proto
    from pyserving.server.apis import predict_pb2, prediction_service_pb2_grpc, tensor_pb2

    values = np.random.default_rng(0).random((1000, 100), dtype=np.float32)
    body = json.dumps({"signature_name": "wide", "instances": values.tolist()}).encode()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "multi"
    request.model_spec.signature_name = "wide"
    request.inputs["x"].CopyFrom(make_tensor_proto(tensor_pb2.TensorProto, values))
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

        def rest_call() -> None:
            status, payload, _ = call(server.rest_port, "/v1/models/multi:predict", body)
            assert status == 200

        def grpc_call() -> None:
            stub.Predict(request, timeout=60)

        timings = {}
        for name, run in [("REST", rest_call), ("gRPC", grpc_call)]:
            run()  # warm up
            start = time.perf_counter()
            for _ in range(5):
                run()
            timings[name] = (time.perf_counter() - start) / 5
    print(f"\n1000x100 float predict: REST {timings['REST'] * 1e3:.1f} ms "
          f"(request body {len(body) / 1e6:.1f} MB), gRPC {timings['gRPC'] * 1e3:.1f} ms, "
          f"ratio {timings['REST'] / timings['gRPC']:.1f}x")
