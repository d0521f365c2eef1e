"""Hostile HTTP/REST input: hypothesis-generated bodies and URLs against one real server.

Every case must be answered within the deadline with 200 or a 4xx carrying TF Serving's
``{"error": "..."}`` body (501 where TF Serving answers UNIMPLEMENTED too), never a 5xx, and
the server must still answer a valid predict afterwards. Accepted predicts of the echo model
must return exactly what was sent. The examples are derandomized; the module prints how many
it tried.
"""

from __future__ import annotations

import base64
import collections
import http.client
import json
import shutil
import socket
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support import TESTDATA, write_to_terminal

MODEL = "saved_model_half_plus_two_cpu"
BODY_LIMIT = 2**20  # --rest_api_max_request_bytes of the fuzzed server
DEADLINE = 10.0
FAST = 2.0
ALIVE_EVERY = 5
# The echo model's signatures: one input "x" of each dtype, any shape, returned as "y".
ECHO_DTYPES = {"float": "float32", "double": "float64", "int32": "int32", "int64": "int64",
               "uint8": "uint8", "bool": "bool", "string": "string", "half": "float16"}
ALLOWED = {200, 400, 404, 413, 501}  # 501: UNIMPLEMENTED, for a dtype JSON cannot fill

FUZZ = settings(deadline=None, derandomize=True, database=None, print_blob=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])

CASES: collections.Counter = collections.Counter()
STATUSES: collections.Counter = collections.Counter()
SECONDS: list[float] = []


# --- the server --------------------------------------------------------------------------------

