"""Hostile gRPC input: hypothesis-generated requests against one real server.

Every case must be answered within the deadline with OK or a clear error (a non-empty message;
never UNKNOWN, which would mean an unhandled exception; INTERNAL only for bytes that do not
parse as the request, which is what gRPC C++, so TF Serving, answers too), and a valid Predict
must still get the right answer afterwards. The examples are derandomized, so CI sees the same
cases every run; the module prints how many it tried.
"""

from __future__ import annotations

import collections
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    predict_pb2,
    regression_pb2,
)

from support import TESTDATA, write_to_terminal

MODEL = "saved_model_half_plus_two_cpu"
TENSOR_CAP = 16 * 2**20  # --max_request_tensor_bytes of the fuzzed server
DEADLINE = 10.0
FAST = 2.0  # seconds; slower answers are counted and must stay rare
ALIVE_EVERY = 5  # examples between checks that a valid Predict still works

OK = grpc.StatusCode.OK
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
UNIMPLEMENTED = grpc.StatusCode.UNIMPLEMENTED
INTERNAL = grpc.StatusCode.INTERNAL

# Codes a request may get, per RPC, when it parses; TF Serving answers with the same set.
PREDICTION_CODES = {OK, INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION}
ALLOWED = {
    "Predict": PREDICTION_CODES,
    "Classify": PREDICTION_CODES,
    "Regress": PREDICTION_CODES,
    "MultiInference": PREDICTION_CODES | {UNIMPLEMENTED},  # an unknown task method_name
    "GetModelMetadata": {OK, INVALID_ARGUMENT, NOT_FOUND},
    "GetModelStatus": {OK, INVALID_ARGUMENT, NOT_FOUND},
}
REQUEST_TYPES = {
    "Predict": predict_pb2.PredictRequest,
    "Classify": classification_pb2.ClassificationRequest,
    "Regress": regression_pb2.RegressionRequest,
    "MultiInference": inference_pb2.MultiInferenceRequest,
    "GetModelMetadata": get_model_metadata_pb2.GetModelMetadataRequest,
    "GetModelStatus": get_model_status_pb2.GetModelStatusRequest,
}
SERVICES = dict.fromkeys(REQUEST_TYPES, "tensorflow.serving.PredictionService")
SERVICES["GetModelStatus"] = "tensorflow.serving.ModelService"

FUZZ = settings(deadline=None, derandomize=True, database=None, print_blob=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])

CASES: collections.Counter = collections.Counter()
CODES: collections.Counter = collections.Counter()
SECONDS: list[float] = []


# --- the server --------------------------------------------------------------------------------

