"""The HTTP/REST API over real HTTP: TF Serving's REST tests, formats, routes and errors."""

from __future__ import annotations

import base64
import http.client
import json
import logging
import shutil
import socket
import stat
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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


# absl::Base64Unescape: padding optional, whitespace skipped, '.' pads too.
@pytest.mark.parametrize("encoded,raw", [
    ("aGVsbG8", b"hello"), ("aGVsbG8=", b"hello"), ("aGVs bG8=\n", b"hello"),
    ("aGk.", b"hi"), ("aGVsbA", b"hell"), ("", b""),
])
def test_b64_is_decoded_as_absl_does(port: int, encoded: str, raw: bytes) -> None:
    body = {"inputs": {"x": [[1.0, 1.0]], "text": [{"b64": encoded}]}}
    status, result = call_json(port, "/v1/models/multi:predict", body)
    assert (status, result["outputs"]["echo_bytes"]) == \
        (200, [{"b64": base64.b64encode(raw).decode()}])


@pytest.mark.parametrize("encoded", ["aGVsbG8==", "aGVsbA=", "a", "aGk=aGk=", "=", "aGk*"])
def test_b64_absl_refuses(port: int, encoded: str) -> None:
    body = {"inputs": {"x": [[1.0, 1.0]], "text": [{"b64": encoded}]}}
    assert call_json(port, "/v1/models/multi:predict", body) == \
        (400, {"error": "Unable to base64 decode"})


def test_signature_name_selects_signature_and_single_output_drops_its_name(port: int) -> None:
    body = {"signature_name": "wide", "instances": [[1.5] * 100]}
    assert call_json(port, "/v1/models/multi:predict", body) == \
        (200, {"predictions": [[3.0] * 100]})


# --- response JSON: TF Serving's structure and values; orjson's layout and digits -------------

def _answer(port: int, path: str, body: Any = None) -> Any:
    """The decoded JSON of a 200 answer, strictly: valid UTF-8, NaN/Infinity tokens allowed."""
    status, payload, headers = call(port, path, body)
    assert status == 200, payload
    assert headers["Content-Type"] == "application/json"
    return json.loads(payload.decode("utf-8"))


def _float32(values: Any) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def test_float32_outputs_read_back_to_tf_servings_float32_values(port: int) -> None:
    sent = [17999996.0, 0.3333333, 0.1, 1e7, 1e-40, 3.4e38]
    expected = _float32(sent) * np.float32(0.5) + np.float32(2)  # half_plus_two in float32
    status, payload, _ = call(port, "/v1/models/default:predict", {"instances": sent})
    assert status == 200
    np.testing.assert_array_equal(_float32(json.loads(payload)["predictions"]), expected)
    assert b"2.1666667" in payload  # float32's shortest digits, not float64's


def test_nan_and_infinity_tokens_round_trip(port: int) -> None:
    status, payload, _ = call(port, "/v1/models/default:predict",
                              b'{"instances": [NaN, Infinity, -Infinity, 1.0]}')
    assert status == 200
    assert payload.replace(b" ", b"") == b'{"predictions":[NaN,Infinity,-Infinity,2.5]}'


def test_row_format_with_several_outputs_b64_and_nan(port: int) -> None:
    body = b'{"instances": [{"x": [NaN, 1.0], "text": "a"}, {"x": [0.1, 0.2], "text": "b"}]}'
    answer = _answer(port, "/v1/models/multi:predict", body)
    assert [sorted(row) for row in answer["predictions"]] == [["echo_bytes", "length", "sum"]] * 2
    assert [row["echo_bytes"] for row in answer["predictions"]] == [{"b64": "YQ=="},
                                                                    {"b64": "Yg=="}]
    assert [row["length"] for row in answer["predictions"]] == [1, 1]
    np.testing.assert_array_equal(_float32([row["sum"] for row in answer["predictions"]]),
                                  [np.nan, np.float32(0.1) + np.float32(0.2)])


def test_columnar_format_with_several_outputs(port: int) -> None:
    body = b'{"inputs": {"x": [[1.0, 2.0]], "text": ["a\\"\\n\\u0001"]}}'
    assert _answer(port, "/v1/models/multi:predict", body) == {"outputs": {
        "echo_bytes": [{"b64": "YSIKAQ=="}], "length": [4], "sum": [3.0]}}


def test_scalar_output_is_a_bare_value_in_columnar_format(port: int) -> None:
    body = {"signature_name": "scalar", "inputs": [1.0, 2.5]}
    assert _answer(port, "/v1/models/multi:predict", body) == \
        {"outputs": {"total": 3.5, "x": [1.0, 2.5]}}


