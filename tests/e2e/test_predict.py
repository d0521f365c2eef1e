"""PredictionService.Predict over a real channel: values, response shape and every error text.

Expected texts come from TF Serving's predict_impl.cc, predict_util.cc, server_core.cc and
basic_manager.cc, and from TensorFlow's saved_model::GetInputValues and Tensor::FromProto.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.example import example_pb2
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from support import TESTDATA

TF1_MODEL = "saved_model_half_plus_two_cpu"
TF2_MODEL = "saved_model_half_plus_two_tf2_cpu"
TIMEOUT = 10.0
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT

Stub = prediction_service_pb2_grpc.PredictionServiceStub


# --- requests and responses ----------------------------------------------------------------


def float_tensor(values: Sequence[float], shape: Sequence[int]) -> tensor_pb2.TensorProto:
    """A DT_FLOAT tensor carried in the typed ``float_val`` field."""
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=values)
    for size in shape:
        tensor.tensor_shape.dim.add().size = size
    return tensor


def content_tensor(array: np.ndarray, dtype: int = types_pb2.DT_FLOAT,
                   shape: Sequence[int] | None = None) -> tensor_pb2.TensorProto:
    """A tensor carried as raw ``tensor_content`` bytes (shape defaults to the array's)."""
    tensor = tensor_pb2.TensorProto(dtype=dtype, tensor_content=array.tobytes())
    for size in array.shape if shape is None else shape:
        tensor.tensor_shape.dim.add().size = size
    return tensor


def predict_request(inputs: Mapping[str, tensor_pb2.TensorProto], *, model: str = "default",
                    signature: str = "", version: int | None = None,
                    output_filter: Sequence[str] = ()) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest(output_filter=output_filter)
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    for alias, tensor in inputs.items():
        request.inputs[alias].CopyFrom(tensor)
    return request


def x_is(value: float) -> predict_pb2.PredictRequest:
    """half_plus_two's default signature on one value, shaped [1]."""
    return predict_request({"x": float_tensor([value], [1])})


def output(response: predict_pb2.PredictResponse, alias: str) -> np.ndarray:
    """An output decoded by TensorFlow itself, whichever field carries it."""
    return tf.make_ndarray(response.outputs[alias])


def rpc_error(stub: Stub, request: predict_pb2.PredictRequest) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as raised:
        stub.Predict(request, TIMEOUT)
    return raised.value.code(), raised.value.details()


def assert_still_serving(stub: Stub) -> None:
    response = stub.Predict(x_is(2.0), TIMEOUT)
    assert output(response, "y").tolist() == [3.0]


# --- servers, one per model for the whole module --------------------------------------------


def build_arithmetic_model(base_path: Path) -> str:
    """A TF1 SavedModel with two inputs (``b`` has a default of 10) and two outputs."""
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        a = tf.compat.v1.placeholder(tf.float32, [None], name="a")
        b = tf.compat.v1.placeholder(tf.float32, [None], name="b")
        signature = tf.compat.v1.saved_model.predict_signature_def(
            inputs={"a": a, "b": b},
            outputs={"sum": tf.add(a, b, name="sum"),
                     "difference": tf.subtract(a, b, name="difference")})
        signature.defaults["b"].CopyFrom(float_tensor([10.0], [1]))
        builder = tf.compat.v1.saved_model.Builder(str(base_path / "1"))
        builder.add_meta_graph_and_variables(
            session, ["serve"], signature_def_map={"serving_default": signature})
        builder.save()
    return str(base_path)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    for name in (TF1_MODEL, TF2_MODEL):
        shutil.copytree(TESTDATA / name, root / name)
    build_arithmetic_model(root / "arithmetic")
    return root


@pytest.fixture(scope="module")
def stub_for(models_dir: Path, channel_for_base_path: Callable[[str], grpc.Channel]
             ) -> Callable[[str], Stub]:
    """A PredictionService stub on a server of one model (started once per module)."""
    return lambda model_dir: Stub(channel_for_base_path(str(models_dir / model_dir)))


@pytest.fixture
def tf1(stub_for: Callable[[str], Stub]) -> Stub:
    return stub_for(TF1_MODEL)


@pytest.fixture
def tf2(stub_for: Callable[[str], Stub]) -> Stub:
    return stub_for(TF2_MODEL)


@pytest.fixture(params=[TF1_MODEL, TF2_MODEL], ids=["tf1", "tf2"])
def half_plus_two(request: pytest.FixtureRequest, stub_for: Callable[[str], Stub]) -> Stub:
    return stub_for(request.param)


@pytest.fixture
def arithmetic(stub_for: Callable[[str], Stub]) -> Stub:
    return stub_for("arithmetic")


# --- values ----------------------------------------------------------------------------------


def test_one_value_shaped_1_is_accepted_though_the_signature_says_batch_by_1(tf1: Stub):
    response = tf1.Predict(x_is(2.0), TIMEOUT)
    assert list(response.outputs["y"].float_val) == [3.0]
    assert [d.size for d in response.outputs["y"].tensor_shape.dim] == [1]


def test_tf2_model_predicts_one_value(tf2: Stub):
    response = tf2.Predict(x_is(2.0), TIMEOUT)
    assert list(response.outputs["y"].float_val) == [3.0]


def test_batch_of_three(half_plus_two: Stub):
    request = predict_request({"x": float_tensor([1.0, 2.0, 3.0], [3, 1])})
    response = half_plus_two.Predict(request, TIMEOUT)
    assert output(response, "y").tolist() == [[2.5], [3.0], [3.5]]


def test_tensor_content_input(half_plus_two: Stub):
    array = np.array([[1.0], [2.0], [3.0]], dtype=np.float32)
    response = half_plus_two.Predict(predict_request({"x": content_tensor(array)}), TIMEOUT)
    assert output(response, "y").tolist() == [[2.5], [3.0], [3.5]]


def test_typed_field_with_fewer_values_than_the_shape_repeats_the_last(tf1: Stub):
    request = predict_request({"x": float_tensor([2.0], [3, 1])})
    response = tf1.Predict(request, TIMEOUT)
    assert output(response, "y").tolist() == [[3.0], [3.0], [3.0]]


def test_scalar_input(tf1: Stub):
    response = tf1.Predict(predict_request({"x": float_tensor([2.0], [])}), TIMEOUT)
    assert output(response, "y").tolist() == 3.0


def test_shape_with_unknown_rank_flag_is_read_from_its_dims(tf1: Stub):
    """TensorShape (unlike PartialTensorShape) ignores ``unknown_rank`` when parsing."""
    tensor = float_tensor([2.0], [])
    tensor.tensor_shape.unknown_rank = True
    response = tf1.Predict(predict_request({"x": tensor}), TIMEOUT)
    assert output(response, "y").tolist() == 3.0


def test_empty_batch_ignores_tensor_content(tf1: Stub):
    tensor = content_tensor(np.array([1.0], dtype=np.float32), shape=[0, 1])
    response = tf1.Predict(predict_request({"x": tensor}), TIMEOUT)
    assert output(response, "y").shape == (0, 1)


def test_outputs_are_typed_fields_by_default(tf1: Stub):
    y = tf1.Predict(x_is(2.0), TIMEOUT).outputs["y"]
    assert y.dtype == types_pb2.DT_FLOAT
    assert (list(y.float_val), y.tensor_content) == ([3.0], b"")


def test_serialization_as_tensor_content_option(testdata_model, serve, channel_to):
    server = serve(model_base_path=testdata_model(TF1_MODEL),
                   enable_serialization_as_tensor_content=True)
    stub = Stub(channel_to(server.grpc_target))
    y = stub.Predict(x_is(2.0), TIMEOUT).outputs["y"]
    assert y.dtype == types_pb2.DT_FLOAT
    assert list(y.float_val) == []
    assert y.tensor_content == np.array([3.0], dtype=np.float32).tobytes()
    assert [d.size for d in y.tensor_shape.dim] == [1]


def test_signature_default_fills_an_omitted_input(tf2: Stub):
    """The TF2 model's serving_default has ``defaults {x: [0.0]}``."""
    response = tf2.Predict(predict_request({}), TIMEOUT)
    assert output(response, "y").tolist() == [2.0]


def test_two_inputs(arithmetic: Stub):
    inputs = {"a": float_tensor([5.0], [1]), "b": float_tensor([3.0], [1])}
    response = arithmetic.Predict(predict_request(inputs), TIMEOUT)
    assert output(response, "sum").tolist() == [8.0]
    assert output(response, "difference").tolist() == [2.0]


def test_default_of_a_second_input(arithmetic: Stub):
    response = arithmetic.Predict(predict_request({"a": float_tensor([5.0], [1])}), TIMEOUT)
    assert output(response, "sum").tolist() == [15.0]


def test_no_output_filter_returns_every_output(arithmetic: Stub):
    response = arithmetic.Predict(predict_request({"a": float_tensor([5.0], [1])}), TIMEOUT)
    assert set(response.outputs) == {"sum", "difference"}


@pytest.mark.parametrize("output_filter", [["difference"], ["sum"], ["difference", "sum"]],
                         ids=["difference", "sum", "both"])
def test_output_filter_returns_only_the_named_outputs(arithmetic: Stub,
                                                      output_filter: list[str]):
    request = predict_request({"a": float_tensor([5.0], [1])}, output_filter=output_filter)
    response = arithmetic.Predict(request, TIMEOUT)
    assert set(response.outputs) == set(output_filter)


def test_output_filter_on_a_single_output_signature(half_plus_two: Stub):
    request = predict_request({"x": float_tensor([2.0], [1])}, output_filter=["y"])
    response = half_plus_two.Predict(request, TIMEOUT)
    assert output(response, "y").tolist() == [3.0]


def test_regress_signature_through_predict(tf1: Stub):
    """regress_x2_to_y3 takes float ``inputs`` (x2:0) and returns ``outputs`` = 0.5 * x2 + 3."""
    request = predict_request({"inputs": float_tensor([2.0], [1, 1])},
                              signature="regress_x2_to_y3")
    response = tf1.Predict(request, TIMEOUT)
    assert output(response, "outputs").tolist() == [[4.0]]
    assert response.model_spec.signature_name == "regress_x2_to_y3"


def test_classify_signature_through_predict_takes_serialized_examples(tf1: Stub):
    example = example_pb2.Example()
    example.features.feature["x"].float_list.value.append(2.0)
    examples = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING,
                                      string_val=[example.SerializeToString()])
    examples.tensor_shape.dim.add().size = 1
    request = predict_request({"inputs": examples}, signature="classify_x_to_y")
    response = tf1.Predict(request, TIMEOUT)
    assert output(response, "scores").tolist() == [[3.0]]


