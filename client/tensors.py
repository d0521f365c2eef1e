"""numpy <-> TensorProto conversion, shared by the server and the client.

The functions take and fill any ``tensorflow.TensorProto`` message class (TensorFlow's own or
the client's generated one), so this module needs numpy only. Decoding follows TensorFlow's
``Tensor::FromProto``: an empty tensor reads no values; else ``tensor_content`` when present
(its exact size), else the typed ``*_val`` field, where fewer values than elements repeat the
last one, none mean zeros and extra ones are dropped. Encoding follows ``AsProtoField`` (every
value in the typed field) and ``AsProtoTensorContent``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

try:  # bfloat16 comes with TensorFlow's dependency ml_dtypes; the client works without it.
    from ml_dtypes import bfloat16 as _bfloat16
except ImportError:  # pragma: no cover - exercised only in client-only installs
    _bfloat16 = None

# tensorflow.DataType values (tensorflow/core/framework/types.proto).
DT_INVALID, DT_FLOAT, DT_DOUBLE, DT_INT32, DT_UINT8, DT_INT16, DT_INT8 = 0, 1, 2, 3, 4, 5, 6
DT_STRING, DT_COMPLEX64, DT_INT64, DT_BOOL, DT_QINT8, DT_QUINT8, DT_QINT32 = 7, 8, 9, 10, 11, 12, 13
DT_BFLOAT16, DT_QINT16, DT_QUINT16, DT_UINT16, DT_COMPLEX128, DT_HALF = 14, 15, 16, 17, 18, 19
DT_RESOURCE, DT_VARIANT, DT_UINT32, DT_UINT64 = 20, 21, 22, 23

DTYPE_NAMES = {
    DT_FLOAT: "float", DT_DOUBLE: "double", DT_INT32: "int32", DT_UINT8: "uint8",
    DT_INT16: "int16", DT_INT8: "int8", DT_STRING: "string", DT_COMPLEX64: "complex64",
    DT_INT64: "int64", DT_BOOL: "bool", DT_QINT8: "qint8", DT_QUINT8: "quint8",
    DT_QINT32: "qint32", DT_BFLOAT16: "bfloat16", DT_QINT16: "qint16", DT_QUINT16: "quint16",
    DT_UINT16: "uint16", DT_COMPLEX128: "complex128", DT_HALF: "half", DT_RESOURCE: "resource",
    DT_VARIANT: "variant", DT_UINT32: "uint32", DT_UINT64: "uint64",
}

# Largest tensor one request may decode to; a proto can declare far more than it carries.
DEFAULT_MAX_DECODED_BYTES = 2**31
_MAX_DIMS = 64  # numpy's limit; TensorFlow allows 254
_MAX_NUMPY_BYTES = np.iinfo(np.intp).max
_MAX_ELEMENTS = 2**63 - 1  # TensorShape's limit: a larger product is not a shape
_LITTLE_ENDIAN = sys.byteorder == "little"  # wire order of tensor_content and packed fields


class TensorParseError(ValueError):
    """The proto does not describe a tensor TensorFlow could build."""


class TensorTooLargeError(TensorParseError):
    """A valid tensor whose decoded size is over the caller's limit (checked before any
    allocation: a few bytes of proto can declare terabytes)."""

    def __init__(self, shape: tuple[int, ...], dtype_name: str, nbytes: int,
                 max_bytes: int) -> None:
        super().__init__(f"{dtype_name} tensor of shape {list(shape)} needs {nbytes} bytes, "
                         f"more than {max_bytes}")
        self.shape = shape
        self.dtype_name = dtype_name
        self.nbytes = nbytes


@dataclass(frozen=True)
class _Codec:
    """How one DataType maps to numpy and to its TensorProto typed field."""

    numpy_dtype: np.dtype
    field: str
    wire: np.dtype  # element type of the typed field; narrower values wrap like C++ casts
    packed_tag: bytes = b""  # key of a fixed-width packed field, filled from raw bytes
    view: np.dtype | None = None  # typed-field representation when it differs (half bits)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _packed_tag(field_number: int) -> bytes:
    return _varint(field_number << 3 | 2)


def _codecs() -> dict[int, _Codec]:
    f32, f64, i32 = np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.int32)
    u16 = np.dtype(np.uint16)
    table = {
        DT_FLOAT: _Codec(f32, "float_val", f32, _packed_tag(5)),
        DT_DOUBLE: _Codec(f64, "double_val", f64, _packed_tag(6)),
        DT_INT32: _Codec(i32, "int_val", i32),
        DT_UINT8: _Codec(np.dtype(np.uint8), "int_val", i32),
        DT_INT16: _Codec(np.dtype(np.int16), "int_val", i32),
        DT_INT8: _Codec(np.dtype(np.int8), "int_val", i32),
        DT_UINT16: _Codec(u16, "int_val", i32),
        DT_QINT8: _Codec(np.dtype(np.int8), "int_val", i32),
        DT_QUINT8: _Codec(np.dtype(np.uint8), "int_val", i32),
        DT_QINT16: _Codec(np.dtype(np.int16), "int_val", i32),
        DT_QUINT16: _Codec(u16, "int_val", i32),
        DT_QINT32: _Codec(i32, "int_val", i32),
        DT_INT64: _Codec(np.dtype(np.int64), "int64_val", np.dtype(np.int64)),
        DT_UINT32: _Codec(np.dtype(np.uint32), "uint32_val", np.dtype(np.uint32)),
        DT_UINT64: _Codec(np.dtype(np.uint64), "uint64_val", np.dtype(np.uint64)),
        DT_BOOL: _Codec(np.dtype(np.bool_), "bool_val", np.dtype(np.bool_)),
        DT_HALF: _Codec(np.dtype(np.float16), "half_val", i32, view=u16),
        DT_COMPLEX64: _Codec(np.dtype(np.complex64), "scomplex_val", f32, _packed_tag(9),
                             view=f32),
        DT_COMPLEX128: _Codec(np.dtype(np.complex128), "dcomplex_val", f64, _packed_tag(12),
                              view=f64),
        DT_STRING: _Codec(np.dtype(object), "string_val", np.dtype(object)),
    }
    if _bfloat16 is not None:
        table[DT_BFLOAT16] = _Codec(np.dtype(_bfloat16), "half_val", i32, view=u16)
    return table


_CODECS = _codecs()
_DTYPE_BY_NUMPY: dict[np.dtype, int] = {}
for _enum in (DT_FLOAT, DT_DOUBLE, DT_INT32, DT_UINT8, DT_INT16, DT_INT8, DT_UINT16, DT_INT64,
              DT_UINT32, DT_UINT64, DT_BOOL, DT_HALF, DT_COMPLEX64, DT_COMPLEX128, DT_STRING,
              DT_BFLOAT16):
    if _enum in _CODECS:
        _DTYPE_BY_NUMPY[_CODECS[_enum].numpy_dtype] = _enum


def numpy_dtype_for(dtype_enum: int) -> np.dtype:
    """The numpy dtype that holds values of a tensorflow.DataType."""
    try:
        return _CODECS[dtype_enum].numpy_dtype
    except KeyError:
        raise TensorParseError(f"unsupported dtype {dtype_enum}") from None


def dtype_enum_for(array: np.ndarray) -> int:
    """The tensorflow.DataType of a numpy array (bytes and str arrays are DT_STRING)."""
    dtype = array.dtype
    if dtype.kind in "SUO":
        return DT_STRING
    try:
        return _DTYPE_BY_NUMPY[dtype if dtype.isnative else dtype.newbyteorder("=")]
    except KeyError:
        raise TypeError(f"numpy dtype {dtype} has no TensorFlow DataType") from None


def shape_of(proto: Any) -> tuple[int, ...]:
    """The dims of a TensorProto, validated the way TensorShape does it.

    Like TensorFlow, ``unknown_rank`` is ignored when building a tensor: the dims are used as
    they are (none means a scalar).
    """
    dims = tuple(d.size for d in proto.tensor_shape.dim)
    if len(dims) > _MAX_DIMS:
        raise TensorParseError(f"tensor has {len(dims)} dimensions, more than {_MAX_DIMS}")
    for size in dims:
        if size < 0:
            raise TensorParseError(f"negative dimension {size}")
    return dims


def ndarray_from_tensor_proto(proto: Any, *,
                              max_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> np.ndarray:
    """Decode a TensorProto into a numpy array; raises TensorParseError when it is invalid."""
    codec = _CODECS.get(proto.dtype)
    if codec is None:
        name = DTYPE_NAMES.get(proto.dtype, str(proto.dtype))
        raise TensorParseError(f"unsupported dtype {name}")
    shape = shape_of(proto)
    itemsize = codec.numpy_dtype.itemsize
    count = span = 1
    for size in shape:
        count *= size
        span *= size or 1
    if count > _MAX_ELEMENTS:
        raise TensorParseError(f"tensor of shape {list(shape)} has more than 2**63-1 elements")
    if count * itemsize > max_bytes:
        raise TensorTooLargeError(shape, DTYPE_NAMES[proto.dtype], count * itemsize, max_bytes)
    if count == 0:  # TensorFlow reads neither field of an empty tensor
        if span * itemsize > _MAX_NUMPY_BYTES:
            raise TensorParseError(f"tensor of shape {list(shape)} is too large for numpy")
        return np.empty(shape, dtype=codec.numpy_dtype)
    content = proto.tensor_content
    if content:
        return _from_content(content, codec, shape, count)
    return _from_typed_field(proto, codec, shape, count)


def _from_content(content: bytes, codec: _Codec, shape: tuple[int, ...],
                  count: int) -> np.ndarray:
    if codec.numpy_dtype.kind == "O":
        return _decode_string_list(content, count).reshape(shape)
    if len(content) != count * codec.numpy_dtype.itemsize:
        raise TensorParseError("tensor_content size does not match the shape")
    if codec.numpy_dtype.kind == "b" and content.translate(None, b"\0\1"):
        raise TensorParseError("bool tensor_content holds bytes other than 0 and 1")
    return np.frombuffer(content, dtype=codec.numpy_dtype).reshape(shape)


def _from_typed_field(proto: Any, codec: _Codec, shape: tuple[int, ...],
                      count: int) -> np.ndarray:
    values = getattr(proto, codec.field)
    if codec.numpy_dtype.kind == "O":
        flat = np.empty(len(values), dtype=object)
        flat[:] = list(values)
    else:
        # np.array reads a long repeated field fast, but a list first is faster for a few values.
        flat = np.array(values if len(values) > 32 else list(values), dtype=codec.wire)
        if codec.numpy_dtype.kind == "c":  # (re, im) pairs; an unpaired last value is dropped
            flat = flat[: len(flat) // 2 * 2].view(codec.numpy_dtype)
        elif codec.view is not None:  # half and bfloat16 bits, truncated to 16 like C++
            flat = flat.astype(codec.view).view(codec.numpy_dtype)
        else:
            flat = flat.astype(codec.numpy_dtype, copy=False)
    given = flat.shape[0]
    if given >= count:
        return flat[:count].reshape(shape)
    if given == 0:
        if codec.numpy_dtype.kind == "O":
            filled = np.empty(count, dtype=object)
            filled.fill(b"")
            return filled.reshape(shape)
        return np.zeros(shape, dtype=codec.numpy_dtype)
    filled = np.empty(count, dtype=codec.numpy_dtype)
    filled[:given] = flat
    filled[given:] = flat[-1]
    return filled.reshape(shape)


def _decode_string_list(content: bytes, count: int) -> np.ndarray:
    """TensorFlow's DecodeStringList: all varint32 lengths first, then exactly those bytes."""
    lengths = []
    pos = 0
    total = 0
    for _ in range(count):
        length, shift = 0, 0
        while True:
            if pos >= len(content) or shift > 28:
                raise TensorParseError("malformed string tensor_content")
            byte = content[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        length &= 0xFFFFFFFF  # GetVarint32 keeps the low 32 bits of a 5-byte varint
        lengths.append(length)
        total += length
    if pos + total != len(content):
        raise TensorParseError("malformed string tensor_content")
    out = np.empty(count, dtype=object)
    for i, length in enumerate(lengths):
        out[i] = content[pos:pos + length]
        pos += length
    return out


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytearray, memoryview, np.bytes_)):
        return bytes(value)
    raise TypeError(f"string tensors hold bytes or str, not {type(value).__name__}")