def test_string_outputs_round_trip(port: int) -> None:
    text = 'q"\\\t\u001f\u00e9\U0001f600'
    body = {"signature_name": "strings", "instances": [text]}
    assert _answer(port, "/v1/models/multi:predict", body) == {"predictions": [text]}


def test_string_output_that_is_not_utf8_is_valid_json(port: int) -> None:
    """TF Serving writes the raw bytes (not JSON); here they become U+FFFD."""
    body = b'{"signature_name": "strings", "instances": ["\xff\xfeA"]}'
    assert _answer(port, "/v1/models/multi:predict", body) == \
        {"predictions": ["\ufffd\ufffdA"]}


def test_classify_and_regress_answers(port: int) -> None:
    classify = {"signature_name": "classify_x_to_y", "examples": [{"x": 20.0}, {"x": 1.0}]}
    assert _answer(port, "/v1/models/default:classify", classify) == \
        {"results": [[["", 12.0]], [["", 2.5]]]}
    regress = {"signature_name": "regress_x_to_y", "examples": [{"x": 80.0}, {"x": 0.1}]}
    results = _answer(port, "/v1/models/default:regress", regress)["results"]
    np.testing.assert_array_equal(_float32(results), [42.0, np.float32(0.1) / 2 + 2])


def test_error_answer(port: int) -> None:
    status, payload, headers = call(port, "/v1/models/nope:predict", {"instances": [1.0]})
    assert (status, headers["Content-Type"]) == (404, "application/json")
    assert json.loads(payload) == {"error": "Servable not found for request: Latest(nope)"}


def test_integer_values_convert_to_float_inputs(port: int) -> None:
    assert call_json(port, "/v1/models/default:predict", {"instances": [2, 4]}) == \
        (200, {"predictions": [3.0, 4.0]})


# orjson and python-rapidjson keep the last value of a repeated name (rapidjson's FindMember
# finds the first): RFC 8259 leaves it to the parser.
@pytest.mark.parametrize("path,body,expected", [
    ("/v1/models/default:predict", b'{"instances": [1.0], "instances": [2.0]}',
     (200, {"predictions": [3.0]})),
    ("/v1/models/default:predict",
     b'{"signature_name": "nope", "instances": [1.0], "signature_name": "serving_default"}',
     (200, {"predictions": [2.5]})),
    ("/v1/models/multi:predict",
     b'{"inputs": {"x": [[1.0, 1.0]], "text": [{"b64": "aGk=", "b64": "YWI="}], '
     b'"x": [[5.0, 5.0]]}}',
     (200, {"outputs": {"sum": [10.0], "length": [2], "echo_bytes": [{"b64": "YWI="}]}})),
    ("/v1/models/default:regress",
     b'{"signature_name": "regress_x_to_y", "examples": [{"x": 1.0, "x": 2.0}]}',
     (200, {"results": [3.0]})),
])
def test_repeated_names_keep_the_last(port: int, path: str, body: bytes,
                                      expected: tuple) -> None:
    assert call_json(port, path, body) == expected


# --- routes ------------------------------------------------------------------------------------

@pytest.mark.parametrize("method, path", [
    ("GET", "/v1/models/default/versions/99999999999999999999"),
    ("POST", "/v1/models/default/versions/9223372036854775808:predict")])
def test_version_beyond_int64_is_a_400_with_an_empty_body(port: int, method: str,
                                                          path: str) -> None:
    # ParseModelInfo fails before TF Serving's handler writes its error JSON
    status, payload, headers = call(port, path, {"instances": [1.0]} if method == "POST" else None,
                                    method=method)
    assert (status, payload, headers["Content-Type"]) == (400, b"", "application/json")


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


@pytest.mark.parametrize("method,path", [("GET", "/v3/models/default"), ("POST", "/"),
                                         ("OPTIONS", "/models/default:predict")])
def test_path_outside_v1_is_a_json_404(port: int, method: str, path: str) -> None:
    """TF Serving's libevent answers with its HTML page; JSON here, which JSON clients read."""
    status, payload, headers = call(port, path, b"{}" if method == "POST" else None,
                                    method=method)
    assert (status, json.loads(payload), headers["Content-Type"]) == \
        (404, {"error": f"Not Found: {path}"}, "application/json")


@pytest.mark.parametrize("path,code", [("/v1/models/a%ZZ", 404), ("/v1/models/a|b:predict", 400),
                                       ("/v1/models/default?x={}", 404), ("/v2/a%", 404)])