def _build_echo_model(base: Path) -> None:
    import tensorflow as tf

    class Echo(tf.Module):
        pass

    module = Echo()
    signatures = {}
    for name, dtype in ECHO_DTYPES.items():
        function = tf.function(lambda x: {"y": tf.identity(x)},
                               input_signature=[tf.TensorSpec(None, dtype, name="x")])
        setattr(module, name, function)
        signatures[name] = function
    pair = tf.function(lambda x, text: {"sum": tf.reduce_sum(x, axis=-1), "text_bytes": text},
                       input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x"),
                                        tf.TensorSpec([None], tf.string, name="text")])
    module.pair = pair
    signatures["serving_default"] = pair
    tf.saved_model.save(module, str(base / "1"), signatures=signatures)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Target:
    """A keep-alive HTTP connection to the fuzzed server."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._connection = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE)

    def call(self, method: str, path: str, body: bytes | None = None
             ) -> tuple[int, bytes, str, float]:
        """(HTTP status, body, content type, seconds) of one request."""
        started = time.monotonic()
        for attempt in (1, 2):
            try:
                self._connection.request(method, path, body=body)
                response = self._connection.getresponse()
                payload = response.read()
                break
            except (ConnectionError, http.client.HTTPException):
                self._connection.close()  # the server closed an idle connection: reconnect
                if attempt == 2:
                    raise
        return (response.status, payload, response.getheader("Content-Type", ""),
                time.monotonic() - started)

    def close(self) -> None:
        self._connection.close()


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory,
           request: pytest.FixtureRequest) -> Iterator[Target]:
    from pyserving.server import ModelServer, ServerOptions

    root = tmp_path_factory.mktemp("fuzz_rest")
    shutil.copytree(TESTDATA / MODEL, root / "default")
    for path in [root / "default", *(root / "default").rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)
    _build_echo_model(root / "echo")
    config = root / "models.config"
    config.write_text(f"""model_config_list {{
  config {{ name: "default" base_path: "{root / 'default'}" model_platform: "tensorflow" }}
  config {{ name: "echo" base_path: "{root / 'echo'}" model_platform: "tensorflow" }}
}}""")
    options = ServerOptions(port=0, rest_api_port=_free_port(), model_config_file=str(config),
                            rest_api_max_request_bytes=BODY_LIMIT)
    server = ModelServer(options, host="127.0.0.1").start()
    connection = Target(server.rest_port)
    yield connection
    connection.close()
    server.stop(grace=None)
    p99, slowest = np.percentile(SECONDS, [99, 100]) if SECONDS else (0.0, 0.0)
    write_to_terminal(request, (
        f"\nREST fuzzing: {sum(CASES.values())} cases "
        f"({', '.join(f'{k} {v}' for k, v in sorted(CASES.items()))}); "
        f"HTTP statuses: {dict(STATUSES.most_common())}; "
        f"answered in p99 {p99 * 1000:.1f} ms, slowest {slowest * 1000:.0f} ms"))


VALID_BODY = b'{"instances": [1.0, 2.0, 5.0]}'


def assert_serving(target: Target) -> None:
    status, payload, _, _ = target.call("POST", "/v1/models/default:predict", VALID_BODY)
    assert (status, json.loads(payload)) == (200, {"predictions": [2.5, 3.0, 4.5]})


_HUGE_VERSION = "99999999999999999999"  # beyond int64


def check(target: Target, method: str, path: str, body: bytes | None, case: str
          ) -> tuple[int, Any]:
    """Send one case; assert the answer is bounded and TF Serving-shaped; every few, that the
    server still serves. Returns the status and the decoded JSON body."""
    status, payload, content_type, seconds = target.call(method, path, body)
    shown = f"{case}: {method} {path} {body[:200] if body else body!r}"
    assert status in ALLOWED, f"{shown} -> {status} {payload[:300]!r}"
    assert content_type == "application/json", f"{shown} -> {content_type}"
    # always valid JSON: string outputs that are not UTF-8 come out with U+FFFD
    document = json.loads(payload.decode("utf-8")) if payload else None
    unconvertible_version = f"/versions/{_HUGE_VERSION}" in path  # 400 with an empty body
    if status != 200 and not (status == 400 and not payload and unconvertible_version):
        assert isinstance(document, dict) and list(document) == ["error"], shown
        assert isinstance(document["error"], str) and document["error"].strip(), shown
    SECONDS.append(seconds)
    CASES[case] += 1
    STATUSES[status] += 1
    if CASES[case] % ALIVE_EVERY == 0:
        assert_serving(target)
    return status, document


# --- strategies --------------------------------------------------------------------------------

TEXT = st.text(max_size=8)
BIG_NUMBERS = st.sampled_from([2**31, 2**32, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -2**63,
                               -2**63 - 1, 10**30, -10**30, 1e38, 3.5e38, 1e308, -1e308,
                               5e-324, 1e-46])
B64 = st.one_of(st.binary(max_size=8).map(lambda raw: {"b64": base64.b64encode(raw).decode()}),
                st.builds(lambda text: {"b64": text}, TEXT))  # mostly not base64 at all
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-300, 300), BIG_NUMBERS,
                    st.floats(allow_nan=True, allow_infinity=True), TEXT, B64)
JSON_VALUES = st.recursive(
    SCALARS, lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["instances", "inputs", "x", "b64", "text"]) | TEXT,
                      children, max_size=3), max_leaves=16)
LEAVES_OF_ONE_KIND = st.sampled_from([
    st.floats(allow_nan=True, allow_infinity=True), st.floats(width=32),
    st.integers(-2**31, 2**31 - 1), st.integers(0, 255), st.integers(-2**63, 2**63 - 1),
    st.booleans(), TEXT, B64, SCALARS,  # the last one mixes kinds: [1.5, true] and the like
])


# Leaves that fit each echo signature's dtype (and its edges).
FITTING_LEAVES = {
    "float": st.floats(allow_nan=True, allow_infinity=True) | st.integers(-2**70, 2**70),
    "double": st.floats(allow_nan=True, allow_infinity=True) | st.integers(-2**63, 2**64 - 1),
    "int32": st.integers(-2**31 - 1, 2**31), "int64": st.integers(-2**63 - 1, 2**63),
    "uint8": st.integers(-1, 256), "bool": st.booleans(), "string": TEXT | B64,
    "half": st.floats(width=16),
}


@st.composite
def dense_values(draw: Callable, leaves: st.SearchStrategy | None = None) -> Any:
    """A nested list of one shape (sometimes ragged), with leaves of one kind or mixed."""
    leaves = leaves if leaves is not None else draw(LEAVES_OF_ONE_KIND)
    shape = draw(st.lists(st.integers(0, 3), max_size=3))

    def build(level: int) -> Any:
        if level == len(shape):
            return draw(leaves)
        size = shape[level] + (draw(st.sampled_from([0] * 9 + [1])) if level else 0)
        return [build(level + 1) for _ in range(size)]

    return build(0)


SIGNATURES = st.one_of(st.sampled_from(sorted(ECHO_DTYPES)), st.sampled_from(
    ["", "serving_default", "pair", "nope", 5, None]), TEXT)


@st.composite
def predict_documents(draw: Callable) -> Any:
    kind = draw(st.sampled_from(["instances", "inputs", "objects", "both", "random"]))
    document: dict = {}
    if draw(st.integers(0, 4)):  # mostly one of the echo signatures, with fitting values
        document["signature_name"] = name = draw(st.sampled_from(sorted(ECHO_DTYPES)))
        fitting = dense_values(FITTING_LEAVES[name])
        if kind in ("instances", "inputs"):
            document[kind] = draw(fitting | dense_values())
            return document
    elif draw(st.booleans()):
        document["signature_name"] = draw(SIGNATURES)
    if kind == "instances":
        document["instances"] = draw(dense_values())
    elif kind == "inputs":
        document["inputs"] = draw(dense_values() | st.fixed_dictionaries(
            {"x": dense_values()}, optional={"text": dense_values(), "z": SCALARS}))
    elif kind == "objects":
        document["instances"] = draw(st.lists(st.fixed_dictionaries(
            {"x": dense_values()}, optional={"text": dense_values() | B64, "z": SCALARS}),
            max_size=3))
    elif kind == "both":
        document.update(instances=draw(dense_values()), inputs=draw(dense_values()))
    else:
        return draw(JSON_VALUES)
    return document


FEATURE_VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=4), JSON_VALUES)


@st.composite
def example_documents(draw: Callable) -> Any:
    examples = st.dictionaries(st.sampled_from(["x", "x2", "y"]) | TEXT, FEATURE_VALUES,
                               max_size=3)
    document: dict = {}
    if draw(st.booleans()):
        document["signature_name"] = draw(st.sampled_from(
            ["classify_x_to_y", "regress_x_to_y", "regress_x2_to_y3", "", "nope"]) | TEXT)
    if draw(st.integers(0, 4)) == 0:
        document["context"] = draw(examples | JSON_VALUES)
    if draw(st.integers(0, 9)):
        document["examples"] = draw(st.lists(examples, max_size=3) | JSON_VALUES)
    return document


def encode(document: Any) -> bytes:
    return json.dumps(document, allow_nan=True).encode()


@st.composite
def mutated(draw: Callable, body: bytes) -> bytes:
    """A body with bytes flipped, inserted (invalid UTF-8 too), cut or repeated."""
    data = bytearray(body)
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "insert", "cut", "truncate"]))
        if action == "flip" and where < len(data):
            data[where] = draw(st.integers(0, 255))
        elif action == "insert":
            data[where:where] = draw(st.sampled_from(
                [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\\ud800", b"NaN", b"-Infinity", b"Inf",
                 b"1e999", b"[", b"]", b"{", b"}", b",", b'"', b"\x00", b"true"]))
        elif action == "cut":
            del data[where:where + draw(st.integers(1, 4))]
        else:
            del data[where:]
    return bytes(data)


# Path parts without a line feed: aiohttp's catch-all route does not match one (see
# test_line_feed_in_a_model_name_gets_a_json_404).
PATH_TEXT = st.text(st.characters(exclude_characters="\n", exclude_categories=("Cs",)),
                    max_size=8)  # quote() cannot encode a lone surrogate


def model_path(draw: Callable, models: list[str]) -> str:
    name = draw(st.sampled_from(models) | PATH_TEXT)
    path = f"/v1/models/{quote(name, safe='')}"
    choice = draw(st.sampled_from(["none", "none", "version", "label"]))
    if choice == "version":
        path += f"/versions/{draw(st.sampled_from(['1', '123', '0', _HUGE_VERSION]))}"
    elif choice == "label":
        path += f"/labels/{quote(draw(st.sampled_from(['stable']) | PATH_TEXT), safe='')}"
    return path


# --- the tests ---------------------------------------------------------------------------------

@settings(FUZZ, max_examples=700)
@given(document=predict_documents(), data=st.data())
def test_predict_bodies(target: Target, document: Any, data: st.DataObject) -> None:
    path = "/v1/models/echo:predict" if data.draw(st.integers(0, 4)) else \
        model_path(data.draw, ["echo", "default"]) + ":predict"
    status, answer = check(target, "POST", path, encode(document), "predict")
    if status == 200 and path == "/v1/models/echo:predict":
        assert_echoed(document, answer)


def assert_echoed(document: dict, answer: dict) -> None:
    """An accepted echo predict returns its input, as the signature's dtype holds it."""
    name = document.get("signature_name", "")
    if name not in ECHO_DTYPES or name in ("string", "half"):
        return
    sent = document["instances"] if "instances" in document else document["inputs"]
    if isinstance(sent, dict):
        sent = sent["x"]
    elif isinstance(sent, list) and sent and isinstance(sent[0], dict):
        sent = [item["x"] for item in sent]
    got = answer["predictions"] if "instances" in document else answer["outputs"]
    dtype = np.dtype(ECHO_DTYPES[name])
    # Doubles narrowed to float; int32 values narrowed with wrap-around, as C++ casts do.
    wide = {"f": np.float64, "i": np.int64, "u": np.int64}.get(dtype.kind, dtype)
    with np.errstate(over="ignore"):  # a double beyond float's range is infinity
        expected = np.array(sent, dtype=wide).astype(dtype)
    np.testing.assert_array_equal(np.array(got, dtype=dtype), expected)