def fill_tensor_proto(proto: Any, array: np.ndarray, *, as_content: bool = False,
                      dtype_enum: int | None = None) -> None:
    """Fill an empty TensorProto from an array: typed ``*_val`` fields, or ``tensor_content``."""
    array = np.asarray(array)
    if dtype_enum is None:
        dtype_enum = dtype_enum_for(array)
    codec = _CODECS.get(dtype_enum)
    if codec is None:
        raise TypeError(f"cannot encode dtype {DTYPE_NAMES.get(dtype_enum, dtype_enum)}")
    proto.dtype = dtype_enum
    shape = proto.tensor_shape
    shape.SetInParent()  # TensorFlow sets it for scalars too
    for size in array.shape:
        shape.dim.add().size = size
    if codec.numpy_dtype.kind == "O":
        strings = [_as_bytes(v) for v in array.ravel().tolist()]
        if as_content:
            proto.tensor_content = b"".join(_varint(len(s)) for s in strings) + b"".join(strings)
        else:
            proto.string_val.extend(strings)
        return
    if array.dtype != codec.numpy_dtype:
        array = array.astype(codec.numpy_dtype)
    if as_content:
        proto.tensor_content = array.tobytes()  # C order, whatever the strides
        return
    flat = array.reshape(-1)
    if codec.view is not None:
        flat = np.ascontiguousarray(flat).view(codec.view)
    if codec.packed_tag:
        raw = (flat if _LITTLE_ENDIAN else flat.astype(flat.dtype.newbyteorder("<"))).tobytes()
        if raw:
            proto.MergeFromString(codec.packed_tag + _varint(len(raw)) + raw)
    else:
        getattr(proto, codec.field).extend(flat.tolist())


