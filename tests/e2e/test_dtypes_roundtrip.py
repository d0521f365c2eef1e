"""Every dtype TF Serving accepts goes through Predict and comes back bit for bit, whichever
encoding the request used and whichever encoding the server answers with."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from dtype_samples import DTYPES, as_content_proto, assert_same, sample, tf_decode, wire
from pyserving.client.tensors import fill_tensor_proto, ndarray_from_tensor_proto

SHAPES = [(), (0,), (5,), (2, 3), (1, 2, 2, 2)]


@pytest.fixture(scope="module")
def dtypes_model(tmp_path_factory) -> str:
    """A SavedModel with one identity signature per dtype: identity_<dtype>, input x, output y."""
    module = tf.Module()
    signatures = {}
    for name in DTYPES:
        function = tf.function(lambda x: {"y": tf.identity(x)},
                               input_signature=[tf.TensorSpec(None, tf.as_dtype(DTYPES[name][1]),
                                                              name="x")])
        signatures[f"identity_{name}"] = function.get_concrete_function()
    base = tmp_path_factory.mktemp("models") / "dtypes"
    tf.saved_model.save(module, str(base / "1"), signatures=signatures)
    return str(base)


def _request(name: str, array: np.ndarray, *, as_content: bool) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "default"
    request.model_spec.signature_name = f"identity_{name}"
    fill_tensor_proto(request.inputs["x"], array, as_content=as_content)
    return request


def _check_roundtrips(server, channel_to, *, content_responses: bool) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel_to(server.grpc_target))
    for name in DTYPES:
        for shape in SHAPES:
            array = sample(name, shape)
            for as_content in (False, True):
                response = stub.Predict(_request(name, array, as_content=as_content), 30)
                context = f"{name} {shape} sent as_content={as_content}"
                assert response.model_spec.signature_name == f"identity_{name}", context
                output = response.outputs["y"]
                assert bool(output.tensor_content) == (content_responses and array.size > 0), \
                    context
                # serialize_tensor is AsProtoTensorContent (AsProtoField for strings): the
                # bytes TF Serving answers with.
                if content_responses != (name == "string"):
                    assert wire(output) == wire(as_content_proto(array)), context
                try:
                    assert_same(ndarray_from_tensor_proto(output), array)
                    assert_same(tf_decode(output), array)
                    if not (array.dtype.kind == "O" and output.tensor_content):
                        # tf.make_ndarray cannot read string tensor_content (TensorFlow's own
                        # limitation, with TF Serving's responses too); tf_decode covers it.
                        by_tf = tf.make_ndarray(output)
                        assert_same(by_tf.astype(object) if name == "string" else by_tf, array)
                except AssertionError as error:
                    raise AssertionError(f"{context}: {error}") from None


def test_every_dtype_roundtrips_as_typed_fields(dtypes_model, serve, channel_to):
    server = serve(model_base_path=dtypes_model)
    _check_roundtrips(server, channel_to, content_responses=False)


def test_every_dtype_roundtrips_as_tensor_content(dtypes_model, serve, channel_to):
    server = serve(model_base_path=dtypes_model, enable_serialization_as_tensor_content=True)
    _check_roundtrips(server, channel_to, content_responses=True)