class Target:
    """A channel to the fuzzed server that sends raw bytes to any method."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._calls = {name: channel.unary_unary(f"/{SERVICES[name]}/{name}")
                       for name in REQUEST_TYPES}

    def call(self, method: str, payload: bytes) -> tuple[grpc.StatusCode, str, bytes, float]:
        """(code, message, response bytes, seconds) of one call."""
        started = time.monotonic()
        try:
            response = self._calls[method](payload, timeout=DEADLINE)
            code, message = OK, ""
        except grpc.RpcError as error:
            response, code, message = b"", error.code(), error.details() or ""
        return code, message, response, time.monotonic() - started


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory,
           request: pytest.FixtureRequest) -> Iterator[Target]:
    from pyserving.server import ModelServer, ServerOptions

    base = tmp_path_factory.mktemp("fuzz") / "half_plus_two"
    shutil.copytree(TESTDATA / MODEL, base)
    for path in [base, *Path(base).rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)
    options = ServerOptions(port=0, model_base_path=str(base),
                            max_request_tensor_bytes=TENSOR_CAP)
    server = ModelServer(options, host="127.0.0.1").start()
    channel = grpc.insecure_channel(server.grpc_target,
                                    options=[("grpc.max_receive_message_length", -1)])
    yield Target(channel)
    channel.close()
    server.stop(grace=None)
    p99, slowest = np.percentile(SECONDS, [99, 100]) if SECONDS else (0.0, 0.0)
    write_to_terminal(request, (
        f"\ngRPC fuzzing: {sum(CASES.values())} cases "
        f"({', '.join(f'{k} {v}' for k, v in sorted(CASES.items()))}); "
        f"answers: {dict(CODES.most_common())}; "
        f"answered in p99 {p99 * 1000:.1f} ms, slowest {slowest * 1000:.0f} ms"))


def valid_predict() -> bytes:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "default"
    tensor = request.inputs["x"]
    tensor.dtype = types_pb2.DT_FLOAT
    tensor.tensor_shape.dim.add().size = 3
    tensor.float_val.extend([1.0, 2.0, 5.0])
    return request.SerializeToString()


VALID_PREDICT = valid_predict()


def assert_serving(target: Target) -> None:
    code, message, response, _ = target.call("Predict", VALID_PREDICT)
    assert code == OK, message
    outputs = predict_pb2.PredictResponse.FromString(response).outputs["y"]
    assert list(outputs.float_val) == [2.5, 3.0, 4.5]


def check(target: Target, method: str, payload: bytes, case: str) -> grpc.StatusCode:
    """Send one case; assert the answer is bounded and well-formed; every few, that the server
    still serves."""
    code, message, _, seconds = target.call(method, payload)
    assert code != grpc.StatusCode.DEADLINE_EXCEEDED, f"{case}: no answer in {DEADLINE} s"
    try:
        REQUEST_TYPES[method].FromString(payload)
        allowed = ALLOWED[method]
    except Exception:
        allowed = {INTERNAL}
    assert code in allowed, f"{case}: {method} answered {code.name}: {message}"
    if code != OK:
        assert message.strip(), f"{case}: {code.name} without a message"
    SECONDS.append(seconds)
    CASES[case] += 1
    CODES[code.name] += 1
    if CASES[case] % ALIVE_EVERY == 0:
        assert_serving(target)
    return code


# --- strategies --------------------------------------------------------------------------------

DTYPES = st.one_of(st.sampled_from(sorted(types_pb2.DataType.values())),
                   st.integers(-2**31, 2**31 - 1))
SMALL_DIMS = st.integers(0, 4)
DIMS = st.one_of(SMALL_DIMS, SMALL_DIMS, SMALL_DIMS, st.integers(-3, -1),
                 st.sampled_from([2**31, 2**40, 2**62, 2**63 - 1, -2**63]))
SHAPES = st.one_of(st.lists(DIMS, max_size=4), st.lists(DIMS, max_size=4),
                   st.integers(60, 300).map(lambda rank: [1] * rank))
FLOATS = st.floats(allow_nan=True, allow_infinity=True)
SMALL = {"max_size": 8}
TYPED_FIELDS = {
    "float_val": st.lists(st.floats(width=32), **SMALL),
    "double_val": st.lists(FLOATS, **SMALL),
    "int_val": st.lists(st.integers(-2**31, 2**31 - 1), **SMALL),
    "half_val": st.lists(st.integers(-2**31, 2**31 - 1), **SMALL),
    "int64_val": st.lists(st.integers(-2**63, 2**63 - 1), **SMALL),
    "uint32_val": st.lists(st.integers(0, 2**32 - 1), **SMALL),
    "uint64_val": st.lists(st.integers(0, 2**64 - 1), **SMALL),
    "bool_val": st.lists(st.booleans(), **SMALL),
    "string_val": st.lists(st.binary(max_size=20), **SMALL),
    "scomplex_val": st.lists(st.floats(width=32), **SMALL),
    "dcomplex_val": st.lists(FLOATS, **SMALL),
}


def declared_bytes(tensor: tensor_pb2.TensorProto) -> int:
    count = 1
    for dim in tensor.tensor_shape.dim:
        count *= max(dim.size, 0)
    try:
        itemsize = tf_itemsize(tensor.dtype)
    except KeyError:
        itemsize = 4
    return count * itemsize


def tf_itemsize(dtype: int) -> int:
    from pyserving.client.tensors import numpy_dtype_for

    try:
        return numpy_dtype_for(dtype).itemsize
    except ValueError:
        raise KeyError(dtype) from None


@st.composite
def tensors(draw: Callable, dtypes: st.SearchStrategy = DTYPES) -> tensor_pb2.TensorProto:
    """Any TensorProto: random dtype and dims; content that may or may not fit them."""
    tensor = tensor_pb2.TensorProto(dtype=draw(dtypes))
    for size in draw(SHAPES):
        tensor.tensor_shape.dim.add(size=size)
    tensor.tensor_shape.unknown_rank = draw(st.booleans())
    if draw(st.booleans()):
        wanted = declared_bytes(tensor)
        if wanted <= 4096 and draw(st.booleans()):
            length = max(wanted + draw(st.sampled_from([0, 0, 0, -1, 1, -4, 4])), 0)
            tensor.tensor_content = draw(st.binary(min_size=length, max_size=length))
        else:
            tensor.tensor_content = draw(st.binary(max_size=64))
    for name in draw(st.lists(st.sampled_from(sorted(TYPED_FIELDS)), max_size=3, unique=True)):
        getattr(tensor, name).extend(draw(TYPED_FIELDS[name]))
    return tensor


# Mostly half_plus_two's own input and dtype, so most cases get past the signature checks.
NEAR_VALID_TENSORS = tensors(st.sampled_from([types_pb2.DT_FLOAT] * 4 + [types_pb2.DT_DOUBLE,
                                                                         types_pb2.DT_STRING]))

@st.composite
def float_tensors(draw: Callable) -> tensor_pb2.TensorProto:
    """Well-formed DT_FLOAT tensors of any values (NaN, infinities, subnormals), typed or raw,
    with fewer values than elements at times (the last one repeats)."""
    shape = draw(st.lists(st.integers(0, 4), max_size=3))
    count = int(np.prod(shape))
    values = draw(st.lists(st.floats(width=32), min_size=count if count else 0,
                           max_size=max(count, 1)))
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)
    for size in shape:
        tensor.tensor_shape.dim.add(size=size)
    if count and len(values) == count and draw(st.booleans()):
        tensor.tensor_content = np.array(values, dtype="<f4").tobytes()
    else:
        tensor.float_val.extend(values[:count] if count else values)
    return tensor


TEXT = st.text(max_size=12)


def mostly(common: Any, *others: Any) -> st.SearchStrategy:
    """``common`` in about three cases out of four, else one of ``others`` or random text."""
    return st.one_of(*[st.just(common)] * 6, st.sampled_from(others), TEXT)


MODEL_NAMES = mostly("default", "", "nope")
SIGNATURES = mostly("", "serving_default", "classify_x_to_y", "regress_x_to_y",
                    "regress_x2_to_y3", "nope")


def fill_model_spec(spec: Any, draw: Callable) -> None:
    spec.name = draw(MODEL_NAMES)
    spec.signature_name = draw(SIGNATURES)
    choice = draw(st.sampled_from(["none"] * 4 + ["version", "label"]))
    if choice == "version":
        spec.version.value = draw(st.sampled_from([123, 123, 123, 0, -1, 2**63 - 1, -2**63]))
    elif choice == "label":
        spec.version_label = draw(st.sampled_from(["stable", ""]) | TEXT)


# half_plus_two's signatures and their input alias.
INPUT_ALIASES = {"": "x", "serving_default": "x", "regress_x2_to_y3": "inputs",
                 "classify_x_to_y": "inputs", "regress_x_to_y": "inputs"}


@st.composite
def predict_tensor_requests(draw: Callable) -> predict_pb2.PredictRequest:
    """A Predict of a served signature whose one input is any tensor."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "default"
    request.model_spec.signature_name = draw(st.sampled_from(sorted(INPUT_ALIASES)))
    alias = INPUT_ALIASES[request.model_spec.signature_name]
    request.inputs[alias].CopyFrom(draw(float_tensors() | NEAR_VALID_TENSORS | tensors()))
    return request


