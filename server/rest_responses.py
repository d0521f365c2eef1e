"""TF Serving's REST response JSON (json_tensor.cc MakeJsonFrom*, http_rest_api_util.cc).

Numbers go out through orjson (numpy arrays natively, floats shortest round-trip); documents
with NaN or Infinity go through the stdlib, which writes those tokens as TF Serving does.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import orjson
from google.protobuf import json_format

from pyserving.client import tensors
from pyserving.client.tensors import DTYPE_NAMES, ndarray_from_tensor_proto
from pyserving.server.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    predict_pb2,
    regression_pb2,
)
from pyserving.server.errors import internal, invalid_argument
from pyserving.server.rest_json import FLOAT_TYPES, INT_RANGES, RequestFormat

_WRITABLE = {*FLOAT_TYPES, *INT_RANGES, tensors.DT_STRING, tensors.DT_BOOL}
_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def _shortest_float(value: float, dtype: np.dtype) -> float:
    """A Python float whose repr is the shortest text that round-trips in ``dtype``."""
    return float(str(dtype.type(value)))


def _json_values(name: str, array: np.ndarray, dtype: int) -> Any:
    """An output array as something orjson writes as TF Serving would (numbers stay numpy)."""
    if dtype not in _WRITABLE:
        raise invalid_argument(
            f"Failed to write JSON value for tensor type: {DTYPE_NAMES.get(dtype, dtype)}")
    if dtype == tensors.DT_STRING:
        encode = _as_b64 if name.endswith("_bytes") else _as_text
        return _object_array([encode(bytes(raw)) for raw in array.reshape(-1)], array.shape)
    if dtype in FLOAT_TYPES and not np.isfinite(array).all():
        flat = [_shortest_float(value, array.dtype) for value in array.reshape(-1)]
        return _object_array(flat, array.shape)
    return np.ascontiguousarray(array)


def _as_b64(raw: bytes) -> dict:
    return {"b64": base64.b64encode(raw).decode()}


def _as_text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _object_array(flat: list, shape: tuple) -> Any:
    array = np.empty(len(flat), dtype=object)
    array[:] = flat
    return array.reshape(shape).tolist()


def _encode(document: Any) -> bytes:
    # orjson writes NaN and Infinity as null, so those documents go through the stdlib.
    if _needs_tokens(document):
        return json.dumps(document, allow_nan=True, ensure_ascii=False,
                          default=_to_list).encode()
    return orjson.dumps(document, option=_DUMPS_OPTIONS)


def _needs_tokens(document: Any) -> bool:
    if isinstance(document, float):
        return not np.isfinite(document)
    if isinstance(document, dict):
        return any(_needs_tokens(value) for value in document.values())
    if isinstance(document, list):
        return any(_needs_tokens(value) for value in document)
    return False


def _to_list(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        if value.dtype == np.float32:  # tolist() would print float32 values as doubles
            return _object_array([_shortest_float(item, value.dtype)
                                  for item in value.reshape(-1)], value.shape)
        return value.tolist()
    if isinstance(value, np.generic):
        return _shortest_float(value, value.dtype) if value.dtype == np.float32 else value.item()
    raise TypeError(f"not JSON serialisable: {type(value)}")


def predict_response_json(response: predict_pb2.PredictResponse, fmt: RequestFormat) -> bytes:
    """MakeJsonFromTensors: {"predictions": [...]} (row) or {"outputs": ...} (columnar)."""
    if not response.outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    values = {}
    for name in sorted(response.outputs):
        proto = response.outputs[name]
        values[name] = (_json_values(name, ndarray_from_tensor_proto(proto), proto.dtype),
                        tuple(dim.size for dim in proto.tensor_shape.dim))
    if fmt is RequestFormat.COLUMNAR:
        if len(values) == 1:
            return _encode({"outputs": next(iter(values.values()))[0]})
        return _encode({"outputs": {name: value for name, (value, _) in values.items()}})
    batch = -1
    for name, (_, shape) in values.items():
        if not shape:
            raise invalid_argument(f"Tensor name: {name} has no shape information ")
        if batch >= 0 and batch != shape[0]:
            raise invalid_argument(f"Tensor name: {name} has inconsistent batch size: "
                                   f"{shape[0]} expecting: {batch}")
        batch = shape[0]
    if len(values) == 1:
        return _encode({"predictions": next(iter(values.values()))[0]})
    rows = [{name: value[index] for name, (value, _) in values.items()} for index in range(batch)]
    return _encode({"predictions": rows})


def classification_json(response: classification_pb2.ClassificationResponse) -> bytes:
    classifications = response.result.classifications
    if not classifications:
        raise invalid_argument("Cannot convert empty ClassificationResults to JSON")
    f32 = np.dtype(np.float32)
    results = [[[item.label.decode("utf-8", "replace") if isinstance(item.label, bytes)
                 else item.label, _shortest_float(item.score, f32)]
                for item in entry.classes] for entry in classifications]
    return _encode({"results": results})


def regression_json(response: regression_pb2.RegressionResponse) -> bytes:
    regressions = response.result.regressions
    if not regressions:
        raise invalid_argument("Cannot convert empty RegressionResults to JSON")
    f32 = np.dtype(np.float32)
    return _encode({"results": [_shortest_float(item.value, f32) for item in regressions]})


def _message_dict(message: Any) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def model_status_json(response: get_model_status_pb2.GetModelStatusResponse) -> bytes:
    return orjson.dumps(_message_dict(response), option=orjson.OPT_INDENT_2)


def model_metadata_json(response: get_model_metadata_pb2.GetModelMetadataResponse) -> bytes:
    signatures = get_model_metadata_pb2.SignatureDefMap()
    if "signature_def" not in response.metadata:
        raise internal("Failed to find 'signature_def' key in the GetModelMetadataResponse "
                       "metadata map.")
    if not response.metadata["signature_def"].Unpack(signatures):
        raise internal("Failed to unpack 'Any' object to 'SignatureDefMap'.")
    document = {"model_spec": _message_dict(response.model_spec),
                "metadata": {"signature_def": _message_dict(signatures)}}
    return orjson.dumps(document, option=orjson.OPT_INDENT_2)


def error_json(message: str) -> bytes:
    try:
        return orjson.dumps({"error": message}, option=orjson.OPT_INDENT_2)
    except orjson.JSONEncodeError:  # a lone surrogate echoed from the request
        text = message.encode("utf-8", "replace").decode("utf-8")
        return orjson.dumps({"error": text}, option=orjson.OPT_INDENT_2)
