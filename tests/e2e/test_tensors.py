"""client/tensors.py against TensorFlow itself: Tensor::FromProto, AsProtoField and
AsProtoTensorContent (through tf.io.parse_tensor / serialize_tensor) and tf.make_tensor_proto."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import descriptor_pb2
from tensorflow.core.framework import tensor_pb2, types_pb2

from dtype_samples import DTYPES, SHAPES, as_content_proto, assert_same, sample, tf_decode, wire
from pyserving.client.tensors import (
    TensorParseError,
    fill_tensor_proto,
    make_tensor_proto,
    ndarray_from_tensor_proto,
)

# (numpy dtype, tensorflow.DataType, typed field) for every dtype TF Serving accepts.










def tf_rejects(proto: tensor_pb2.TensorProto) -> bool:
    """Whether Tensor::FromProto fails (not ParseTensor's later dtype check)."""
    known = proto.dtype in types_pb2.DataType.values() and proto.dtype != types_pb2.DT_INVALID
    try:
        tf.io.parse_tensor(proto.SerializeToString(), proto.dtype if known else tf.float32)
    except tf.errors.InvalidArgumentError as error:
        return "Cannot parse tensor from proto" in error.message
    return False




def encoded(array: np.ndarray, *, as_content: bool) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto()
    fill_tensor_proto(proto, array, as_content=as_content)
    return proto


def typed_proto(name: str, shape: tuple[int, ...], values: list) -> tensor_pb2.TensorProto:
    _, dtype_enum, field = DTYPES[name]
    proto = tensor_pb2.TensorProto(dtype=dtype_enum)
    proto.tensor_shape.SetInParent()
    for size in shape:
        proto.tensor_shape.dim.add().size = size
    getattr(proto, field).extend(values)
    return proto




dtype_names = pytest.mark.parametrize("name", list(DTYPES))
shapes = pytest.mark.parametrize("shape", SHAPES, ids=str)


# Encoding.

@dtype_names
@shapes
def test_typed_fields_decode_in_tensorflow(name, shape):
    array = sample(name, shape)
    proto = encoded(array, as_content=False)
    field = DTYPES[name][2]
    assert [f.name for f, _ in proto.ListFields()] == (
        ["dtype", "tensor_shape", field] if array.size else ["dtype", "tensor_shape"])
    assert len(getattr(proto, field)) == array.size * (2 if array.dtype.kind == "c" else 1)
    assert_same(tf_decode(proto), array)
    assert_same(tf.make_ndarray(proto), array)
    assert_same(ndarray_from_tensor_proto(proto), array)


@dtype_names
@shapes
def test_tensor_content_is_tensorflows(name, shape):
    array = sample(name, shape)
    proto = encoded(array, as_content=True)
    assert [f.name for f, _ in proto.ListFields()] == (
        ["dtype", "tensor_shape", "tensor_content"] if array.size else ["dtype", "tensor_shape"])
    if array.dtype.kind != "O":
        assert wire(proto) == wire(as_content_proto(array))
        assert_same(tf.make_ndarray(proto), array)
    assert_same(tf_decode(proto), array)
    assert_same(ndarray_from_tensor_proto(proto), array)


@shapes
def test_string_typed_fields_are_tensorflows(shape):
    array = sample("string", shape)
    assert wire(encoded(array, as_content=False)) == wire(as_content_proto(array))


@dtype_names
@pytest.mark.parametrize("shape", [(), (1,), (3,), (2, 2)], ids=str)
def test_make_tensor_proto_of_arrays_is_tensorflows(name, shape):
    array = sample(name, shape)
    theirs = tf.make_tensor_proto(array)
    ours = make_tensor_proto(tensor_pb2.TensorProto, array, as_content=bool(theirs.tensor_content))
    assert wire(ours) == wire(theirs)


def test_encodes_non_contiguous_and_big_endian_arrays():
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    for array in (base.T, base[::2, ::-3], base.astype(">f4"), base.astype(">i8")):
        for as_content in (False, True):
            proto = encoded(array, as_content=as_content)
            native = array.astype(array.dtype.newbyteorder("="))
            assert_same(tf_decode(proto), np.ascontiguousarray(native))


def test_encodes_str_arrays_as_utf8():
    proto = encoded(np.array([["a", "\u00e9"], ["", "\u2603"]]), as_content=False)
    assert proto.dtype == types_pb2.DT_STRING
    assert_same(tf_decode(proto), np.array([[b"a", "\u00e9".encode()], [b"", "\u2603".encode()]],
                                           dtype=object))


def test_long_strings_use_multi_byte_lengths():
    array = np.array([b"y" * 300, b"", b"z" * 70000, bytes(range(256))], dtype=object)
    proto = encoded(array, as_content=True)
    assert proto.tensor_content.startswith(b"\xac\x02\x00\xf0\xa2\x04\x80\x02")
    assert_same(tf_decode(proto), array)
    assert_same(ndarray_from_tensor_proto(proto), array)


# Decoding.

@dtype_names
@shapes
def test_decodes_tensorflows_protos(name, shape):
    array = sample(name, shape)
    assert_same(ndarray_from_tensor_proto(tf.make_tensor_proto(array)), array)
    assert_same(ndarray_from_tensor_proto(as_content_proto(array)), array)


@dtype_names
@pytest.mark.parametrize("shape", [(5,), (2, 3), ()], ids=str)
@pytest.mark.parametrize("given", [0, 1, 2, 7])
def test_typed_field_value_count_follows_tensorflow(name, shape, given):
    """Fewer values repeat the last one, none mean zeros, extra ones are dropped."""
    values = list(getattr(encoded(sample(name, (7,)), as_content=False), DTYPES[name][2]))
    per_element = 2 if name.startswith("complex") else 1
    proto = typed_proto(name, shape, values[: given * per_element])
    assert_same(ndarray_from_tensor_proto(proto), tf_decode(proto))


@pytest.mark.parametrize("name", ["complex64", "complex128"])
@pytest.mark.parametrize("values", [[1.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0, 5.0]], ids=len)
def test_unpaired_complex_value_is_dropped(name, values):
    proto = typed_proto(name, (3,), values)
    assert_same(ndarray_from_tensor_proto(proto), tf_decode(proto))


@pytest.mark.parametrize("name, values", [
    ("uint8", [300, -1, 256]), ("int8", [200, -129, 127]), ("int16", [40000, -40000, 1]),
    ("uint16", [70000, -1, 65535]), ("half", [85360, -1, 65536 + 15360]),
    ("bfloat16", [0x13F80, -1, 0x3F80]),
], ids=lambda v: v if isinstance(v, str) else "")
def test_out_of_range_int_val_wraps_like_tensorflow(name, values):
    proto = typed_proto(name, (4,), values)
    assert_same(ndarray_from_tensor_proto(proto), tf_decode(proto))


def test_wrong_typed_field_means_zeros():
    proto = typed_proto("float", (2,), [])
    proto.int_val.extend([3, 4])
    assert_same(ndarray_from_tensor_proto(proto), np.zeros(2, np.float32))
    assert_same(tf_decode(proto), np.zeros(2, np.float32))


@pytest.mark.parametrize("name", ["float", "string", "bool", "int64"])
def test_tensor_content_wins_over_typed_field(name):
    array = sample(name, (3,))
    proto = encoded(array, as_content=True)
    field = DTYPES[name][2]
    getattr(proto, field).extend(getattr(encoded(sample(name, (5,))[2:], as_content=False), field))
    assert_same(ndarray_from_tensor_proto(proto), array)
    assert_same(tf_decode(proto), array)


@pytest.mark.parametrize("name", ["float", "string"])
def test_empty_tensor_ignores_its_content(name):
    proto = typed_proto(name, (0, 3), [])
    proto.tensor_content = b"\x05garbage"
    assert_same(ndarray_from_tensor_proto(proto), sample(name, (0, 3)))
    assert_same(tf_decode(proto), sample(name, (0, 3)))


def test_unknown_rank_is_ignored_like_tensorflow():
    scalar = typed_proto("float", (), [2.5])
    scalar.tensor_shape.unknown_rank = True
    assert_same(ndarray_from_tensor_proto(scalar), tf_decode(scalar))
    with_dims = typed_proto("float", (2,), [2.5])
    with_dims.tensor_shape.unknown_rank = True
    assert_same(ndarray_from_tensor_proto(with_dims), np.array([2.5, 2.5], np.float32))
    assert_same(tf_decode(with_dims), np.array([2.5, 2.5], np.float32))


def test_decoded_arrays_are_usable():
    proto = encoded(np.arange(6, dtype=np.int32).reshape(2, 3), as_content=True)
    assert ndarray_from_tensor_proto(proto).sum() == 15


# Malformed protos: rejected, as TensorFlow rejects them.

def _content(name: str, shape: tuple[int, ...], content: bytes) -> tensor_pb2.TensorProto:
    proto = typed_proto(name, shape, [])
    proto.tensor_content = content
    return proto


MALFORMED = {
    "negative dim": typed_proto("float", (2, -1), [1.0]),
    "content too short": _content("float", (2,), b"\x00" * 4),
    "content too long": _content("int32", (1,), b"\x00" * 8),
    "content not whole elements": _content("double", (1,), b"\x00" * 9),
    "invalid dtype": tensor_pb2.TensorProto(dtype=types_pb2.DT_INVALID, float_val=[1.0]),
    "unknown dtype": tensor_pb2.TensorProto(dtype=999, float_val=[1.0]),
    "unknown dtype no elements": tensor_pb2.TensorProto(dtype=999,
                                                         tensor_shape={"dim": [{"size": 0}]}),
    "bool content not 0 or 1": _content("bool", (3,), b"\x00\x01\x02"),
    "string content trailing bytes": _content("string", (1,), b"\x01ab"),
    "string content truncated": _content("string", (2,), b"\x01\x03abc"),
    "string content missing lengths": _content("string", (3,), b"\x01\x01ab"),
    "string content varint too long": _content("string", (1,), b"\x81\x80\x80\x80\x80\x01a"),
}


@pytest.mark.parametrize("proto", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_protos_raise(proto):
    with pytest.raises(TensorParseError):
        ndarray_from_tensor_proto(proto)
    assert tf_rejects(proto)


@pytest.mark.parametrize("proto", [typed_proto("float", (2**20, 2**20), [1.0]),
                                   _content("float", (2**20, 2**20), b"\x00" * 4),
                                   typed_proto("string", (2**30,), [b"x"]),
                                   typed_proto("float", (2**62, 2**62), [])],
                         ids=["typed", "content", "string", "overflowing"])
def test_declared_size_over_max_bytes_raises(proto):
    with pytest.raises(TensorParseError):
        ndarray_from_tensor_proto(proto)


def test_max_bytes_is_the_decoded_size():
    with pytest.raises(TensorParseError):
        ndarray_from_tensor_proto(typed_proto("float", (1025,), [1.0]), max_bytes=4096)
    fits = ndarray_from_tensor_proto(typed_proto("float", (1024,), [1.0]), max_bytes=4096)
    assert fits.size == 1024


def test_shapes_numpy_cannot_hold_raise():
    with pytest.raises(TensorParseError):
        ndarray_from_tensor_proto(typed_proto("float", (1,) * 65, [1.0]))
    with pytest.raises(TensorParseError):
        ndarray_from_tensor_proto(typed_proto("float", (0, 2**62, 2**62), []))
    assert ndarray_from_tensor_proto(typed_proto("float", (1,) * 64, [1.0])).ndim == 64


def test_string_varint_keeps_low_32_bits_like_tensorflow():
    proto = _content("string", (1,), b"\x81\x80\x80\x80\x10a")
    assert_same(ndarray_from_tensor_proto(proto), tf_decode(proto))


# make_tensor_proto of Python values types them as tf.make_tensor_proto does.

@pytest.mark.parametrize("value", [
    1.5, -0.0, [1.0, 2.5], [[1, 2.5], [3, 4]], 7, -3, [1, 2, 3], 2**40, [1, 2**40], True,
    [True, False], 1 + 2j, [1j, 2], "h\u00e9llo", b"\xff\x00", ["a", "\u2603", ""],
    [b"a\x00", b"", b"\x80"], [[b"x"], [b"yz"]], [], [[]], np.float64(2.0), np.int64(3),
    np.float16(1.5), np.uint16(9),
], ids=repr)
def test_make_tensor_proto_of_python_values(value):
    theirs = tf.make_tensor_proto(value)
    ours = make_tensor_proto(tensor_pb2.TensorProto, value,
                             as_content=bool(theirs.tensor_content))
    assert ours.dtype == theirs.dtype
    assert wire(ours) == wire(theirs)
    expected = tf.make_ndarray(theirs)
    if theirs.dtype == types_pb2.DT_STRING:
        expected = expected.astype(object)
    assert_same(ndarray_from_tensor_proto(ours), expected)


def test_make_tensor_proto_with_dtype_and_content():
    proto = make_tensor_proto(tensor_pb2.TensorProto, [1, 2, 3], dtype_enum=types_pb2.DT_HALF,
                              as_content=True)
    assert wire(proto) == wire(tf.make_tensor_proto([1, 2, 3], dtype=tf.half))


# The module needs numpy only: no TensorFlow, and any protobuf implementation.

CLIENT_ONLY = textwrap.dedent("""
    import json, sys
    import numpy as np
    from google.protobuf import descriptor_pool, descriptor_pb2, message_factory
    from google.protobuf.internal import api_implementation
    from pyserving.client import tensors

    pool = descriptor_pool.DescriptorPool()
    for serialized in json.loads(sys.argv[1]):
        pool.Add(descriptor_pb2.FileDescriptorProto.FromString(bytes.fromhex(serialized)))
    TensorProto = message_factory.GetMessageClass(pool.FindMessageTypeByName(
        "tensorflow.TensorProto"))
    out = {"protobuf": api_implementation.Type(),
           "tensorflow_imported": any(m.split(".")[0] == "tensorflow" for m in sys.modules)}
    arrays = [np.array([1.5, -2.0], np.float32), np.array([[1, 2]], np.int64),
              np.array([1 + 2j], np.complex128), np.array([b"", b"\\xff"], dtype=object),
              np.array([0.5], np.float16), np.array([True, False])]
    for as_content in (False, True):
        for array in arrays:
            proto = tensors.make_tensor_proto(TensorProto, array, as_content=as_content)
            back = tensors.ndarray_from_tensor_proto(TensorProto.FromString(
                proto.SerializeToString()))
            assert back.dtype == array.dtype and back.tolist() == array.tolist(), (array, back)
    wrapped = TensorProto(dtype=4, int_val=[300, -1])
    wrapped.tensor_shape.dim.add().size = 3
    out["wrapped"] = tensors.ndarray_from_tensor_proto(wrapped).tolist()
    print(json.dumps(out))
""")


@pytest.mark.parametrize("implementation", ["python", "upb"])
def test_works_without_tensorflow(implementation, monkeypatch):
    ordered, added = [], set()

    def add(file):  # dependencies first, as a descriptor pool needs them
        if file.name not in added:
            for dependency in file.dependencies:
                add(dependency)
            proto = descriptor_pb2.FileDescriptorProto()
            file.CopyToProto(proto)
            ordered.append(proto.SerializeToString().hex())
            added.add(file.name)

    add(tensor_pb2.DESCRIPTOR)
    monkeypatch.setenv("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", implementation)
    result = subprocess.run([sys.executable, "-c", CLIENT_ONLY, json.dumps(ordered)],
                            capture_output=True, text=True, timeout=120, check=True)
    out = json.loads(result.stdout)
    assert out == {"protobuf": implementation, "tensorflow_imported": False,
                   "wrapped": [44, 255, 255]}
