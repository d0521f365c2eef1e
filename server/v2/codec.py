"""V2 tensors <-> numpy arrays: JSON ``data``, the binary tensor data extension's raw bytes
(BYTES elements each prefixed by a 4-byte little-endian length, as Triton's
``SerializeByteTensor``) and gRPC's typed ``InferTensorContents``. No TensorProto between."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from pyserving.server.errors import invalid_argument
from pyserving.server.v2.dtypes import BF16, BYTES, NUMPY_DTYPES

_LENGTH = struct.Struct("<I")
_INTEGER_KINDS = "iu"
# the native-order dtype orjson serializes each datatype's JSON data in (made once, not per call)
_NATIVE_DTYPES = {name: dtype.newbyteorder("=") for name, dtype in NUMPY_DTYPES.items()}
# InferTensorContents' field for each datatype; FP16 and BF16 travel as raw bytes only.
CONTENTS_FIELDS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents",
    BYTES: "bytes_contents",
}


def element_count(name: str, shape: Sequence[Any]) -> int:
    """The number of elements a shape holds; every dimension must be a count (>= 0)."""
    count = 1
    for dim in shape:
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 0:
            raise invalid_argument(f"invalid shape for input '{name}': shape "
                                   f"{list(shape)} contains one or more invalid dimensions")
        count *= dim
    return count


def _numpy_dtype(name: str, datatype: str) -> np.dtype:
    dtype = NUMPY_DTYPES.get(datatype)
    if dtype is None:
        raise invalid_argument(f"invalid datatype '{datatype}' for input '{name}'")
    return dtype


def array_from_raw(name: str, datatype: str, shape: Sequence[int],
                   data: bytes | memoryview) -> np.ndarray:
    """An input sent as raw bytes (binary extension or gRPC raw_input_contents)."""
    count = element_count(name, shape)
    if datatype == BYTES:
        return _bytes_array(name, data, count).reshape(shape)
    dtype = _numpy_dtype(name, datatype)
    expected = count * dtype.itemsize
    if len(data) != expected:
        raise invalid_argument(f"unexpected size for input '{name}', expecting {expected} "
                               f"bytes for {datatype} {list(shape)} but got {len(data)}")
    array = np.frombuffer(data, dtype=dtype).reshape(shape)
    if datatype == "BOOL" and array.view(np.uint8).max(initial=0) > 1:
        raise invalid_argument(f"invalid BOOL data for input '{name}': bytes must be 0 or 1")
    return array


def _bytes_array(name: str, data: bytes | memoryview, count: int) -> np.ndarray:
    view = memoryview(data)
    elements = np.empty(count, dtype=object)
    offset = 0
    for index in range(count):
        if offset + 4 > len(view):
            raise invalid_argument(f"unexpected size for BYTES input '{name}': element {index} "
                                   f"of {count} has no 4-byte length prefix")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise invalid_argument(f"unexpected size for BYTES input '{name}': element {index} "
                                   f"claims {length} bytes, {len(view) - offset} are left")
        elements[index] = bytes(view[offset:offset + length])
        offset += length
    if offset != len(view):
        raise invalid_argument(f"unexpected size for BYTES input '{name}': {len(view) - offset} "
                               f"bytes left after its {count} elements")
    return elements


def array_from_json(name: str, datatype: str, shape: Sequence[int], data: Any) -> np.ndarray:
    """An input's JSON ``data``: flat or nested in row-major order, as the protocol allows;
    BOOL takes only true/false, integer types only integers, BYTES only strings."""
    count = element_count(name, shape)
    if not isinstance(data, list):
        raise invalid_argument(f"Unable to parse 'data' of input '{name}': expected an array")
    if datatype == BYTES:
        flat = _flatten(data) if data and isinstance(data[0], list) else data
        if not all(isinstance(item, str) for item in flat):
            raise invalid_argument(f"Unable to parse 'data' of BYTES input '{name}': "
                                   "expected strings")
        array = np.empty(len(flat), dtype=object)
        array[:] = [item.encode("utf-8") for item in flat]
    else:
        if datatype == BF16:
            raise invalid_argument(f"BF16 input '{name}' can only be sent as binary data")
        dtype = _numpy_dtype(name, datatype)
        try:
            loose = np.asarray(data)
        except ValueError:
            raise invalid_argument(f"Unable to parse 'data' of input '{name}': ragged "
                                   "nested arrays") from None
        if loose.dtype.kind in "fO" and dtype.kind in _INTEGER_KINDS:
            # numpy reads integers past int64 (uint64's top half) as floats or objects
            flat = _flatten(data)
            if all(type(item) is int for item in flat):
                loose = _exact_integers(name, datatype, flat, dtype)
        if loose.size and not _json_kind_fits(loose.dtype.kind, dtype.kind):
            raise invalid_argument(f"Unable to parse 'data' of input '{name}': expected "
                                   f"{datatype} values")
        try:
            array = loose.astype(dtype)
        except (OverflowError, ValueError):
            raise invalid_argument(f"Unable to parse 'data' of input '{name}': a value does "
                                   f"not fit {datatype}") from None
        if dtype.kind in _INTEGER_KINDS and loose.size and not np.array_equal(array, loose):
            raise invalid_argument(f"Unable to parse 'data' of input '{name}': a value does "
                                   f"not fit {datatype}")
        array = array.ravel()
    if array.size != count:
        raise invalid_argument(f"unexpected number of elements for input '{name}': shape "
                               f"{list(shape)} holds {count}, 'data' has {array.size}")
    return array.reshape(shape)


def _exact_integers(name: str, datatype: str, values: list[int],
                    dtype: np.dtype) -> np.ndarray:
    try:
        return np.array(values, dtype=dtype)
    except OverflowError:
        raise invalid_argument(f"Unable to parse 'data' of input '{name}': a value does "
                               f"not fit {datatype}") from None


def _json_kind_fits(sent: str, wanted: str) -> bool:
    """Whether JSON values numpy read as kind ``sent`` may fill a tensor of kind ``wanted``."""
    if wanted == "b":
        return sent == "b"
    if wanted in _INTEGER_KINDS:
        return sent in _INTEGER_KINDS
    return sent in "iuf"  # floats take integers too


def _flatten(data: list[Any]) -> list[Any]:
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def array_from_contents(name: str, datatype: str, shape: Sequence[int],
                        contents: Any) -> np.ndarray:
    """A gRPC input's typed ``contents`` (InferTensorContents)."""
    count = element_count(name, shape)
    field = CONTENTS_FIELDS.get(datatype)
    if field is None:
        if datatype in NUMPY_DTYPES:
            raise invalid_argument(f"{datatype} input '{name}' can only be sent in "
                                   "raw_input_contents")
        raise invalid_argument(f"invalid datatype '{datatype}' for input '{name}'")
    values = getattr(contents, field)
    if len(values) != count:
        raise invalid_argument(f"unexpected number of elements for input '{name}': shape "
                               f"{list(shape)} holds {count}, {field} has {len(values)}")
    if datatype == BYTES:
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    dtype = NUMPY_DTYPES[datatype]
    try:
        return np.array(values, dtype=dtype).reshape(shape)
    except OverflowError:
        raise invalid_argument(f"a value of {field} does not fit {datatype} in input "
                               f"'{name}'") from None