@st.composite
def predict_requests(draw: Callable) -> predict_pb2.PredictRequest:
    """Any Predict: model spec, input aliases and output filter are random too."""
    request = predict_pb2.PredictRequest()
    if draw(st.integers(0, 9)):
        fill_model_spec(request.model_spec, draw)
    aliases = mostly("x", "inputs", "y", "")
    for alias in draw(st.lists(aliases, max_size=2, unique=True)):
        request.inputs[alias].CopyFrom(draw(NEAR_VALID_TENSORS if alias == "x" else tensors()))
    request.output_filter.extend(draw(st.lists(mostly("y", "scores", "z"), max_size=2)))
    return request


FEATURES = st.one_of(
    st.builds(lambda v: feature_pb2.Feature(float_list=feature_pb2.FloatList(value=v)),
              st.lists(st.floats(width=32), max_size=4)),
    st.builds(lambda v: feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=v)),
              st.lists(st.integers(-2**63, 2**63 - 1), max_size=4)),
    st.builds(lambda v: feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=v)),
              st.lists(st.binary(max_size=12), max_size=4)),
    st.just(feature_pb2.Feature()),
)
EXAMPLES = st.builds(
    lambda features: example_pb2.Example(features=feature_pb2.Features(feature=features)),
    st.dictionaries(mostly("x", "x2", "y"), FEATURES, max_size=3))


