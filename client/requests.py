"""TF Serving request protos from plain Python values; shared by the sync and asyncio clients."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

from google.protobuf import text_format

from pyserving.client import tensors
from pyserving.client.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_pb2,
    model_server_config_pb2,
    predict_pb2,
    regression_pb2,
    tensor_pb2,
)
from pyserving.client.examples import ExampleLike, fill_input

Inputs = Mapping[str, Any]  # name -> np.ndarray, nested list or scalar
ServerConfig = Union["model_server_config_pb2.ModelServerConfig", str, Path]

CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
_METHODS = {"classify": CLASSIFY_METHOD, "regress": REGRESS_METHOD}


def fill_model_spec(spec: model_pb2.ModelSpec, model: str, *, version: int | None = None,
                    label: str | None = None, signature: str | None = None) -> None:
    """Name the model and pick a version by number or label (neither: the latest)."""
    if version is not None and label is not None:
        raise ValueError("pass a version or a label, not both")
    spec.name = model
    if version is not None:
        spec.version.value = int(version)
    if label is not None:
        spec.version_label = label
    if signature:
        spec.signature_name = signature


def tensor_proto(value: Any) -> tensor_pb2.TensorProto:
    """A TensorProto from an array, list or scalar (dtypes as tf.make_tensor_proto picks)."""
    if isinstance(value, tensor_pb2.TensorProto):
        return value
    return tensors.make_tensor_proto(tensor_pb2.TensorProto, value)


def predict_request(model: str, inputs: Inputs, *, version: int | None = None,
                    label: str | None = None, signature: str | None = None,
                    output_filter: Sequence[str] | None = None) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    fill_model_spec(request.model_spec, model, version=version, label=label,
                    signature=signature)
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tensor_proto(value))
    if output_filter:
        request.output_filter.extend([output_filter] if isinstance(output_filter, str)
                                     else output_filter)
    return request


def classification_request(model: str, examples: Iterable[ExampleLike], *,
                           context: ExampleLike | None = None, version: int | None = None,
                           label: str | None = None, signature: str | None = None
                           ) -> classification_pb2.ClassificationRequest:
    request = classification_pb2.ClassificationRequest()
    fill_model_spec(request.model_spec, model, version=version, label=label,
                    signature=signature)
    fill_input(request.input, examples, context)
    return request


def regression_request(model: str, examples: Iterable[ExampleLike], *,
                       context: ExampleLike | None = None, version: int | None = None,
                       label: str | None = None, signature: str | None = None
                       ) -> regression_pb2.RegressionRequest:
    request = regression_pb2.RegressionRequest()
    fill_model_spec(request.model_spec, model, version=version, label=label,
                    signature=signature)
    fill_input(request.input, examples, context)
    return request


def multi_inference_request(model: str, examples: Iterable[ExampleLike],
                            tasks: Mapping[str, str], *, context: ExampleLike | None = None,
                            version: int | None = None, label: str | None = None
                            ) -> inference_pb2.MultiInferenceRequest:
    """``tasks`` maps signature names to "classify" or "regress" (or full method names)."""
    request = inference_pb2.MultiInferenceRequest()
    for signature, method in tasks.items():
        task = request.tasks.add()
        fill_model_spec(task.model_spec, model, version=version, label=label,
                        signature=signature)
        task.method_name = _METHODS.get(method, method)
    fill_input(request.input, examples, context)
    return request


def metadata_request(model: str, *, version: int | None = None, label: str | None = None
                     ) -> get_model_metadata_pb2.GetModelMetadataRequest:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    fill_model_spec(request.model_spec, model, version=version, label=label)
    return request


def status_request(model: str, *, version: int | None = None
                   ) -> get_model_status_pb2.GetModelStatusRequest:
    request = get_model_status_pb2.GetModelStatusRequest()
    fill_model_spec(request.model_spec, model, version=version)
    return request


def reload_config_request(config: ServerConfig) -> model_management_pb2.ReloadConfigRequest:
    """From a ModelServerConfig, its text format, or the path of a text-format file."""
    request = model_management_pb2.ReloadConfigRequest()
    if isinstance(config, Path):
        config = config.read_text()
    if isinstance(config, str):
        text_format.Parse(config, request.config)
    else:
        request.config.CopyFrom(config)
    return request