@settings(FUZZ, max_examples=250)
@given(document=example_documents(), verb=st.sampled_from(["classify", "regress"]))
def test_classify_and_regress_bodies(target: Target, document: Any, verb: str) -> None:
    check(target, "POST", f"/v1/models/default:{verb}", encode(document), verb)


@settings(FUZZ, max_examples=400)
@given(data=st.data())
def test_mutated_bodies(target: Target, data: st.DataObject) -> None:
    seed = data.draw(st.sampled_from([
        VALID_BODY, b'{"signature_name": "float", "inputs": [[1.5, 2], [3, 4]]}',
        b'{"signature_name": "string", "instances": [{"b64": "aGk="}, "x"]}',
        b'{"instances": [{"x": [1, 2], "text": "a"}]}',
        b'{"examples": [{"x": 1.0}, {"x": [2, 3], "y": "s"}], "context": {"c": 1}}']))
    verb = "classify" if b"examples" in seed else "predict"
    model = "default" if seed in (VALID_BODY,) or verb == "classify" else "echo"
    check(target, "POST", f"/v1/models/{model}:{verb}", data.draw(mutated(seed)), "mutated")


@settings(FUZZ, max_examples=300)
@given(data=st.data(), method=st.sampled_from(["GET", "GET", "POST", "PUT", "DELETE"]))
def test_urls(target: Target, data: st.DataObject, method: str) -> None:
    path = model_path(data.draw, ["default", "echo", "nope", ""])
    path += data.draw(st.sampled_from(["", "", "/metadata", ":predict", ":classify", ":regress",
                                       ":PREDICT", "/", "/metadata/x", ":", "%ZZ", "%ff"]))
    body = encode(data.draw(JSON_VALUES)) if method != "GET" else None
    check(target, method, path, body, "urls")