def fill_input(request_input: Any, draw: Callable) -> None:
    kind = draw(st.sampled_from(["list", "list", "context", "none"]))
    if kind == "list":
        request_input.example_list.examples.extend(draw(st.lists(EXAMPLES, max_size=4)))
    elif kind == "context":
        listed = request_input.example_list_with_context
        listed.context.CopyFrom(draw(EXAMPLES))
        listed.examples.extend(draw(st.lists(EXAMPLES, max_size=4)))


@st.composite
def example_requests(draw: Callable, request_type: type) -> Any:
    """A Classify or Regress of any served signature (or a random model spec) on random
    examples."""
    request = request_type()
    if draw(st.integers(0, 4)):
        request.model_spec.name = "default"
        request.model_spec.signature_name = draw(st.sampled_from(sorted(INPUT_ALIASES)))
    else:
        fill_model_spec(request.model_spec, draw)
    fill_input(request.input, draw)
    return request


METHODS = st.one_of(st.sampled_from(["tensorflow/serving/classify",
                                     "tensorflow/serving/regress"]),
                    mostly("tensorflow/serving/classify", "tensorflow/serving/predict", ""))


@st.composite
def multi_inference_requests(draw: Callable) -> inference_pb2.MultiInferenceRequest:
    request = inference_pb2.MultiInferenceRequest()
    for _ in range(draw(st.integers(0, 3))):
        task = request.tasks.add()
        fill_model_spec(task.model_spec, draw)
        task.method_name = draw(METHODS)
    fill_input(request.input, draw)
    return request


@st.composite
def metadata_requests(draw: Callable) -> get_model_metadata_pb2.GetModelMetadataRequest:
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    if draw(st.integers(0, 9)):
        fill_model_spec(request.model_spec, draw)
    request.metadata_field.extend(draw(st.lists(mostly("signature_def", ""), max_size=3)))
    return request


# Valid requests of every method, to mutate byte by byte.
SEEDS = {
    "Predict": VALID_PREDICT,
    "Classify": classification_pb2.ClassificationRequest(
        model_spec={"name": "default", "signature_name": "classify_x_to_y"},
        input={"example_list": {"examples": [example_pb2.Example(features={"feature": {
            "x": feature_pb2.Feature(float_list={"value": [2.0]})}})]}}).SerializeToString(),
    "GetModelMetadata": get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec={"name": "default"}, metadata_field=["signature_def"]).SerializeToString(),
    "GetModelStatus": get_model_status_pb2.GetModelStatusRequest(
        model_spec={"name": "default"}).SerializeToString(),
}
_EXAMPLE_INPUT = classification_pb2.ClassificationRequest.FromString(SEEDS["Classify"]).input
SEEDS["Regress"] = regression_pb2.RegressionRequest(
    model_spec={"name": "default", "signature_name": "regress_x_to_y"},
    input=_EXAMPLE_INPUT).SerializeToString()