def test_target_outside_strict_uri_syntax_reaches_the_routes(port: int, path: str,
                                                             code: int) -> None:
    """TF Serving's libevent refuses them with its HTML 400 page (evhttp_uri_parse)."""
    status, payload, _ = call(port, path)
    assert status == code
    if path.startswith("/v1/"):
        assert list(json.loads(payload)) == ["error"]


@pytest.mark.parametrize("method", ["TRACE", "PROPFIND", "PURGE"])
def test_method_libevent_does_not_allow_is_405(port: int, method: str) -> None:
    """(TF Serving's libevent answers 501 with its HTML page.)"""
    status, payload, headers = call(port, "/v1/models/default", method=method)
    assert (status, json.loads(payload)) == (405, {"error": f"Method Not Allowed: {method}"})
    assert headers["Allow"] == "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT"


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_other_allowed_methods_are_malformed_requests(port: int, method: str) -> None:
    assert call_json(port, "/v1/models/default", b"{}", method=method) == \
        (400, {"error": f"Malformed request: {method} /v1/models/default"})


def test_cors_preflight_answers_with_an_empty_body(port: int) -> None:
    """http_server.cc only logs the FAILED_PRECONDITION of a preflight without an Origin."""
    ok = call(port, "/v1/models/default:predict", method="OPTIONS",
              headers={"Origin": "https://example.com"})
    missing = call(port, "/v1/models/default:predict", method="OPTIONS")
    for (status, payload, headers), code in [(ok, 200), (missing, 400)]:
        assert (status, payload) == (code, b"")
        assert "Access-Control-Allow-Origin" not in headers


# --- errors ------------------------------------------------------------------------------------

