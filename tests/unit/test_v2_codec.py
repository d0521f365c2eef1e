"""server/v2/codec.py and the V2 request pieces without TensorFlow or sockets."""

from __future__ import annotations

import struct

import grpc
import numpy as np
import pytest

from pyserving.server.errors import ServingError
from pyserving.server.v2 import codec, dtypes
from pyserving.server.v2.inference import model_spec


def invalid(call, *args) -> str:
    with pytest.raises(ServingError) as caught:
        call(*args)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    return caught.value.message


def test_json_data_may_be_flat_or_nested():
    flat = codec.array_from_json("x", "FP32", [2, 2], [1, 2, 3, 4])
    nested = codec.array_from_json("x", "FP32", [2, 2], [[1, 2], [3, 4]])
    assert flat.dtype == np.float32 and flat.tolist() == nested.tolist() == [[1, 2], [3, 4]]


def test_json_integers_are_exact_over_the_whole_range():
    top = 2**64 - 1
    assert codec.array_from_json("x", "UINT64", [2], [0, top]).tolist() == [0, top]
    low = -(2**63)
    assert codec.array_from_json("x", "INT64", [1], [low]).tolist() == [low]
    assert "does not fit UINT64" in invalid(codec.array_from_json, "x", "UINT64", [1], [2**64])
    assert "does not fit UINT8" in invalid(codec.array_from_json, "x", "UINT8", [1], [-1])
    assert "expected INT32 values" in invalid(codec.array_from_json, "x", "INT32", [1], [1.0])


def test_json_bytes_are_utf8_text_and_bool_only_true_false():
    array = codec.array_from_json("x", "BYTES", [2], ["a", "é"])
    assert array.dtype == object and list(array) == [b"a", "é".encode()]
    assert "expected strings" in invalid(codec.array_from_json, "x", "BYTES", [1], [1])
    assert codec.array_from_json("x", "BOOL", [2], [True, False]).tolist() == [True, False]
    assert "expected BOOL" in invalid(codec.array_from_json, "x", "BOOL", [1], [0])
    assert "binary data" in invalid(codec.array_from_json, "x", "BF16", [1], [1.0])


def test_json_shapes_and_counts_are_checked():
    assert "invalid dimensions" in invalid(codec.array_from_json, "x", "FP32", [-1], [1])
    assert "invalid dimensions" in invalid(codec.array_from_json, "x", "FP32", [True], [1])
    assert "holds 3, 'data' has 2" in invalid(codec.array_from_json, "x", "FP32", [3], [1, 2])
    assert "ragged" in invalid(codec.array_from_json, "x", "FP32", [3], [[1, 2], [3]])
    assert "expected an array" in invalid(codec.array_from_json, "x", "FP32", [1], 1)
    assert "invalid datatype 'FP8'" in invalid(codec.array_from_json, "x", "FP8", [1], [1])


def test_raw_bytes_round_trip_and_framing_errors():
    values = np.array([b"", b"ab", bytes(range(256))], dtype=object)
    encoded = codec.raw_bytes(values, "BYTES")
    assert encoded[:4] == struct.pack("<I", 0)
    assert list(codec.array_from_raw("x", "BYTES", [3], encoded)) == list(values)
    assert "has no 4-byte length prefix" in invalid(codec.array_from_raw, "x", "BYTES", [4],
                                                    encoded)
    assert "bytes left after its 2 elements" in invalid(codec.array_from_raw, "x", "BYTES",
                                                        [2], encoded)
    assert "claims 5 bytes" in invalid(codec.array_from_raw, "x", "BYTES", [1],
                                       struct.pack("<I", 5) + b"ab")


def test_raw_fixed_width_sizes_and_bool_bytes_are_checked():
    array = np.arange(6, dtype=np.int16).reshape(2, 3)
    decoded = codec.array_from_raw("x", "INT16", [2, 3], array.tobytes())
    assert decoded.tolist() == array.tolist()
    assert codec.raw_bytes(decoded, "INT16") == array.tobytes()
    assert "expecting 12 bytes" in invalid(codec.array_from_raw, "x", "INT16", [2, 3], b"\0")
    assert "bytes must be 0 or 1" in invalid(codec.array_from_raw, "x", "BOOL", [1], b"\x02")


def test_json_output_data_is_flat_and_widens_half_floats():
    assert codec.json_data(np.array([[1, 2]], np.float16), "FP16").dtype == np.float32
    assert codec.json_data(np.array([b"\xff"], dtype=object), "BYTES") == ["\ufffd"]
    assert codec.json_data(np.array([[1, 2]], np.int8), "INT8").tolist() == [1, 2]


def test_tensorflow_types_without_a_v2_datatype_are_named_not_served():
    assert dtypes.v2_name(8) == "COMPLEX64"
    assert "no V2 encoding" in invalid(codec.raw_bytes, np.zeros(1, np.complex64), "COMPLEX64")


def test_versions_are_numbers_or_labels():
    assert model_spec("m", "3").version.value == 3
    assert model_spec("m", "canary").version_label == "canary"
    assert model_spec("m", "").WhichOneof("version_choice") is None
    assert "Failed to convert version" in invalid(model_spec, "m", str(2**63))
    assert "Missing model name" in invalid(model_spec, "", "1")
