"""Plain Python values from TF Serving response protos; shared by the sync and asyncio clients."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pyserving.client import tensors
from pyserving.client.apis import (
    classification_pb2,
    error_codes_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    predict_pb2,
    regression_pb2,
    types_pb2,
)


def outputs_of(response: predict_pb2.PredictResponse) -> dict[str, np.ndarray]:
    return {name: tensors.ndarray_from_tensor_proto(proto)
            for name, proto in response.outputs.items()}


@dataclass(frozen=True)
class Classifications:
    """One row per example, one column per class."""

    labels: np.ndarray  # str; empty when the model has no class labels
    scores: np.ndarray  # float32

    def as_lists(self) -> list[list[tuple[str, float]]]:
        """TF Serving REST's shape: [[(label, score), ...], ...]."""
        return [list(zip(labels, scores, strict=False))
                for labels, scores in zip(self.labels.tolist(), self.scores.tolist(), strict=False)]


def classifications_of(result: classification_pb2.ClassificationResult) -> Classifications:
    rows = result.classifications
    width = max((len(row.classes) for row in rows), default=0)
    labels = np.full((len(rows), width), "", dtype=object)
    scores = np.zeros((len(rows), width), dtype=np.float32)
    for i, row in enumerate(rows):
        for j, klass in enumerate(row.classes):
            labels[i, j] = klass.label
            scores[i, j] = klass.score
    return Classifications(labels, scores)


def regressions_of(result: regression_pb2.RegressionResult) -> np.ndarray:
    return np.array([r.value for r in result.regressions], dtype=np.float32)


InferenceResult = Classifications | np.ndarray


def multi_inference_results(response: inference_pb2.MultiInferenceResponse
                            ) -> dict[str, InferenceResult]:
    """Each task's result by its signature name, in task order."""
    results: dict[str, InferenceResult] = {}
    for result in response.results:
        kind = result.WhichOneof("result")
        name = result.model_spec.signature_name
        if kind == "classification_result":
            results[name] = classifications_of(result.classification_result)
        elif kind == "regression_result":
            results[name] = regressions_of(result.regression_result)
    return results


@dataclass(frozen=True)
class TensorSpec:
    name: str  # the graph tensor, e.g. "x:0"
    dtype: str  # TensorFlow's DataType name, e.g. "DT_FLOAT"
    shape: tuple[int, ...] | None  # -1 for an unknown size; None for an unknown rank


@dataclass(frozen=True)
class Signature:
    method_name: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]


@dataclass(frozen=True)
class ModelMetadata:
    """GetModelMetadata's answer; ``signature_def_map`` is the SignatureDefMap proto."""

    name: str
    version: int
    signatures: dict[str, Signature]
    signature_def_map: Any = field(repr=False, compare=False)


def metadata_of(response: get_model_metadata_pb2.GetModelMetadataResponse) -> ModelMetadata:
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    packed = response.metadata.get("signature_def")
    if packed is not None:
        packed.Unpack(signature_map)
    signatures = {name: Signature(signature.method_name, _specs(signature.inputs),
                                  _specs(signature.outputs))
                  for name, signature in sorted(signature_map.signature_def.items())}
    return ModelMetadata(response.model_spec.name, response.model_spec.version.value,
                         signatures, signature_map)


def _specs(infos: Any) -> dict[str, TensorSpec]:
    specs = {}
    for key, info in sorted(infos.items()):
        shape = info.tensor_shape
        dims = None if shape.unknown_rank else tuple(dim.size for dim in shape.dim)
        specs[key] = TensorSpec(info.name, types_pb2.DataType.Name(info.dtype), dims)
    return specs


@dataclass(frozen=True)
class VersionStatus:
    version: int
    state: str  # START, LOADING, AVAILABLE, UNLOADING or END
    error_code: str  # "OK" unless the version failed
    error_message: str


def statuses_of(response: get_model_status_pb2.GetModelStatusResponse) -> list[VersionStatus]:
    states = get_model_status_pb2.ModelVersionStatus.State
    code_names = error_codes_pb2.Code.DESCRIPTOR.values_by_number  # StatusProto.error_code
    statuses = []
    for entry in response.model_version_status:
        code = code_names.get(entry.status.error_code)
        statuses.append(VersionStatus(entry.version, states.Name(entry.state),
                                      code.name if code else str(entry.status.error_code),
                                      entry.status.error_message))
    return statuses
