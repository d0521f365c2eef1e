"""V2 datatypes <-> numpy and TensorFlow's DataType (the protocol's "Tensor Data Types" table;
BF16 as Triton names it)."""

from __future__ import annotations

import numpy as np

from pyserving.client import tensors as tf_types

try:  # TensorFlow's dependency; needed only for BF16 tensors
    from ml_dtypes import bfloat16
except ImportError:  # pragma: no cover - the server always has TensorFlow, so ml_dtypes
    bfloat16 = None

BYTES = "BYTES"
BF16 = "BF16"

# V2 name -> TensorFlow DataType enum.
TF_DTYPES: dict[str, int] = {
    "BOOL": tf_types.DT_BOOL,
    "UINT8": tf_types.DT_UINT8, "UINT16": tf_types.DT_UINT16,
    "UINT32": tf_types.DT_UINT32, "UINT64": tf_types.DT_UINT64,
    "INT8": tf_types.DT_INT8, "INT16": tf_types.DT_INT16,
    "INT32": tf_types.DT_INT32, "INT64": tf_types.DT_INT64,
    "FP16": tf_types.DT_HALF, "FP32": tf_types.DT_FLOAT, "FP64": tf_types.DT_DOUBLE,
    BYTES: tf_types.DT_STRING, BF16: tf_types.DT_BFLOAT16,
}
V2_NAMES: dict[int, str] = {enum: name for name, enum in TF_DTYPES.items()}

# V2 name -> little-endian numpy dtype of its raw (binary) form; BYTES has none.
NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
if bfloat16 is not None:
    NUMPY_DTYPES[BF16] = np.dtype(bfloat16)


def v2_name(tf_dtype: int) -> str:
    """The V2 datatype of a TensorFlow DataType; types V2 cannot carry (complex, quantized,
    resource, variant) are named by TensorFlow's name in capitals, so metadata still shows
    them and a request naming them fails the datatype check."""
    name = V2_NAMES.get(tf_dtype)
    if name is not None:
        return name
    return tf_types.DTYPE_NAMES.get(tf_dtype, f"DT_{tf_dtype}").upper()


def v2_name_of_array(array: np.ndarray) -> str:
    if array.dtype.kind in "OSU":
        return BYTES
    return v2_name(tf_types.dtype_enum_for(array))
