"""Every dtype TF Serving accepts, sample arrays of it, and TensorFlow's own encodings and
decodings of them (the reference the tensor conversion and the round trip tests compare to)."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2

DTYPES = {
    "float": (np.float32, types_pb2.DT_FLOAT, "float_val"),
    "double": (np.float64, types_pb2.DT_DOUBLE, "double_val"),
    "int8": (np.int8, types_pb2.DT_INT8, "int_val"),
    "int16": (np.int16, types_pb2.DT_INT16, "int_val"),
    "int32": (np.int32, types_pb2.DT_INT32, "int_val"),
    "int64": (np.int64, types_pb2.DT_INT64, "int64_val"),
    "uint8": (np.uint8, types_pb2.DT_UINT8, "int_val"),
    "uint16": (np.uint16, types_pb2.DT_UINT16, "int_val"),
    "uint32": (np.uint32, types_pb2.DT_UINT32, "uint32_val"),
    "uint64": (np.uint64, types_pb2.DT_UINT64, "uint64_val"),
    "bool": (np.bool_, types_pb2.DT_BOOL, "bool_val"),
    "string": (object, types_pb2.DT_STRING, "string_val"),
    "half": (np.float16, types_pb2.DT_HALF, "half_val"),
    "bfloat16": (ml_dtypes.bfloat16, types_pb2.DT_BFLOAT16, "half_val"),
    "complex64": (np.complex64, types_pb2.DT_COMPLEX64, "scomplex_val"),
    "complex128": (np.complex128, types_pb2.DT_COMPLEX128, "dcomplex_val"),
}


SHAPES = [(), (0,), (3,), (2, 3), (2, 0, 3), (1, 1, 1, 4)]


STRINGS = [b"", b"abc", b"\xff\xfe\x00", "h\u00e9llo \u2603".encode(), b"\x00", b"x" * 200,
           b"\x80"]


def _pool(dtype: np.dtype) -> list:
    """Values worth round-tripping: extremes, signed zeros, inf and nan, non-UTF-8 bytes."""
    if dtype.kind == "O":
        return STRINGS
    if dtype.kind == "b":
        return [True, False, False, True]
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return [0, 1, info.max, info.min, 7, info.max - 1, 100]
    real = np.float32 if dtype == np.complex64 else np.float64 if dtype.kind == "c" else dtype
    info = ml_dtypes.finfo(real)
    floats = [0.0, -0.0, 1.5, -2.25, math.inf, -math.inf, math.nan, float(info.max),
              float(info.min), float(info.tiny), 1 / 3]
    if dtype.kind == "c":
        return [complex(a, b) for a, b in zip(floats, reversed(floats), strict=False)]
    return floats


def sample(name: str, shape: tuple[int, ...]) -> np.ndarray:
    dtype = np.dtype(DTYPES[name][0])
    pool = _pool(dtype)
    count = math.prod(shape)
    flat = np.empty(count, dtype=object)
    flat[:] = [pool[i % len(pool)] for i in range(count)]
    return flat.astype(dtype).reshape(shape)


def assert_same(actual: np.ndarray, expected: np.ndarray) -> None:
    """Same dtype, shape and values; numbers compared bit for bit (nan, -0.0 included)."""
    actual = np.asarray(actual, dtype=object if expected.dtype.kind == "O" else None)
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    if expected.dtype.kind == "O":
        assert actual.tolist() == expected.tolist()
    else:
        assert actual.tobytes() == expected.tobytes()


def tf_decode(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """Tensor::FromProto, through the ParseTensor kernel."""
    dtype = tf.as_dtype(proto.dtype)
    value = tf.io.parse_tensor(proto.SerializeToString(), dtype).numpy()
    return np.asarray(value, dtype=object if dtype == tf.string else None)


def as_content_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    """Tensor::AsProtoTensorContent (strings: AsProtoField), through the SerializeTensor kernel."""
    proto = tensor_pb2.TensorProto()
    proto.ParseFromString(tf.io.serialize_tensor(tf.constant(array)).numpy())
    return proto


def wire(proto: tensor_pb2.TensorProto) -> bytes:
    return proto.SerializeToString(deterministic=True)
