"""Request size limits: the per-request tensor cap and the gRPC message-size limits.

TF Serving sets no per-request allocation limit (a Tensor::FromProto whose allocation fails is
"tensor parsing error: <alias>") and serves gRPC with INT32_MAX message sizes; pyserving checks
declared tensor sizes against --max_request_tensor_bytes before allocating anything, and
--grpc_channel_arguments can lower the message limits.
"""

from __future__ import annotations

import json
import resource
import socket
import time
import tracemalloc
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import pytest
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

MODEL = "saved_model_half_plus_two_cpu"
TIMEOUT = 10.0
MiB = 2**20

Stub = prediction_service_pb2_grpc.PredictionServiceStub


def predict_request(shape: list[int], values: list[float] | None = None,
                    content: bytes = b"") -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "default"
    tensor = request.inputs["x"]
    tensor.dtype = types_pb2.DT_FLOAT
    for size in shape:
        tensor.tensor_shape.dim.add().size = size
    tensor.float_val.extend(values if values is not None else [1.0])
    tensor.tensor_content = content
    return request


def rpc_error(stub: Stub, request: predict_pb2.PredictRequest) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predict(request, TIMEOUT)
    return caught.value.code(), caught.value.details()


def assert_serving(stub: Stub) -> None:
    response = stub.Predict(predict_request([3], [1.0, 2.0, 5.0]), TIMEOUT)
    assert list(response.outputs["y"].float_val) == [2.5, 3.0, 4.5]


@pytest.fixture
def stub_for(testdata_model: Callable[..., str], serve: Callable[..., Any],
             channel_to: Callable[[str], grpc.Channel]) -> Callable[..., Stub]:
    def start(**options: Any) -> Stub:
        server = serve(model_base_path=testdata_model(MODEL), **options)
        channel = grpc.insecure_channel(server.grpc_target, options=[
            ("grpc.max_receive_message_length", -1)])
        channel_to(server.grpc_target)  # closed with the test's other channels
        return Stub(channel)
    return start


# --- --max_request_tensor_bytes ----------------------------------------------------------------

def test_terabyte_tensor_is_refused_without_allocating(stub_for: Callable[..., Stub]) -> None:
    """A few bytes declaring 4 TiB (and 1 GiB over a 64 MiB cap) answer at once, having
    allocated next to nothing: measured in this process, which hosts the server."""
    stub = stub_for(max_request_tensor_bytes=64 * MiB)
    assert_serving(stub)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tracemalloc.start()
    try:
        started = time.monotonic()
        for shape in ([2**40], [2**28], [2**20, 2**20, 2**20]):
            code, message = rpc_error(stub, predict_request(shape))
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            assert message.startswith("tensor parsing error: x: float tensor of shape")
        seconds = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    print(f"3 refused requests declaring up to 2**60 floats: {seconds * 1000:.1f} ms, "
          f"Python allocation peak {peak / 1024:.0f} KiB, peak RSS growth "
          f"{rss_growth / MiB:.1f} MiB")
    assert seconds < 2.0
    assert peak < 4 * MiB
    assert rss_growth < 32 * MiB
    assert_serving(stub)


def test_the_cap_message_names_the_flag(stub_for: Callable[..., Stub]) -> None:
    stub = stub_for(max_request_tensor_bytes=1000)
    assert rpc_error(stub, predict_request([251, 1])) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "tensor parsing error: x: float tensor of shape [251, 1] needs 1004 bytes; a request's "
        "tensors may take at most 1000 bytes (--max_request_tensor_bytes)")
    response = stub.Predict(predict_request([250, 1]), TIMEOUT)  # exactly the cap
    assert len(response.outputs["y"].float_val) == 250


def test_the_cap_applies_to_rest_predicts(testdata_model: Callable[..., str],
                                          serve: Callable[..., Any]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = serve(model_base_path=testdata_model(MODEL), rest_api_port=port,
                   max_request_tensor_bytes=1000)
    body = json.dumps({"instances": [1.0] * 251}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.rest_port}/v1/models/default:predict", data=body)
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=TIMEOUT)
    assert (caught.value.code, json.loads(caught.value.read())) == (400, {"error": (
        "tensor parsing error: x: float tensor of shape [251] needs 1004 bytes; a request's "
        "tensors may take at most 1000 bytes (--max_request_tensor_bytes)")})


