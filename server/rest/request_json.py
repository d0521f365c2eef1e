"""TF Serving's REST request JSON -> input arrays and Example protos
(tensorflow_serving/util/json_tensor.cc).

Takes the values ``json_parse.parse_json`` gives. Numeric tensors take a numpy fast path;
anything it cannot vouch for is walked value by value as json_tensor.cc does, which also yields
TF Serving's error texts. Hostile values (too many dimensions, numbers out of range, values of
mixed JSON types) get a 400, never a crash.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any

import grpc
import numpy as np

from pyserving.client import tensors
from pyserving.client.tensors import DTYPE_NAMES
from pyserving.server.apis import example_pb2, feature_pb2
from pyserving.server.errors import ServingError, invalid_argument
from pyserving.server.rest import b64
from pyserving.server.rest.json_parse import debug_string, json_type_name, json_value_error

_INT32 = (-2**31, 2**31 - 1)
_INT64 = (-2**63, 2**63 - 1)
INT_RANGES = {
    tensors.DT_INT32: _INT32, tensors.DT_INT16: _INT32, tensors.DT_INT8: _INT32,
    tensors.DT_UINT8: _INT32, tensors.DT_INT64: _INT64, tensors.DT_UINT32: (0, 2**32 - 1),
    tensors.DT_UINT64: (0, 2**64 - 1),
}
FLOAT_TYPES = (tensors.DT_FLOAT, tensors.DT_DOUBLE)
_MAX_RANK = 64  # numpy's limit (TensorFlow's is 254)


class RequestFormat(Enum):
    ROW = "instances"
    COLUMNAR = "inputs"


def signature_name(document: dict) -> str:
    name = document.get("signature_name", "")
    if not isinstance(name, str):
        raise invalid_argument(f"JSON Value: {debug_string(document)} not formatted correctly. "
                               "'signature_name' key must be a string value.")
    return proto_string(name)


def proto_string(text: str) -> str:
    """A JSON string for a proto string field, which must be UTF-8: the raw non-UTF-8 bytes
    TF Serving lets through (held as surrogate escapes) become U+FFFD."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return text


def _type_error(value: Any, dtype: int) -> ServingError:
    return invalid_argument(f"JSON Value: {debug_string(value)} Type: {json_type_name(value)} "
                            f"is not of expected type: {DTYPE_NAMES.get(dtype, dtype)}")


def _is_base64_object(value: Any) -> bool:
    """IsValBase64Object: one member, "b64", a string."""
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _decode_base64(value: Any) -> bytes:
    if not _is_base64_object(value):
        raise invalid_argument(f"JSON Value: {debug_string(value)} "
                               "not formatted correctly for base64 data")
    decoded = b64.unescape(value["b64"])
    if decoded is None:
        raise invalid_argument("Unable to base64 decode")
    return decoded


def _leaf(value: Any, dtype: int) -> Any:
    """One JSON scalar as a value of ``dtype`` (AddValueToTensor)."""
    if isinstance(value, dict):
        if dtype == tensors.DT_STRING:
            return _decode_base64(value)
        raise _type_error(value, dtype)
    if dtype in FLOAT_TYPES:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _type_error(value, dtype)
        return value
    if dtype in INT_RANGES:
        low, high = INT_RANGES[dtype]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _type_error(value, dtype)
        return value
    if dtype == tensors.DT_STRING:
        if not isinstance(value, str):
            raise _type_error(value, dtype)
        return value.encode("utf-8", "surrogateescape")
    if dtype == tensors.DT_BOOL:
        if not isinstance(value, bool):
            raise _type_error(value, dtype)
        return value
    raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                       f"Conversion of JSON Value: {debug_string(value)} "
                       f"to type: {DTYPE_NAMES.get(dtype, dtype)}")


