"""Classify, Regress and MultiInference requests over tf.Examples of one float feature "x", as
tensorflow_model_server_test.py builds them."""

from __future__ import annotations

from tensorflow_serving.apis import (
    classification_pb2,
    inference_pb2,
    input_pb2,
    regression_pb2,
)

CLASSIFY_METHOD = "tensorflow/serving/classify"


REGRESS_METHOD = "tensorflow/serving/regress"


PREDICT_METHOD = "tensorflow/serving/predict"


def add_examples(request_input: input_pb2.Input, *xs: float) -> None:
    for x in xs:
        example = request_input.example_list.examples.add()
        example.features.feature["x"].float_list.value.append(x)


def classify_request(signature_name: str, *xs: float) -> classification_pb2.ClassificationRequest:
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "default"
    request.model_spec.signature_name = signature_name
    add_examples(request.input, *xs)
    return request


def regress_request(signature_name: str, *xs: float) -> regression_pb2.RegressionRequest:
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "default"
    request.model_spec.signature_name = signature_name
    add_examples(request.input, *xs)
    return request


def multi_request(*tasks: tuple[str, str, str], xs: tuple[float, ...] = (2.0,)
                  ) -> inference_pb2.MultiInferenceRequest:
    """tasks are (model name, signature name, method name)."""
    request = inference_pb2.MultiInferenceRequest()
    for model_name, signature_name, method_name in tasks:
        task = request.tasks.add()
        task.model_spec.name = model_name
        task.model_spec.signature_name = signature_name
        task.method_name = method_name
    add_examples(request.input, *xs)
    return request
