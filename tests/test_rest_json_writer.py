"""rest_json_writer against rapidjson itself (python-rapidjson) and TF Serving's own test vectors.

The REST tests check the served bytes end to end; these check the writer's layout over many
shapes, where rapidjson's PrettyWriter is the reference TF Serving uses.
"""

from __future__ import annotations

import math
import struct

import numpy as np
import rapidjson
from hypothesis import given, settings
from hypothesis import strategies as st

from pyserving.server import rest_json_writer as writer

shapes = st.lists(st.integers(0, 3), max_size=4).map(tuple)


def _nested(flat: list, shape: tuple[int, ...]) -> object:
    if not shape:
        return flat[0]
    if shape[0] == 0:
        return []
    step = len(flat) // shape[0]
    return [_nested(flat[index * step:(index + 1) * step], shape[1:]) for index in range(shape[0])]


def _values(shape: tuple[int, ...]) -> list[int]:
    return list(range(-1, math.prod(shape) - 1)) if shape else [7]


@settings(max_examples=200, deadline=None, derandomize=True)
@given(shape=shapes)
def test_columnar_layout_is_pretty_writers(shape: tuple[int, ...]) -> None:
    values = _values(shape)
    value = writer.Tensor([str(item) for item in values], shape)
    assert writer.columnar_format({"y": value}) == \
        rapidjson.dumps({"outputs": _nested(values, shape)}, indent=4)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(first=shapes, second=shapes)
def test_columnar_layout_with_named_outputs_is_pretty_writers(first: tuple[int, ...],
                                                               second: tuple[int, ...]) -> None:
    texts = [f"t{index}" for index in range(math.prod(second))] if second else ["t"]
    outputs = {"a": writer.Tensor([str(item) for item in _values(first)], first),
               "b_bytes": writer.Tensor(texts, second, b64=True)}
    expected = {"outputs": {"a": _nested(_values(first), first),
                            "b_bytes": _nested([{"b64": text} for text in texts], second)}}
    assert writer.columnar_format(outputs) == rapidjson.dumps(expected, indent=4)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(shape=shapes, b64=st.booleans())
def test_single_line_tensor_is_pretty_writers_single_line_arrays(shape: tuple[int, ...],
                                                                 b64: bool) -> None:
    values = _values(shape)
    tokens = [f"s{item}" if b64 else str(item) for item in values]
    nested = _nested([{"b64": token} for token in tokens] if b64 else values, shape)
    expected = rapidjson.dumps([nested], indent=4, write_mode=rapidjson.WM_SINGLE_LINE_ARRAY)
    # the tensor as the only element of a root array: written at depth 1
    assert "[" + writer.tensor(writer.Tensor(tokens, shape, b64), 1, single_line=True) + "]" \
        == expected


def test_row_format_matches_tf_servings_documented_answer() -> None:
    value = writer.Tensor(["2.5", "3.0", "4.5"], (3,))
    assert writer.row_format({"y": value}, 3) == '{\n    "predictions": [2.5, 3.0, 4.5\n    ]\n}'
    assert writer.row_format({"y": writer.Tensor([], (0,))}, 0) == \
        '{\n    "predictions": []\n}'


def test_decimals_match_json_tensor_test_six_digit_precision() -> None:
    # json_tensor_test.cc FromJsonSingleFloatTensorSixDigitPrecision
    values = np.array([[9000000, 999999, 0.5], [0.0003, 0.00003, 555557.5]], dtype=np.float32)
    assert writer.decimal_tokens(values) == ["9e+06", "999999.0", "0.5", "0.0003", "3e-05",
                                             "555557.5"]


def test_decimals_of_doubles_use_seventeen_digits() -> None:
    values = np.array([1 / 3, 0.1, 2.0, -0.0, 1e300, float("nan"), float("-inf")])
    assert writer.decimal_tokens(values) == ["0.33333333333333331", "0.1", "2.0", "-0.0",
                                             "1e+300", "NaN", "-Infinity"]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(bits=st.integers(0, 2**32 - 1))
def test_float_decimals_read_back_exactly_and_use_six_digits_when_they_can(bits: int) -> None:
    value = np.array([struct.unpack("<f", struct.pack("<I", bits))[0]], dtype=np.float32)
    (token,) = writer.decimal_tokens(value)
    if not np.isfinite(value[0]):
        assert token in ("NaN", "Infinity", "-Infinity")
        return
    assert np.float32(token) == value[0] or (value[0] == 0 and float(token) == 0)
    six = "%g" % float(value[0])
    if np.float32(six) == value[0]:
        assert token in (six, six + ".0")
    assert "." in token or "e" in token


@settings(max_examples=300, deadline=None, derandomize=True)
@given(text=st.text(st.characters(exclude_categories=("Cs",))))
def test_strings_are_escaped_as_rapidjson_escapes_them(text: str) -> None:
    assert writer.quote(text) == rapidjson.dumps(text, ensure_ascii=False)


def test_bytes_that_are_not_utf8_go_out_as_they_are() -> None:
    raw = b"\xff\xfe ok"
    assert writer.encode_document(writer.quote(writer.text_of(raw))) == b'"' + raw + b'"'


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1)
    | st.text(st.characters(exclude_categories=("Cs",)), max_size=6),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=4), children, max_size=4), max_leaves=30)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(value=json_values)
def test_debug_string_is_rapidjsons_single_line_array_layout(value: object) -> None:
    from pyserving.server.rest_json_errors import debug_string

    expected = rapidjson.dumps(value, indent=4, write_mode=rapidjson.WM_SINGLE_LINE_ARRAY,
                               ensure_ascii=False)
    text = debug_string(value)
    if len(expected.encode()) < 256:
        assert text == expected
    else:  # JsonWriterWithLimit: whole pieces, until one reaches 256 bytes
        assert expected.startswith(text) and len(text.encode()) >= 256


def test_debug_string_doubles_are_rapidjsons() -> None:
    from pyserving.server.rest_json_errors import debug_string

    # rapidjson's Grisu2 + Prettify (python-rapidjson prints floats with Python's repr)
    assert debug_string([1.0, 0.1, 1e21, 1e20, 1.5e-7, 1e-6, -0.0, 5e-324, 2**64 + 0.0,
                         2**64, -2**63 - 1]) == \
        ("[1.0, 0.1, 1e21, 100000000000000000000.0, 1.5e-7, 0.000001, -0.0, 5e-324, "
         "18446744073709552000.0, 18446744073709552000.0, -9223372036854776000.0]")
