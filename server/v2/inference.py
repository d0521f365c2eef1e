"""The one adapter between both V2 transports and the serving core: a decoded V2 request in,
(version, outputs) out, through ``ServingCore.predict_arrays`` (numpy arrays, no TensorProto),
so admission, the in-flight limit, rollouts and shadows, batching (one queue per signature,
shared with TF Serving's Predict) and deadlines apply as they do to Predict."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pyserving.server.apis import model_pb2
from pyserving.server.core import ServingCore
from pyserving.server.errors import ServingError, invalid_argument, not_found
from pyserving.server.predict import DEFAULT_SIGNATURE, find_predict_signature
from pyserving.server.servable import Servable, Steps
from pyserving.server.v2 import dtypes

PLATFORM = "tensorflow_savedmodel"
EXTENSIONS = ("binary_tensor_data",)
SIGNATURE_PARAMETER = "signature_name"
_INT64_MAX = 2**63 - 1
ReadInputs = Callable[[Servable], tuple[str, Mapping[str, np.ndarray]]]


@dataclass
class InferInput:
    name: str
    datatype: str
    shape: list[int]
    array: np.ndarray


@dataclass
class InferOutput:
    name: str
    datatype: str
    array: np.ndarray


@dataclass
class InferRequest:
    """A V2 inference request with its tensors decoded, whichever transport carried it."""
    model_name: str
    model_version: str = ""
    signature_name: str = ""
    inputs: list[InferInput] = field(default_factory=list)
    outputs: Sequence[str] = ()  # the requested outputs: TF's output filter, in order


def server_metadata() -> dict[str, Any]:
    """The server metadata response: name, version and the protocol extensions served."""
    try:
        version = importlib.metadata.version("pyserving")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a checkout
        version = "unknown"
    return {"name": "pyserving", "version": version, "extensions": list(EXTENSIONS)}


def model_spec(name: str, version: str) -> model_pb2.ModelSpec:
    """A ModelSpec for a V2 model name and version: a number, a version label (a pyserving
    extension), or empty for the same routing as a Predict without a version."""
    if not name:
        raise invalid_argument("Missing model name in request")
    spec = model_pb2.ModelSpec(name=name)
    if version.isdigit() and version.isascii():
        if int(version) > _INT64_MAX:
            raise invalid_argument(f"Failed to convert version: {version} to numeric.")
        spec.version.value = int(version)
    elif version:
        spec.version_label = version
    return spec


def _shape_text(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(dim) for dim in shape) + "]"


def signature_shape(info: Any) -> list[int]:
    """A TensorInfo's shape as V2 metadata gives it: -1 for unknown dims, [-1] for unknown
    rank."""
    if info.tensor_shape.unknown_rank:
        return [-1]
    return [dim.size for dim in info.tensor_shape.dim]


def _check_input(model: str, tensor: InferInput, info: Any) -> None:
    if dtypes.V2_NAMES.get(info.dtype) != tensor.datatype and \
            dtypes.v2_name(info.dtype) != tensor.datatype:
        expected = dtypes.v2_name(info.dtype)
        raise invalid_argument(f"inference input '{tensor.name}' data-type is "
                               f"'{tensor.datatype}', but model '{model}' expects '{expected}'")
    shape = info.tensor_shape
    if shape.unknown_rank:
        return
    dims, sent = shape.dim, tensor.shape
    if len(dims) == len(sent) and all(
            dim.size == -1 or dim.size == got for dim, got in zip(dims, sent, strict=True)):
        return
    raise invalid_argument(f"unexpected shape for input '{tensor.name}' for model "
                           f"'{model}'. Expected {_shape_text(signature_shape(info))}, got "
                           f"{_shape_text(sent)}")


class V2Inference:
    """ModelInfer, model metadata and readiness over the serving core."""

    def __init__(self, core: ServingCore) -> None:
        self._core = core

    def infer_steps(self, request: InferRequest) -> Steps[tuple[int, list[InferOutput]]]:
        """The version that ran the request and its outputs, in the requested order (every
        output of the signature, by name, when none was requested), as steps the transport's
        event loop drives (``run_steps_async``): the core's ``predict_arrays_steps``."""
        spec, read, versions = self._prepare(request)
        outputs = yield from self._core.predict_arrays_steps(spec, read, request.outputs)
        return versions[0], _outputs(outputs)

    def _prepare(self, request: InferRequest) -> tuple[model_pb2.ModelSpec, ReadInputs,
                                                      list[int]]:
        """The spec, the reader that checks the decoded inputs against the signature of the
        version that runs them, and the list that version's number goes into."""
        spec = model_spec(request.model_name, request.model_version)
        by_name = {tensor.name: tensor for tensor in request.inputs}
        if len(by_name) != len(request.inputs):
            raise invalid_argument(f"input names must be unique in a request for model "
                                   f"'{request.model_name}'")
        versions: list[int] = []

        def read(servable: Servable) -> tuple[str, Mapping[str, np.ndarray]]:
            versions.append(servable.version)  # the first read is the request's own version
            name, signature = find_predict_signature(servable, request.signature_name)
            for tensor in request.inputs:
                info = signature.inputs.get(tensor.name)
                if info is None:
                    raise invalid_argument(f"unexpected inference input '{tensor.name}' for "
                                           f"model '{request.model_name}'")
                _check_input(request.model_name, tensor, info)
            return name, {name: tensor.array for name, tensor in by_name.items()}

        return spec, read, versions

    def model_metadata(self, name: str, version: str, signature_name: str = ""
                       ) -> dict[str, Any]:
        """The model metadata response of the protocol, from the signature (default
        ``serving_default``) of the version named (default: the latest)."""
        with self._core.servable_for(model_spec(name, version)) as servable:
            signature_key = signature_name or DEFAULT_SIGNATURE
            signature = servable.signatures.get(signature_key)
            if signature is None:
                raise not_found(f'Serving signature key "{signature_key}" not found.')
            return {
                "name": servable.name,
                "versions": [str(number) for number in
                             sorted(self._core.manager.available_versions(name))],
                "platform": PLATFORM,
                "inputs": _tensor_metadata(signature.inputs),
                "outputs": _tensor_metadata(signature.outputs),
            }

    def model_ready(self, name: str, version: str) -> bool:
        """Whether the version named (any version when none is named) serves requests."""
        spec = model_spec(name, version)
        if spec.WhichOneof("version_choice") is None:
            return bool(self._core.manager.available_versions(name))
        try:
            with self._core.servable_for(spec):
                return True
        except ServingError:  # an unknown version or label is simply not ready
            return False

    def server_ready(self) -> bool:
        """Ready when every configured model has a version serving (Triton: all models
        ready)."""
        manager = self._core.manager
        return all(manager.available_versions(name) for name in manager.model_names())


def _outputs(outputs: list[tuple[str, Any, int]]) -> list[InferOutput]:
    return [InferOutput(alias, dtypes.v2_name(dtype), _as_array(array))
            for alias, array, dtype in outputs]


def _as_array(value: Any) -> np.ndarray:
    """TensorFlow answers a scalar string as bytes: a 0-d object array keeps every byte."""
    if isinstance(value, np.ndarray):
        return value
    array = np.empty((), dtype=object)
    array[()] = value
    return array


def _tensor_metadata(infos: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"name": alias, "datatype": dtypes.v2_name(info.dtype),
             "shape": signature_shape(info)} for alias, info in sorted(infos.items())]