@pytest.mark.parametrize("path,body,code,message", [
    ("/v1/models/default:predict", {"signature_name": "serving_default"}, 400,
     "Missing 'inputs' or 'instances' key"),
    ("/v1/models/default:predict", {"inputs": [1.0], "instances": [1.0]}, 400,
     "JSON Value: {\n    \"inputs\": [1.0],\n    \"instances\": [1.0]\n} Not formatted "
     "correctly expecting only one of 'inputs' or 'instances' keys to exist "),
    # python-rapidjson's numbers (rapidjson's C++ writer: 1e21, 1.5e-7, and it stops at NaN)
    ("/v1/models/default:predict", {"instances": 5, "a": [1e21, 1.5e-7, float("nan"), 2]}, 400,
     "JSON Value: {\n    \"instances\": 5,\n    \"a\": [1e+21, 1.5e-07, NaN, 2]\n} Expecting "
     "'instances' to be an list/array"),
    # the writer call that reaches 256 bytes is the last one
    ("/v1/models/default:predict", {"instances": 5, "a": list(range(200))}, 400,
     "JSON Value: {\n    \"instances\": 5,\n    \"a\": [" + ", ".join(map(str, range(59)))
     + " Expecting 'instances' to be an list/array"),
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
    assert call_json(port, "/v1/models/default:predict", b"{nope") == \
        (400, {"error": "JSON Parse error: Missing a name for object member. at offset: 1"})


# rapidjson 1.1.0's GetParseError_En text and GetErrorOffset, as json_tensor.cc ParseJson
# reports them (kParseIterativeFlag | kParseNanAndInfFlag | kParseStopWhenDoneFlag).
@pytest.mark.parametrize("body,error", [
    (b"instances = [1, 2]", "Invalid value. at offset: 0"),
    (b"   ", "The document is empty. at offset: 3"),
    (b"]", "The document is empty. at offset: 0"),
    (b"\xef\xbb\xbf  ", "The document is empty. at offset: 5"),
    (b'{"instances": [1e400]}', "Number too big to be stored in double. at offset: 15"),
    (b'{"instances": [NaN, 1, 2e309]}', "Number too big to be stored in double. at offset: 23"),
    (b'{"instances": [' + b"9" * 400 + b"]}",
     "Number too big to be stored in double. at offset: 15"),
    (b'{"instances": ["\\ud800"]}', "The surrogate pair in string is invalid. at offset: 16"),
    (b'{"instances": ["\\ud800\\u0041"]}',
     "The surrogate pair in string is invalid. at offset: 16"),
    (b'{"instances": [1.0, 2.0', "Missing a comma or ']' after an array element. at offset: 23"),
    (b'{"instances": [1.0 2.0]}', "Missing a comma or ']' after an array element. at offset: 19"),
    (b'{"instances": [1.0,]}', "Invalid value. at offset: 19"),
    (b'{"instances": [1.0]', "Missing a comma or '}' after an object member. at offset: 19"),
    (b'{"instances": [1.0],}', "Missing a name for object member. at offset: 20"),
    (b'{"instances" [1.0]}', "Missing a colon after a name of object member. at offset: 13"),
    (b'{instances: [1.0]}', "Missing a name for object member. at offset: 1"),
    (b'{"instances": ["a\\q"]}', "Invalid escape character in string. at offset: 17"),
    (b'{"instances": ["a\tb"]}', "Invalid escape character in string. at offset: 17"),
    (b'{"instances": ["a', "Missing a closing quotation mark in string. at offset: 17"),
    (b'{"instances": ["\\u12g4"]}',
     "Incorrect hex digit after \\u escape in string. at offset: 16"),
    (b'{"instances": [1.]}', "Miss fraction part in number. at offset: 17"),
    (b'{"instances": [1e+]}', "Miss exponent in number. at offset: 18"),
    (b'{"instances": [-]}', "Invalid value. at offset: 16"),
    (b'{"instances": [nul]}', "Invalid value. at offset: 18"),
    (b'{"instances": [Infinite]}', "Invalid value. at offset: 22"),
])
def test_invalid_json_gets_rapidjsons_message_and_offset(port: int, body: bytes,
                                                          error: str) -> None:
    assert call_json(port, "/v1/models/default:predict", body) == \
        (400, {"error": f"JSON Parse error: {error}"})


@pytest.mark.parametrize("body,predictions", [
    (b'\xef\xbb\xbf{"instances": [2.0]}', [3.0]),  # a UTF-8 BOM is skipped
    (b'{"instances": [2.0]} and anything after the document', [3.0]),
    (b'{"instances": [2.0]}\x00{', [3.0]),
    (b'{"instances": [Inf, 2.0, -Infinity]}', [float("inf"), 3.0, -float("inf")]),
    # rapidjson's TooBig is about its exponent check, not the value: 1.5e309 is Infinity.
    (b'{"instances": [1.5e309, 0.30000000000000004, 18446744073709551616]}',
     [float("inf"), 2.15, 2.0**63]),
    (b'{"instances": [Inf, 2.0]} \xff trailing bytes that are not UTF-8', [float("inf"), 3.0]),
])
def test_json_rapidjson_accepts(port: int, body: bytes, predictions: list) -> None:
    status, payload, _ = call(port, "/v1/models/default:predict", body)
    assert status == 200
    np.testing.assert_array_equal(_float32(json.loads(payload)["predictions"]),
                                  _float32(predictions))


def test_lone_low_surrogate_is_refused(port: int) -> None:
    """rapidjson 1.1.0 (TF Serving's) keeps it; later rapidjson, python-rapidjson, refuses."""
    body = b'{"instances": [{"x": [1.0, 2.0], "text": "\\udc00"}]}'
    assert call_json(port, "/v1/models/multi:predict", body) == (400, {
        "error": "JSON Parse error: The surrogate pair in string is invalid. at offset: 42"})


@pytest.mark.parametrize("text,raw", [
    (b"\xff\xfeA", b"\xff\xfeA"),  # no encoding validation: the raw bytes go through
    (b"\\ud83d\\ude00", "\U0001f600".encode()),
])
def test_string_bytes_as_rapidjson_holds_them(port: int, text: bytes, raw: bytes) -> None:
    body = b'{"instances": [{"x": [1.0, 2.0], "text": "' + text + b'"}]}'
    assert call_json(port, "/v1/models/multi:predict", body) == (200, {"predictions": [
        {"sum": 3.0, "length": len(raw), "echo_bytes": {"b64": base64.b64encode(raw).decode()}}]})


# TF Serving matches its routes against the path with the query (evhttp_request.cc).
@pytest.mark.parametrize("method,path,code,message", [
    ("POST", "/v1/models/default:predict?x=1", 400,
     "Malformed request: POST /v1/models/default:predict?x=1"),
    ("GET", "/v1/models/default/metadata?x=1", 400,
     "Malformed request: GET /v1/models/default/metadata?x=1"),
    ("GET", "/v1/models/default?x=1", 404, "Could not find any versions of model default?x=1"),
    ("GET", "/v1/models?x", 400, "Malformed request: GET /v1/models?x"),
    ("GET", "/v1/models/default?", 404, "Could not find any versions of model default?"),
    ("GET", "/v1/models/default?a?b=@!", 404,
     "Could not find any versions of model default?a?b=@!"),
    ("GET", "/v1/models/default?a=/", 400, "Malformed request: GET /v1/models/default?a=/"),
])
def test_query_string_is_part_of_the_matched_path(port: int, method: str, path: str, code: int,
                                                  message: str) -> None:
    body = {"instances": [1.0]} if method == "POST" else None
    assert call_json(port, path, body, method=method) == (code, {"error": message})


def test_fragment_is_part_of_the_matched_path(port: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("GET", "/v1/models/default#top")
        response = connection.getresponse()
        assert (response.status, json.loads(response.read())) == \
            (404, {"error": "Could not find any versions of model default#top"})
    finally:
        connection.close()


def test_status_without_model_name(port: int) -> None:
    assert call_json(port, "/v1/models") == (400, {"error": "Missing model name in request."})


def test_grpc_codes_map_to_tf_serving_http_codes() -> None:
    from pyserving.server.errors import ServingError
    from pyserving.server.rest.server import RestOptions, RestServer

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
    from pyserving.server.rest.server import RestOptions, RestServer

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
    missing = call(server.rest_port, "/v1/models/default:predict", method="OPTIONS")
    assert (preflight[0], preflight[1], missing[0], missing[1]) == (200, b"", 400, b"")
    for _, _, answer_headers in (preflight, missing):
        assert answer_headers["Access-Control-Allow-Origin"] == "*"
        assert answer_headers["Access-Control-Allow-Headers"] == "Content-Type"


def test_no_cors_headers_by_default(port: int) -> None:
    assert "Access-Control-Allow-Origin" not in call(port, "/v1/models/default")[2]


def test_rest_port_zero_is_off(serve: Callable, testdata_model: Callable) -> None:
    server = serve(model_name="default", model_base_path=testdata_model(TF1_MODEL))
    assert server.rest_port is None


def test_rest_port_equal_to_grpc_port_is_skipped_and_grpc_serves(
        serve: Callable, testdata_model: Callable, caplog: pytest.LogCaptureFixture) -> None:
    same = free_port()
    with caplog.at_level(logging.ERROR, logger="pyserving.server.app"):
        server = serve(port=same, rest_api_port=same, model_name="default",
                       model_base_path=testdata_model(TF1_MODEL))
    assert server.rest_port is None  # server.cc logs it and serves gRPC only
    assert "server_options.http_port cannot be same as grpc_port. Please use a different port " \
        "for HTTP/REST API. Skipped exporting HTTP/REST API." in caplog.text
    assert _grpc_predict(server.grpc_target) == [3.0]


def test_rest_port_that_cannot_be_bound_is_skipped_and_grpc_serves(
        serve: Callable, testdata_model: Callable, caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level(logging.ERROR, logger="pyserving.server.app"):
            server = serve(rest_api_port=port, model_name="default",
                           model_base_path=testdata_model(TF1_MODEL))
    assert server.rest_port is None
    assert f"Failed to start HTTP Server at localhost:{port}" in caplog.text
    assert _grpc_predict(server.grpc_target) == [3.0]


def _grpc_predict(target: str) -> list[float]:
    from pyserving.client import PredictionClient

    with PredictionClient(target, timeout=30) as client:
        return client.predict("default", {"x": [[2.0]]})["y"].reshape(-1).tolist()


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
            status, _payload, _ = call(server.rest_port, "/v1/models/multi:predict", body)
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


def test_predict_resolves_the_model_once(server: Any, port: int,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The body is read against the signature of the very version that runs it: a version
    swap between two look-ups cannot feed one version's dtypes to the other."""
    acquired = []
    acquire = server.manager.acquire

    def counted(*args: Any, **kwargs: Any) -> Any:
        acquired.append(args)
        return acquire(*args, **kwargs)

    monkeypatch.setattr(server.manager, "acquire", counted)
    assert call_json(port, "/v1/models/two/labels/canary:predict", {"instances": [2.0]}) == \
        (200, {"predictions": [3.0]})
    assert acquired == [("two",)]


def test_a_huge_integer_in_an_unused_field_is_a_400_not_a_500(port: int) -> None:
    """Issue #24: HTTP 500 ValueError('Invalid integer value') before; rapidjson's 400 now."""
    body = b'{"instances": [[NaN]], "x": ' + b"1" * 5000 + b"}"
    assert call_json(port, "/v1/models/default:predict", body) == (400, {
        "error": "JSON Parse error: Number too big to be stored in double. at offset: 28"})