@settings(FUZZ, max_examples=300)
@given(body=st.binary(max_size=200), verb=st.sampled_from(["predict", "classify", "regress"]))
def test_random_bytes(target: Target, body: bytes, verb: str) -> None:
    check(target, "POST", f"/v1/models/echo:{verb}", body, "random bytes")


DEEP = [1, 32, 33, 64, 65, 1000, 1024, 1025, 5000, 100_000]


@pytest.mark.parametrize("depth", DEEP)
@pytest.mark.parametrize("shape", ["open", "closed", "value", "object"])
def test_deep_nesting(target: Target, depth: int, shape: str) -> None:
    """100000 '[' and friends: a 400 (or a 200 for what is a real tensor), in bounded time."""
    body = {"open": b'{"instances": ' + b"[" * depth,
            "closed": b'{"signature_name": "float", "instances": ' + b"[" * depth + b"1.5"
                      + b"]" * depth + b"}",
            "value": b'{"signature_name": "string", "inputs": ' + b"[" * depth + b'"s"'
                     + b"]" * depth + b"}",
            "object": b'{"instances": ' + b'{"a": ' * depth + b"1" + b"}" * depth + b"}"}[shape]
    status, answer = check(target, "POST", "/v1/models/echo:predict", body, "deep nesting")
    # Tensors of up to 64 dimensions (numpy's limit), strings up to 32 (TensorFlow's bridge).
    assert status == (200 if depth <= {"closed": 64, "value": 32}.get(shape, 0) else 400), answer