def make_tensor_proto(proto_class: Callable[[], Any], value: Any, *,
                      as_content: bool = False, dtype_enum: int | None = None) -> Any:
    """A new TensorProto holding ``value`` (array, list or scalar)."""
    proto = proto_class()
    array = as_tensor_array(value)
    fill_tensor_proto(proto, array, as_content=as_content, dtype_enum=dtype_enum)
    return proto


def as_tensor_array(value: Any) -> np.ndarray:
    """``value`` as the array make_tensor_proto encodes: an ndarray as it is, else typed by
    tf.make_tensor_proto's rules."""
    return value if isinstance(value, np.ndarray) else _to_array(value)


def _to_array(value: Any) -> np.ndarray:
    """Python values as tf.make_tensor_proto types them: float32, int32 when lossless, bytes."""
    array = np.asarray(value)
    if array.dtype.kind in "SU":  # keep bytes exactly; numpy's "S" drops trailing NULs
        objects = np.asarray(value, dtype=object)
        return np.vectorize(_as_bytes, otypes=[object])(objects) if objects.size else objects
    if isinstance(value, np.generic):
        return array
    if array.dtype == np.float64:
        return array.astype(np.float32)
    if array.dtype == np.int64:
        narrowed = array.astype(np.int32)
        if np.array_equal(narrowed, array):
            return narrowed
    return array