def test_tf2_regress_signature_through_predict(tf2: Stub):
    request = predict_request({"inputs": float_tensor([2.0], [1])},
                              signature="regress_x2_to_y3")
    response = tf2.Predict(request, TIMEOUT)
    assert output(response, "outputs").tolist() == [4.0]


# --- the response's model_spec ---------------------------------------------------------------


def test_response_model_spec_defaults_signature_and_names_the_version(half_plus_two: Stub):
    spec = half_plus_two.Predict(x_is(2.0), TIMEOUT).model_spec
    assert spec.name == "default"
    assert spec.signature_name == "serving_default"
    assert spec.version.value == 123


def test_response_model_spec_echoes_explicit_signature_and_version(tf1: Stub):
    request = predict_request({"x": float_tensor([2.0], [1])}, signature="serving_default",
                              version=123)
    spec = tf1.Predict(request, TIMEOUT).model_spec
    assert (spec.name, spec.signature_name, spec.version.value) == (
        "default", "serving_default", 123)


# --- errors: code, exact text, and the server keeps serving ---------------------------------


def _no_model_spec() -> predict_pb2.PredictRequest:
    request = x_is(2.0)
    request.ClearField("model_spec")
    return request


def _empty_model_spec() -> predict_pb2.PredictRequest:
    request = _no_model_spec()
    request.model_spec.SetInParent()
    return request