def _dense_shape(value: Any) -> list[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _fill(value: Any, level: int, shape: list[int], dtype: int, out: list) -> None:
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise invalid_argument(f"JSON Value: {debug_string(value)} found at incorrect "
                                   f"level: {level + 1} in the JSON DOM. Expected at level: {rank}")
        out.append(_leaf(value, dtype))
        return
    if level >= rank:
        raise invalid_argument(
            f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise invalid_argument(f"Encountered list at unexpected size: {len(value)} at level: "
                               f"{level} expected size: {shape[level]}")
    for item in value:
        _fill(item, level + 1, shape, dtype, out)


def _holds_bool(value: Any) -> bool:
    """Whether a (nested) list holds a bool, which numpy would silently take as 0 or 1."""
    pending = [value]
    while pending:
        items = pending.pop()
        if not isinstance(items, list):
            if isinstance(items, bool):
                return True
            continue
        kinds = set(map(type, items))
        if bool in kinds:
            return True
        if list in kinds:
            pending.extend(item for item in items if isinstance(item, list))
    return False


def _numeric_array(value: Any, dtype: int, check_bools: bool) -> np.ndarray | None:
    """The fast path: numpy's own inference, accepted only when it proves the values fit."""
    if dtype not in FLOAT_TYPES and dtype not in INT_RANGES and dtype != tensors.DT_BOOL:
        return None
    try:
        array = np.array(value)
    except (ValueError, TypeError, OverflowError):
        return None
    kind = array.dtype.kind
    if dtype in FLOAT_TYPES:
        accepted = kind in "fiu"
    elif dtype == tensors.DT_BOOL:
        accepted = kind == "b"
    else:
        low, high = INT_RANGES[dtype]
        accepted = kind in "iu" and (array.size == 0 or (
            int(array.min()) >= low and int(array.max()) <= high))
    if not accepted or (kind != "b" and check_bools and _holds_bool(value)):
        return None
    # A float beyond the type's range becomes infinity, as TF Serving's parser makes it.
    with np.errstate(over="ignore"):
        return array.astype(tensors.numpy_dtype_for(dtype), copy=False)


def tensor_from_json(value: Any, dtype: int, check_bools: bool = True
                     ) -> tuple[np.ndarray, int]:
    """A JSON (nested list) value as an array of ``dtype``, and its number of values;
    ``check_bools=False`` when the body is known to hold no bool."""
    array = _numeric_array(value, dtype, check_bools)
    if array is not None:
        return array, array.size
    shape = _dense_shape(value)
    _check_rank(value, len(shape))
    values: list = []
    _fill(value, 0, shape, dtype, values)
    numpy_dtype = tensors.numpy_dtype_for(dtype)
    if numpy_dtype.kind == "O":
        array = np.empty(len(values), dtype=object)
        array[:] = values
    else:
        array = np.array(values, dtype=numpy_dtype) if values else np.zeros(0, numpy_dtype)
    return array.reshape(shape), len(values)


def _check_rank(value: Any, rank: int) -> None:
    if rank > _MAX_RANK:
        raise invalid_argument(f"JSON Value: {debug_string(value)} is nested {rank} lists "
                               f"deep; a tensor has at most {_MAX_RANK} dimensions")


def _instance_item(value: Any, name: str, inputs: Mapping[str, Any],
                   seen: dict[str, tuple[int, tuple]], check_bools: bool) -> np.ndarray:
    if name not in inputs:
        raise invalid_argument(f"JSON object: does not have named input: {name}")
    array, size = tensor_from_json(value, inputs[name].dtype, check_bools)
    if name not in seen:
        seen[name] = (size, array.shape)
    elif seen[name][0] != size:
        raise invalid_argument(f"Expecting tensor size: {seen[name][0]} but got: {size}")
    elif seen[name][1] != array.shape:
        raise invalid_argument(f"Expecting shape {_shape_string(seen[name][1])} "
                               f"but got: {_shape_string(array.shape)}")
    return array


def _shape_string(shape: tuple) -> str:
    return "[" + ",".join(str(size) for size in shape) + "]"


def _status_string(error: ServingError) -> str:
    return f"{error.code.name}: {error.message}"


def _is_element_object(value: Any) -> bool:
    return isinstance(value, dict) and not _is_base64_object(value)


def _from_instances(arrays: dict[str, np.ndarray], instances: list,
                    inputs: Mapping[str, Any], check_bools: bool) -> None:
    if not isinstance(instances[0], dict) and len(inputs) > 1:
        raise invalid_argument("instances is a plain list, but expecting list of objects as "
                               "multiple input tensors required as per tensorinfo_map")
    first = sorted(inputs)[0]
    if not _is_element_object(instances[0]):
        fast = _numeric_array(instances, inputs[first].dtype, check_bools)
        if fast is not None and fast.ndim >= 1:
            arrays[first] = fast
            return
    by_name: dict[str, list[np.ndarray]] = {}
    seen: dict[str, tuple[int, tuple]] = {}
    names = set(inputs)
    objects = _is_element_object(instances[0])
    for index, element in enumerate(instances):
        if objects:
            if not _is_element_object(element):
                raise invalid_argument(
                    f"Expecting object but got list at item {index} of input list")
            for name, value in element.items():
                try:
                    by_name.setdefault(name, []).append(
                        _instance_item(value, name, inputs, seen, check_bools))
                except ServingError as error:
                    raise invalid_argument(
                        f"Failed to process element: {index} key: {name} of 'instances' list. "
                        f"Error: {_status_string(error)}") from None
            if set(element) != names:
                raise invalid_argument(
                    f"Failed to process element: {index} of 'instances' list. JSON object: "
                    f"{debug_string(element)} keys must be equal to: {','.join(sorted(names))}")
        else:
            if _is_element_object(element):
                raise invalid_argument(
                    f"Expecting value/list but got object at item {index} of input list")
            try:
                by_name.setdefault(first, []).append(
                    _instance_item(element, first, inputs, seen, check_bools))
            except ServingError as error:
                raise invalid_argument(f"Failed to process element: {index} of 'instances' "
                                       f"list. Error: {_status_string(error)}") from None
    for name, rows in by_name.items():
        _check_rank(instances, rows[0].ndim + 1)  # the batch dimension comes on top
        arrays[name] = np.stack(rows)


def _from_inputs(arrays: dict[str, np.ndarray], value: Any, inputs: Mapping[str, Any],
                 check_bools: bool) -> None:
    if not isinstance(value, dict) or _is_base64_object(value):
        if len(inputs) > 1:
            raise invalid_argument("inputs is a plain value/list, but expecting an object as "
                                   "multiple input tensors required as per tensorinfo_map")
        value = {sorted(inputs)[0]: value}
    for name in sorted(inputs):
        if name not in value:
            raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
        arrays[name] = tensor_from_json(value[name], inputs[name].dtype, check_bools)[0]


def predict_inputs(document: dict, signature_inputs: Callable[[str], Mapping[str, Any]],
                   check_bools: bool = True
                   ) -> tuple[str, dict[str, np.ndarray], RequestFormat]:
    """FillPredictRequestFromJson: (signature name, input arrays by alias, format);
    ``signature_inputs(name)`` gives the signature's inputs, ``check_bools=False`` when the
    body is known to hold no bool."""
    name = signature_name(document)
    inputs = signature_inputs(name)
    if not inputs:
        raise invalid_argument(f"Failed to get input map for signature: {name or 'DEFAULT'}")
    arrays: dict[str, np.ndarray] = {}
    if "instances" in document:
        if "inputs" in document:
            raise json_value_error(document, "Not formatted correctly expecting only one of "
                                             "'inputs' or 'instances' keys to exist ")
        instances = document["instances"]
        if not isinstance(instances, list):
            raise json_value_error(document, "Expecting 'instances' to be an list/array")
        if not instances:
            raise json_value_error(document, "No values in 'instances' array")
        _from_instances(arrays, instances, inputs, check_bools)
        return name, arrays, RequestFormat.ROW
    if "inputs" in document:
        _from_inputs(arrays, document["inputs"], inputs, check_bools)
        return name, arrays, RequestFormat.COLUMNAR
    raise invalid_argument("Missing 'inputs' or 'instances' key")


def _feature_error(name: str, feature: feature_pb2.Feature) -> ServingError:
    kind = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64"}.get(
        feature.WhichOneof("kind") or "", "UNKNOWN")
    return invalid_argument(f"Unexpected element type in feature: {name} expecting type: {kind}")


def _add_feature_value(value: Any, name: str, feature: feature_pb2.Feature) -> None:
    kind = feature.WhichOneof("kind")
    if type(value) is int and value < _INT64[0]:
        value = float(value)  # rapidjson holds it as a double
    if isinstance(value, bool) or (isinstance(value, int) and not isinstance(value, bool)):
        if kind not in (None, "int64_list"):
            raise _feature_error(name, feature)
        if not isinstance(value, bool) and value > _INT64[1]:
            raise invalid_argument(
                f"Feature: {name} has uint64_t element. Only int64_t is supported.")
        feature.int64_list.value.append(int(value))
    elif isinstance(value, float):
        if kind not in (None, "float_list"):
            raise _feature_error(name, feature)
        feature.float_list.value.append(value)
    elif isinstance(value, str) or _is_base64_object(value):
        if kind not in (None, "bytes_list"):
            raise _feature_error(name, feature)
        feature.bytes_list.value.append(
            value.encode("utf-8", "surrogateescape") if isinstance(value, str)
            else _decode_base64(value))
    else:
        raise invalid_argument(f"Feature: {name} has element with unexpected JSON type: "
                               f"{json_type_name(value)}")


def _fill_example(value: Any, example: example_pb2.Example) -> None:
    if not isinstance(value, dict):
        raise invalid_argument(
            f"Example must be JSON object but got JSON {json_type_name(value)}")
    for name, content in value.items():
        feature = feature_pb2.Feature()
        for item in content if isinstance(content, list) else [content]:
            _add_feature_value(item, name, feature)
        example.features.feature[proto_string(name)].CopyFrom(feature)


def fill_examples_request(document: dict, request: Any) -> None:
    """FillClassificationRequestFromJson / FillRegressionRequestFromJson."""
    request.model_spec.signature_name = signature_name(document)
    has_context = "context" in document
    examples_input = request.input
    if has_context:
        _fill_example(document["context"], examples_input.example_list_with_context.context)
    examples = document.get("examples")
    if "examples" not in document:
        raise json_value_error(document, "When method is classify, key 'examples' is expected "
                                         "and was not found")
    if not isinstance(examples, list):
        raise json_value_error(document, "Expecting 'examples' value to be an list/array")
    if not examples:
        raise json_value_error(document, "'examples' value is an empty array")
    target = (examples_input.example_list_with_context.examples if has_context
              else examples_input.example_list.examples)
    for value in examples:
        _fill_example(value, target.add())
