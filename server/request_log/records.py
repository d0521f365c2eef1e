"""PredictionLog records (tensorflow_serving/apis/prediction_log.proto) built from an answered
request: the request, the response and ``log_metadata``. Built on the writer's thread, never
on the request's."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pyserving.client.tensors import fill_tensor_proto
from pyserving.server.apis import model_pb2, predict_pb2, prediction_log_pb2

PREDICT, CLASSIFY, REGRESS, MULTI_INFERENCE = ("predict_log", "classify_log", "regress_log",
                                               "multi_inference_log")
DEFAULT_SIGNATURE = "serving_default"


class ArraysPredict:
    """A REST Predict as the core saw it (arrays, not protos); ``requests()`` makes the
    PredictRequest/PredictResponse pair it is equivalent to, for sampled requests only."""

    __slots__ = ("inputs", "outputs", "signature_name", "spec", "version")

    def __init__(self, spec: model_pb2.ModelSpec, version: int, signature_name: str,
                 inputs: Mapping[str, np.ndarray],
                 outputs: Sequence[tuple[str, np.ndarray, int]]) -> None:
        self.spec = spec
        self.version = version
        self.signature_name = signature_name
        self.inputs = inputs
        self.outputs = outputs

    def requests(self) -> tuple[predict_pb2.PredictRequest, predict_pb2.PredictResponse]:
        request = predict_pb2.PredictRequest()
        request.model_spec.CopyFrom(self.spec)
        request.model_spec.signature_name = self.signature_name
        for alias, array in self.inputs.items():
            fill_tensor_proto(request.inputs[alias], array)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = self.spec.name
        response.model_spec.version.value = self.version
        response.model_spec.signature_name = self.signature_name or DEFAULT_SIGNATURE
        for alias, array, dtype in self.outputs:
            fill_tensor_proto(response.outputs[alias], array, dtype_enum=dtype or None)
        return request, response


def answered_spec(kind: str, response: Any) -> model_pb2.ModelSpec:
    """The ModelSpec of the version that answered, as the response names it."""
    if kind == MULTI_INFERENCE:
        return response.results[0].model_spec if len(response.results) else model_pb2.ModelSpec()
    return response.model_spec


def prediction_log(kind: str, request: Any, response: Any, *, model: str,
                   sampling_config: bytes, tags: Sequence[str], timestamp: float) -> bytes:
    """One serialized PredictionLog; ``kind`` is its log_type field (``predict_log``...)."""
    if isinstance(request, ArraysPredict):
        request, response = request.requests()
    record = prediction_log_pb2.PredictionLog()
    metadata = record.log_metadata
    answered = answered_spec(kind, response)
    metadata.model_spec.name = model
    if answered.HasField("version"):
        metadata.model_spec.version.value = answered.version.value
    metadata.model_spec.signature_name = answered.signature_name
    metadata.sampling_config.MergeFromString(sampling_config)
    metadata.saved_model_tags.extend(tags)
    metadata.timestamp_secs = int(timestamp)
    entry = getattr(record, kind)
    entry.request.CopyFrom(request)
    entry.response.CopyFrom(response)
    return record.SerializeToString()