@pytest.mark.parametrize("body,message", [
    (b'{"signature_name": "float", "instances": [1.5, true]}',
     "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: "
     "JSON Value: true Type: True is not of expected type: float"),
    (b'{"signature_name": "int64", "inputs": [[1, 2], [false, 3]]}',
     "JSON Value: false Type: False is not of expected type: int64"),
    (b'{"signature_name": "double", "inputs": [1e999]}',
     "JSON Parse error: Number too big to be stored in double. at offset: 40"),
    (b'{"signature_name": "double", "inputs": [' + b"1" * 400 + b"]}",
     "JSON Parse error: Number too big to be stored in double. at offset: 40"),
    (b'{"signature_name": "string", "inputs": ["\\ud800"], "x": NaN}',
     "JSON Parse error: The surrogate pair in string is invalid. at offset: 41"),
    (b'{"signature_name": "\\udc00"}',  # rapidjson 1.1.0 (TF Serving's) kept it
     "JSON Parse error: The surrogate pair in string is invalid. at offset: 20"),
    (b'{"signature_name": "\xff"}',  # bytes that are not UTF-8 are taken as they are
     'Serving signature name: "\ufffd" not found in signature def'),
])
def test_values_tf_serving_rejects(target: Target, body: bytes, message: str) -> None:
    status, answer = check(target, "POST", "/v1/models/echo:predict", body, "rejected")
    assert (status, answer) == (400, {"error": message})


@pytest.mark.parametrize("body,predictions", [
    (b'{"signature_name": "float", "instances": [NaN, Infinity, -Infinity, 1e39]}',
     [float("nan"), float("inf"), -float("inf"), float("inf")]),
    (b'{"signature_name": "double", "instances": [1, 2.5, 18446744073709551615]}',
     [1.0, 2.5, 1.8446744073709552e19]),
    (b'{"signature_name": "bool", "instances": [true, false]}  trailing bytes', [True, False]),
])
def test_values_tf_serving_accepts(target: Target, body: bytes, predictions: list) -> None:
    status, answer = check(target, "POST", "/v1/models/echo:predict", body, "accepted")
    assert status == 200
    np.testing.assert_array_equal(answer["predictions"], predictions)


def test_integers_below_int64_are_float_features(target: Target) -> None:
    """rapidjson holds -2**63-1 as a double, so the feature is a float_list."""
    body = b'{"signature_name": "regress_x_to_y", "examples": [{"x": -9223372036854775809}]}'
    status, answer = check(target, "POST", "/v1/models/default:regress", body, "accepted")
    assert status == 200
    np.testing.assert_array_equal(np.float32(answer["results"]), [np.float32(-4.61168602e18)])


def test_body_over_the_limit_is_413_and_the_server_serves_on(target: Target) -> None:
    body = b'{"instances": [' + b"1.0," * (BODY_LIMIT // 4) + b"1.0]}"
    status, answer = check(target, "POST", "/v1/models/default:predict", body, "over limit")
    assert status == 413
    assert f"exceeds the limit of {BODY_LIMIT} bytes" in answer["error"]
    assert_serving(target)


def test_line_feed_in_a_model_name_gets_a_json_404(target: Target) -> None:
    status, payload, content_type, _ = target.call("POST", "/v1/models/a%0Ab:predict", b"{}")
    assert (status, content_type) == (404, "application/json"), payload
    assert json.loads(payload) == {"error": "Servable not found for request: Latest(a\nb)"}


def test_server_still_serves_after_fuzzing(target: Target) -> None:
    assert_serving(target)
    assert np.percentile(SECONDS, 99) < FAST