def _label(label: str) -> predict_pb2.PredictRequest:
    request = x_is(2.0)
    request.model_spec.version_label = label
    return request


def float_tensor_of_rank(rank: int) -> tensor_pb2.TensorProto:
    return float_tensor([2.0], [1] * rank)


REQUEST_ERRORS = {
    "missing model_spec": (
        _no_model_spec, INVALID_ARGUMENT, "Missing ModelSpec"),
    "empty model name": (
        _empty_model_spec, INVALID_ARGUMENT, "ModelSpec has no name specified."),
    "unknown model": (
        lambda: predict_request({"x": float_tensor([2.0], [1])}, model="nope"),
        grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(nope)"),
    "unknown version": (
        lambda: predict_request({"x": float_tensor([2.0], [1])}, version=7),
        grpc.StatusCode.NOT_FOUND, "Servable not found for request: Specific(default, 7)"),
    "unknown label": (
        lambda: _label("stable"),
        INVALID_ARGUMENT, "Unrecognized servable version label: stable"),
    "unknown signature": (
        lambda: predict_request({"x": float_tensor([2.0], [1])}, signature="nope"),
        grpc.StatusCode.FAILED_PRECONDITION, 'Serving signature key "nope" not found.'),
    "extra input": (
        lambda: predict_request({"x": float_tensor([2.0], [1]), "z": float_tensor([1.0], [1])}),
        INVALID_ARGUMENT,
        "input size does not match signature: 2!=1 len({x,z}) != len({x}). "
        "Sent extra: {z}. Missing but required: {}."),
    "missing input": (
        lambda: predict_request({}),
        INVALID_ARGUMENT,
        "input size does not match signature: 0!=1 len({}) != len({x}). "
        "Sent extra: {}. Missing but required: {x}."),
    "wrong input name": (
        lambda: predict_request({"z": float_tensor([2.0], [1])}),
        INVALID_ARGUMENT,
        "Signature input alias: x(feed name: x:0) not found in request and no default value "
        "provided. Inputs expected to be in the request {z}, or default input alias set: "),
    "unknown output_filter alias": (
        lambda: predict_request({"x": float_tensor([2.0], [1])}, output_filter=["y", "q"]),
        INVALID_ARGUMENT,
        "output tensor alias not found in signature: q Outputs expected to be in the set {y}."),
    "duplicate output_filter alias": (
        lambda: predict_request({"x": float_tensor([2.0], [1])}, output_filter=["y", "y"]),
        INVALID_ARGUMENT, "duplicate output tensor alias: y"),
    "wrong dtype": (
        lambda: predict_request({"x": tensor_pb2.TensorProto(
            dtype=types_pb2.DT_INT32, int_val=[2], tensor_shape={"dim": [{"size": 1}]})}),
        INVALID_ARGUMENT, "Expects arg[0] to be float but int32 is provided"),
    "tensor_content shorter than the shape": (
        lambda: predict_request({"x": content_tensor(
            np.array([1.0, 2.0], dtype=np.float32), shape=[3, 1])}),
        INVALID_ARGUMENT, "tensor parsing error: x"),
    "tensor_content longer than the shape": (
        lambda: predict_request({"x": content_tensor(
            np.array([1.0, 2.0], dtype=np.float32), shape=[1])}),
        INVALID_ARGUMENT, "tensor parsing error: x"),
    "negative dimension": (
        lambda: predict_request({"x": float_tensor([2.0], [-1, 1])}),
        INVALID_ARGUMENT, "tensor parsing error: x"),
    "DT_INVALID": (
        lambda: predict_request({"x": tensor_pb2.TensorProto(
            float_val=[2.0], tensor_shape={"dim": [{"size": 1}]})}),
        INVALID_ARGUMENT, "tensor parsing error: x"),
    "element count overflows int64": (
        lambda: predict_request({"x": float_tensor([2.0], [2**62, 4])}),
        INVALID_ARGUMENT, "tensor parsing error: x"),
    "more than 254 dimensions": (
        lambda: predict_request({"x": float_tensor_of_rank(255)}),
        INVALID_ARGUMENT, "tensor parsing error: x"),
}


@pytest.mark.parametrize("make_request, code, message", REQUEST_ERRORS.values(),
                         ids=REQUEST_ERRORS.keys())
def test_request_error(tf1: Stub, make_request: Callable[[], predict_pb2.PredictRequest],
                       code: grpc.StatusCode, message: str):
    assert rpc_error(tf1, make_request()) == (code, message)
    assert_still_serving(tf1)


def test_wrong_dtype_on_a_tf2_model(tf2: Stub):
    request = predict_request({"x": tensor_pb2.TensorProto(
        dtype=types_pb2.DT_INT32, int_val=[2], tensor_shape={"dim": [{"size": 1}]})})
    assert rpc_error(tf2, request) == (
        INVALID_ARGUMENT, "Expects arg[0] to be float but int32 is provided")
    assert_still_serving(tf2)


def test_wrong_input_name_with_a_default_reports_the_unused_input(tf2: Stub):
    """x falls back to its default, so z is left over: GetInputValues' last check."""
    request = predict_request({"z": float_tensor([2.0], [1])})
    assert rpc_error(tf2, request) == (
        INVALID_ARGUMENT, "Inputs contains invalid name. Used request inputs: , request input: z")
    assert_still_serving(tf2)


def test_missing_input_without_default_names_the_defaults(arithmetic: Stub):
    request = predict_request({"b": float_tensor([1.0], [1])})
    assert rpc_error(arithmetic, request) == (
        INVALID_ARGUMENT,
        "Signature input alias: a(feed name: a:0) not found in request and no default value "
        "provided. Inputs expected to be in the request {b}, or default input alias set: b")


def test_input_size_lists_are_sorted(arithmetic: Stub):
    inputs = {name: float_tensor([1.0], [1]) for name in ("b", "z", "a")}
    assert rpc_error(arithmetic, predict_request(inputs)) == (
        INVALID_ARGUMENT,
        "input size does not match signature: 3!=2 len({a,b,z}) != len({a,b}). "
        "Sent extra: {z}. Missing but required: {}.")


def test_output_filter_error_lists_every_output(arithmetic: Stub):
    request = predict_request({"a": float_tensor([1.0], [1])}, output_filter=["q"])
    assert rpc_error(arithmetic, request) == (
        INVALID_ARGUMENT, "output tensor alias not found in signature: q Outputs expected to "
                          "be in the set {difference,sum}.")


def test_malformed_string_tensor_content(tf1: Stub):
    """TensorFlow's DecodeStringList rejects bytes left over after the last string."""
    examples = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_content=b"\x01abc")
    examples.tensor_shape.dim.add().size = 1
    request = predict_request({"inputs": examples}, signature="classify_x_to_y")
    assert rpc_error(tf1, request) == (INVALID_ARGUMENT, "tensor parsing error: inputs")
    assert_still_serving(tf1)