SEEDS["MultiInference"] = inference_pb2.MultiInferenceRequest(
    tasks=[{"model_spec": {"name": "default", "signature_name": "classify_x_to_y"},
            "method_name": "tensorflow/serving/classify"}],
    input=_EXAMPLE_INPUT).SerializeToString()


@st.composite
def mutated(draw: Callable, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "field"]))
        if action == "flip" and where < len(data):
            data[where] = draw(st.integers(0, 255))
        elif action == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del data[where:where + draw(st.integers(1, 8))]
        elif action == "truncate":
            del data[where:]
        else:  # an unknown or mistyped field: tag, then a length-delimited random payload
            payload = draw(st.binary(max_size=16))
            data += bytes([draw(st.integers(1, 15)) << 3 | 2, len(payload)]) + payload
    return bytes(data)


# --- the tests ---------------------------------------------------------------------------------

@settings(FUZZ, max_examples=700)
@given(request=predict_tensor_requests())
def test_predict_tensors(target: Target, request: predict_pb2.PredictRequest) -> None:
    if check(target, "Predict", request.SerializeToString(), "Predict tensors") == OK:
        assert_half_plus_two(target, request)


@settings(FUZZ, max_examples=300)
@given(request=predict_requests())
def test_predict_requests(target: Target, request: predict_pb2.PredictRequest) -> None:
    if check(target, "Predict", request.SerializeToString(), "Predict") == OK:
        assert_half_plus_two(target, request)


def assert_half_plus_two(target: Target, request: predict_pb2.PredictRequest) -> None:
    """An accepted Predict of serving_default computed x / 2 + 2 on the input as TensorFlow's
    own make_ndarray reads it."""
    import tensorflow as tf

    if request.model_spec.signature_name not in ("", "serving_default"):
        return
    response = predict_pb2.PredictResponse.FromString(
        target.call("Predict", request.SerializeToString())[2])
    x = request.inputs["x"]
    shape = [dim.size for dim in x.tensor_shape.dim]
    if np.prod(shape) == 0:  # make_ndarray cannot read these; TensorFlow reads no values
        expected = np.zeros(shape, np.float32)
    else:
        clipped = tensor_pb2.TensorProto()
        clipped.CopyFrom(x)
        del clipped.float_val[int(np.prod(shape)):]  # extra values are ignored
        expected = tf.make_ndarray(clipped) * np.float32(0.5) + np.float32(2)
    np.testing.assert_array_equal(tf.make_ndarray(response.outputs["y"]), expected)


@settings(FUZZ, max_examples=300)
@given(request=example_requests(classification_pb2.ClassificationRequest))
def test_classify_requests(target: Target, request: Any) -> None:
    check(target, "Classify", request.SerializeToString(), "Classify")


@settings(FUZZ, max_examples=300)
@given(request=example_requests(regression_pb2.RegressionRequest))
def test_regress_requests(target: Target, request: Any) -> None:
    check(target, "Regress", request.SerializeToString(), "Regress")


@settings(FUZZ, max_examples=200)
@given(request=multi_inference_requests())
def test_multi_inference_requests(target: Target, request: Any) -> None:
    check(target, "MultiInference", request.SerializeToString(), "MultiInference")


@settings(FUZZ, max_examples=200)
@given(request=metadata_requests())
def test_metadata_requests(target: Target, request: Any) -> None:
    check(target, "GetModelMetadata", request.SerializeToString(), "GetModelMetadata")


@settings(FUZZ, max_examples=400)
@given(method=st.sampled_from(sorted(REQUEST_TYPES)), data=st.data())
def test_mutated_request_bytes(target: Target, method: str, data: st.DataObject) -> None:
    check(target, method, data.draw(mutated(SEEDS[method])), "mutated bytes")


@settings(FUZZ, max_examples=300)
@given(method=st.sampled_from(sorted(REQUEST_TYPES)), payload=st.binary(max_size=256))
def test_random_request_bytes(target: Target, method: str, payload: bytes) -> None:
    check(target, method, payload, "random bytes")


def test_server_still_serves_after_fuzzing(target: Target) -> None:
    assert_serving(target)
    assert np.percentile(SECONDS, 99) < FAST