def raw_bytes(array: np.ndarray, datatype: str) -> bytes:
    """An output as the binary extension and raw_output_contents carry it."""
    if datatype == BYTES:
        parts = []
        for item in array.ravel():
            value = item if isinstance(item, bytes) else str(item).encode("utf-8")
            parts.append(_LENGTH.pack(len(value)))
            parts.append(value)
        return b"".join(parts)
    dtype = NUMPY_DTYPES.get(datatype)
    if dtype is None:
        raise invalid_argument(f"output datatype {datatype} has no V2 encoding")
    return np.ascontiguousarray(array, dtype=dtype).tobytes()


def json_data(array: np.ndarray, datatype: str) -> Any:
    """An output's JSON ``data``, flat in row-major order as Triton writes it: a numpy array
    orjson serializes itself, or a list (BYTES as UTF-8 text, FP16/BF16 widened)."""
    if datatype == BYTES:
        return [item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
                for item in array.ravel()]
    if datatype in ("FP16", BF16):
        return np.ascontiguousarray(array.ravel(), dtype=np.float32)
    dtype = _NATIVE_DTYPES.get(datatype)
    if dtype is None:
        raise invalid_argument(f"output datatype {datatype} has no V2 encoding")
    return np.ascontiguousarray(array.ravel(), dtype=dtype)
