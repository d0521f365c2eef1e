"""TF Serving's REST response JSON (json_tensor.cc MakeJsonFrom*, http_rest_api_util.cc).

The structure, types and values are TF Serving's; orjson writes them straight from the output
arrays (a 1000x100 float32 answer in ~3 ms, where TF's per-value printing took ~37 ms in
Python). float32 values are written with the fewest digits that read back to the same float32,
float64 values to the same float64. Where orjson cannot write a value (NaN and the infinities,
which it writes as null), python-rapidjson writes the document with TF Serving's ``NaN``,
``Infinity`` and ``-Infinity`` tokens. String outputs that are not UTF-8 are written with
U+FFFD in place of the stray bytes (TF Serving writes the raw bytes: not JSON).
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import orjson
import rapidjson
from google.protobuf import json_format

from pyserving.client import tensors
from pyserving.client.tensors import DTYPE_NAMES
from pyserving.server.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    regression_pb2,
)
from pyserving.server.errors import internal, invalid_argument
from pyserving.server.rest.request_json import FLOAT_TYPES, INT_RANGES, RequestFormat

_NUMPY = orjson.OPT_SERIALIZE_NUMPY
_WRITTEN = (*FLOAT_TYPES, *INT_RANGES, tensors.DT_BOOL, tensors.DT_STRING)


def dumps(document: Any, finite: bool = True) -> bytes:
    """``document`` (numpy values included) as JSON; ``finite`` when it holds no NaN or
    infinity, which orjson would write as null."""
    if finite:
        return orjson.dumps(document, option=_NUMPY)
    return rapidjson.dumps(document, default=_plain, ensure_ascii=False,
                           number_mode=rapidjson.NM_NAN).encode()


def _plain(value: Any) -> Any:
    """A numpy value as Python values for python-rapidjson; float32 through its shortest
    text, so that it is written with float32's digits."""
    if isinstance(value, (np.ndarray, np.generic)):
        if value.dtype == np.float32:
            return value.astype(str).astype(np.float64).tolist()
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _b64(raw: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(raw).decode("ascii")}


def _value(name: str, array: np.ndarray, dtype: int) -> Any:
    """An output as orjson writes it: a C-contiguous array or scalar, or nested lists of text
    and ``{"b64": ...}`` objects for strings (``_bytes`` names)."""
    if dtype not in _WRITTEN:
        raise invalid_argument(
            f"Failed to write JSON value for tensor type: {DTYPE_NAMES.get(dtype, dtype)}")
    if dtype == tensors.DT_STRING:
        convert = _b64 if name.endswith("_bytes") else _text
        flat = np.empty(array.size, dtype=object)
        flat[:] = [convert(bytes(raw)) for raw in array.reshape(-1)]
        return flat.reshape(array.shape).tolist()
    if array.ndim == 0:
        return array[()]
    return np.ascontiguousarray(array)


def predict_json(outputs: list[tuple[str, np.ndarray, int]], fmt: RequestFormat) -> bytes:
    """MakeJsonFromTensors: {"predictions": [...]} (row) or {"outputs": ...} (columnar); one
    output is written without its name."""
    if not outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    # TensorFlow gives a rank-0 string output as bytes
    outputs = sorted((name, np.asarray(value, object if isinstance(value, bytes) else None), dtype)
                     for name, value, dtype in outputs)
    if fmt is RequestFormat.ROW:
        batch = -1
        for name, array, _ in outputs:
            if array.ndim == 0:
                raise invalid_argument(f"Tensor name: {name} has no shape information ")
            if batch >= 0 and batch != array.shape[0]:
                raise invalid_argument(f"Tensor name: {name} has inconsistent batch size: "
                                       f"{array.shape[0]} expecting: {batch}")
            batch = array.shape[0]
    values = {name: _value(name, array, dtype) for name, array, dtype in outputs}
    finite = all(_finite(array) for _, array, _ in outputs)
    if fmt is RequestFormat.COLUMNAR:
        return dumps({"outputs": values.popitem()[1] if len(values) == 1 else values}, finite)
    if len(values) == 1:
        return dumps({"predictions": values.popitem()[1]}, finite)
    return dumps({"predictions": [{name: value[row] for name, value in values.items()}
                                  for row in range(batch)]}, finite)


def _finite(array: np.ndarray) -> bool:
    return array.dtype.kind != "f" or bool(np.isfinite(array).all())


def classification_json(response: classification_pb2.ClassificationResponse) -> bytes:
    classifications = response.result.classifications
    if not classifications:
        raise invalid_argument("Cannot convert empty ClassificationResults to JSON")
    scores = np.array([item.score for entry in classifications for item in entry.classes],
                      np.float32)
    return dumps({"results": [
        [[item.label, np.float32(item.score)] for item in entry.classes]
        for entry in classifications]}, _finite(scores))


def regression_json(response: regression_pb2.RegressionResponse) -> bytes:
    regressions = response.result.regressions
    if not regressions:
        raise invalid_argument("Cannot convert empty RegressionResults to JSON")
    values = np.array([item.value for item in regressions], np.float32)
    return dumps({"results": values}, _finite(values))


def _proto_dict(message: Any, *, preserve_names: bool) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=preserve_names,
                                     always_print_fields_with_no_presence=True)


def model_status_json(response: get_model_status_pb2.GetModelStatusResponse) -> bytes:
    return dumps(_proto_dict(response, preserve_names=False))


def model_metadata_json(response: get_model_metadata_pb2.GetModelMetadataResponse) -> bytes:
    """http_rest_api_util.cc ToJsonString: the model spec and the signature map."""
    signatures = get_model_metadata_pb2.SignatureDefMap()
    if "signature_def" not in response.metadata:
        raise internal("Failed to find 'signature_def' key in the GetModelMetadataResponse "
                       "metadata map.")
    if not response.metadata["signature_def"].Unpack(signatures):
        raise internal("Failed to unpack 'Any' object to 'SignatureDefMap'.")
    return dumps({"model_spec": _proto_dict(response.model_spec, preserve_names=True),
                  "metadata": {"signature_def": _proto_dict(signatures, preserve_names=True)}})


def error_json(message: str) -> bytes:
    """{"error": message}; text from a body that is not UTF-8 shows as U+FFFD."""
    if not message.isascii():
        message = message.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return dumps({"error": message})