def test_default_cap_is_two_gib_and_tf_serving_texts_stay() -> None:
    from pyserving.server import ServerOptions

    assert ServerOptions().max_request_tensor_bytes == 2**31
    from pyserving.server.options import parse_options

    options, unknown = parse_options(["--max_request_tensor_bytes=4096"])
    assert (options.max_request_tensor_bytes, unknown) == (4096, [])


def test_shapes_tensorflow_rejects_keep_tf_serving_text(stub_for: Callable[..., Stub]) -> None:
    """More than 2**63-1 elements is not a shape at all: TF Serving's bare text."""
    stub = stub_for()
    assert rpc_error(stub, predict_request([2**62, 4])) == (
        grpc.StatusCode.INVALID_ARGUMENT, "tensor parsing error: x")


def _signature(**inputs: int) -> Any:
    from pyserving.server.servable import SignatureDef

    signature = SignatureDef(method_name="tensorflow/serving/predict")
    for alias, dtype in inputs.items():
        signature.inputs[alias].name = f"{alias}:0"
        signature.inputs[alias].dtype = dtype
    return signature


def test_the_cap_is_for_all_of_a_requests_tensors() -> None:
    from pyserving.server.errors import ServingError
    from pyserving.server.predict import input_feeds

    signature = _signature(a=types_pb2.DT_FLOAT, b=types_pb2.DT_FLOAT)
    inputs = {alias: tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.0],
                                            tensor_shape={"dim": [{"size": 150}]})
              for alias in ("a", "b")}
    assert [array.nbytes for _, array in input_feeds(signature, inputs, 1200)] == [600, 600]
    with pytest.raises(ServingError) as caught:
        input_feeds(signature, inputs, 1000)
    second = caught.value.message[len("tensor parsing error: "):][0]  # map order varies
    assert caught.value.message == (
        f"tensor parsing error: {second}: float tensor of shape [150] needs 600 bytes on top "
        "of the 600 bytes of the request's other tensors; a request's tensors may take at most "
        "1000 bytes (--max_request_tensor_bytes)")


def test_string_tensors_over_32_dimensions_are_refused_before_tensorflow() -> None:
    """TensorFlow's numpy bridge crashes the process on them (TF Serving has no such limit)."""
    from pyserving.server.errors import ServingError
    from pyserving.server.predict import input_feeds

    signature = _signature(s=types_pb2.DT_STRING)
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING,
                                   tensor_shape={"dim": [{"size": 1}] * 33})
    with pytest.raises(ServingError) as caught:
        input_feeds(signature, {"s": proto}, 2**31)
    assert caught.value.message == \
        "tensor parsing error: s: string tensors of more than 32 dimensions are not supported"
    del proto.tensor_shape.dim[32:]
    assert input_feeds(signature, {"s": proto}, 2**31)[0][1].shape == (1,) * 32


# --- gRPC message sizes ------------------------------------------------------------------------

def test_default_message_limit_is_tf_servings_int32_max(stub_for: Callable[..., Stub]) -> None:
    """gRPC's own default would refuse a request over 4 MiB; TF Serving takes up to 2 GiB."""
    stub = stub_for()
    values = np.arange(1_500_000, dtype=np.float32)  # 6 MB each way
    response = stub.Predict(predict_request([values.size], [], values.tobytes()), TIMEOUT)
    y = response.outputs["y"].float_val
    assert (len(y), y[-1]) == (values.size, values[-1] / 2 + 2)


def test_lower_receive_limit_answers_resource_exhausted(stub_for: Callable[..., Stub]) -> None:
    stub = stub_for(grpc_channel_arguments="grpc.max_receive_message_length=65536")
    request = predict_request([20_000], [], np.ones(20_000, np.float32).tobytes())
    code, message = rpc_error(stub, request)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"Received message larger than max ({request.ByteSize()} vs. 65536)" in message
    assert_serving(stub)


def test_lower_send_limit_answers_resource_exhausted(stub_for: Callable[..., Stub]) -> None:
    stub = stub_for(grpc_channel_arguments="grpc.max_send_message_length=65536")
    code, message = rpc_error(stub, predict_request([20_000]))  # a small request, big answer
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "Sent message larger than max" in message
    assert_serving(stub)
