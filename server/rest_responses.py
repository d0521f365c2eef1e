"""TF Serving's REST response JSON (json_tensor.cc MakeJsonFrom*, http_rest_api_util.cc).

Predict, Classify, Regress and error bodies are rapidjson's PrettyWriter bytes
(``rest_json_writer``); model status and metadata are protobuf's JSON printer with
whitespace, as TF Serving's ``ToJsonString`` calls it.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from google.protobuf import json_format

from pyserving.client import tensors
from pyserving.client.tensors import DTYPE_NAMES, ndarray_from_tensor_proto
from pyserving.server import rest_json_writer as writer
from pyserving.server.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    predict_pb2,
    regression_pb2,
)
from pyserving.server.errors import internal, invalid_argument
from pyserving.server.rest_json import FLOAT_TYPES, INT_RANGES, RequestFormat


def _output(name: str, proto: Any) -> writer.Tensor:
    """An output TensorProto as AddSingleValueAndAdvance writes its values."""
    dtype = proto.dtype
    array = ndarray_from_tensor_proto(proto)
    shape = tuple(dim.size for dim in proto.tensor_shape.dim)
    if dtype in FLOAT_TYPES:
        return writer.Tensor(writer.decimal_tokens(array), shape)
    if dtype in INT_RANGES:
        return writer.Tensor(writer.integer_tokens(array), shape)
    if dtype == tensors.DT_BOOL:
        return writer.Tensor(writer.bool_tokens(array), shape)
    if dtype == tensors.DT_STRING:
        if name.endswith("_bytes"):
            return writer.Tensor(writer.b64_strings(array), shape, b64=True)
        return writer.Tensor(writer.string_tokens(array), shape)
    raise invalid_argument(
        f"Failed to write JSON value for tensor type: {DTYPE_NAMES.get(dtype, dtype)}")


def predict_response_json(response: predict_pb2.PredictResponse, fmt: RequestFormat) -> bytes:
    """MakeJsonFromTensors: {"predictions": [...]} (row) or {"outputs": ...} (columnar)."""
    if not response.outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    names = sorted(response.outputs)
    batch = -1
    if fmt is RequestFormat.ROW:
        for name in names:
            dims = response.outputs[name].tensor_shape.dim
            if not dims:
                raise invalid_argument(f"Tensor name: {name} has no shape information ")
            if batch >= 0 and batch != dims[0].size:
                raise invalid_argument(f"Tensor name: {name} has inconsistent batch size: "
                                       f"{dims[0].size} expecting: {batch}")
            batch = dims[0].size
    outputs = {name: _output(name, response.outputs[name]) for name in names}
    if fmt is RequestFormat.COLUMNAR:
        return writer.encode_document(writer.columnar_format(outputs))
    return writer.encode_document(writer.row_format(outputs, batch))


def classification_json(response: classification_pb2.ClassificationResponse) -> bytes:
    classifications = response.result.classifications
    if not classifications:
        raise invalid_argument("Cannot convert empty ClassificationResults to JSON")
    results = []
    for entry in classifications:
        labels = [writer.quote(_label_text(item.label)) for item in entry.classes]
        scores = writer.decimal_tokens(
            np.array([item.score for item in entry.classes], dtype=np.float32))
        results.append(zip(labels, scores))
    return writer.encode_document(writer.classification_results(results))


def _label_text(label: str | bytes) -> str:
    return writer.text_of(label) if isinstance(label, bytes) else label


def regression_json(response: regression_pb2.RegressionResponse) -> bytes:
    regressions = response.result.regressions
    if not regressions:
        raise invalid_argument("Cannot convert empty RegressionResults to JSON")
    values = np.array([item.value for item in regressions], dtype=np.float32)
    return writer.encode_document(writer.regression_results(writer.decimal_tokens(values)))


def _proto_json(message: Any, *, preserve_names: bool) -> str:
    """MessageToJsonString with add_whitespace and always_print_fields_with_no_presence:
    one-space indent, fields in field-number order, a newline at the end."""
    document = json_format.MessageToDict(message, preserving_proto_field_name=preserve_names,
                                         always_print_fields_with_no_presence=True)
    ordered = _in_field_order(message, document, preserve_names)
    return json.dumps(ordered, indent=1, ensure_ascii=False) + "\n"


def _in_field_order(message: Any, document: Any, preserve_names: bool) -> Any:
    if not isinstance(document, dict) or not hasattr(message, "DESCRIPTOR"):
        return document  # a well-known type's JSON value (wrappers, Any)
    ordered = {}
    for field in sorted(message.DESCRIPTOR.fields, key=lambda spec: spec.number):
        key = field.name if preserve_names else field.json_name
        if key not in document:
            continue
        value = document[key]
        if field.message_type is not None:
            nested = getattr(message, field.name)
            if field.message_type.GetOptions().map_entry:
                value_field = field.message_type.fields_by_name["value"]
                if value_field.message_type is not None:
                    value = {item: _in_field_order(nested[item], value[item], preserve_names)
                             for item in value}
            elif field.is_repeated:
                value = [_in_field_order(item, entry, preserve_names)
                         for item, entry in zip(nested, value)]
            else:
                value = _in_field_order(nested, value, preserve_names)
        ordered[key] = value
    return ordered


def model_status_json(response: get_model_status_pb2.GetModelStatusResponse) -> bytes:
    return _proto_json(response, preserve_names=False).encode()


def model_metadata_json(response: get_model_metadata_pb2.GetModelMetadataResponse) -> bytes:
    """http_rest_api_util.cc ToJsonString: the model spec and the signature map printed on
    their own and joined into one document, as TF Serving does."""
    signatures = get_model_metadata_pb2.SignatureDefMap()
    if "signature_def" not in response.metadata:
        raise internal("Failed to find 'signature_def' key in the GetModelMetadataResponse "
                       "metadata map.")
    if not response.metadata["signature_def"].Unpack(signatures):
        raise internal("Failed to unpack 'Any' object to 'SignatureDefMap'.")
    model_spec = _proto_json(response.model_spec, preserve_names=True)
    signature_def = _proto_json(signatures, preserve_names=True)
    return (f'{{\n"model_spec":{model_spec},\n"metadata": {{"signature_def": {signature_def}}}\n'
            "}\n").encode()


def error_json(message: str) -> bytes:
    return writer.encode_document(writer.error(message))
