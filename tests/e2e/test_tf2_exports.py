"""TF2 exports (tf.saved_model.save and Keras) serve with the values the model itself computes."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from pyserving.client.tensors import fill_tensor_proto, ndarray_from_tensor_proto


@pytest.fixture(scope="module")
def keras_model_dir(tmp_path_factory) -> tuple[str, keras.Model]:
    keras.utils.set_random_seed(7)
    model = keras.Sequential([keras.Input((4,), name="features"),
                              keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(3, activation="softmax")])
    base = tmp_path_factory.mktemp("keras") / "classifier"
    model.export(str(base / "1"))
    return str(base), model


@pytest.fixture(scope="module")
def multi_signature_dir(tmp_path_factory) -> str:
    class Scaler(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.factor = tf.Variable(3.0)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def scale(self, values):
            return {"scaled": values * self.factor}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32),
                                      tf.TensorSpec([None], tf.float32)])
        def add(self, left, right):
            return {"total": left + right, "difference": left - right}

    module = Scaler()
    base = tmp_path_factory.mktemp("scaler") / "scaler"
    tf.saved_model.save(module, str(base / "5"),
                        signatures={"serving_default": module.scale, "add": module.add})
    return str(base)


def _stub(server, channel_to):
    return prediction_service_pb2_grpc.PredictionServiceStub(channel_to(server.grpc_target))


def _predict(stub, name: str, inputs: dict[str, np.ndarray], signature: str = "") -> dict:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    for key, value in inputs.items():
        fill_tensor_proto(request.inputs[key], value)
    response = stub.Predict(request, 30)
    return {key: ndarray_from_tensor_proto(proto) for key, proto in response.outputs.items()}


def test_keras_export_matches_the_model(keras_model_dir, serve, channel_to):
    base, model = keras_model_dir
    server = serve(model_name="classifier", model_base_path=base)
    stub = _stub(server, channel_to)
    metadata = get_model_metadata_pb2.GetModelMetadataRequest()
    metadata.model_spec.name = "classifier"
    metadata.metadata_field.append("signature_def")
    signatures = get_model_metadata_pb2.SignatureDefMap()
    stub.GetModelMetadata(metadata, 30).metadata["signature_def"].Unpack(signatures)
    signature = signatures.signature_def["serving_default"]
    input_name = next(iter(signature.inputs))
    output_name = next(iter(signature.outputs))
    batch = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    outputs = _predict(stub, "classifier", {input_name: batch})
    np.testing.assert_allclose(outputs[output_name], model.predict(batch, verbose=0), rtol=1e-5)


def test_multiple_signatures_and_outputs(multi_signature_dir, serve, channel_to):
    server = serve(model_name="scaler", model_base_path=multi_signature_dir)
    stub = _stub(server, channel_to)
    values = np.array([1.0, -2.0, 0.5], dtype=np.float32)
    assert _predict(stub, "scaler", {"values": values})["scaled"].tolist() == [3.0, -6.0, 1.5]
    outputs = _predict(stub, "scaler", {"left": values, "right": np.ones(3, np.float32)}, "add")
    assert outputs["total"].tolist() == [2.0, -1.0, 1.5]
    assert outputs["difference"].tolist() == [0.0, -3.0, -0.5]
