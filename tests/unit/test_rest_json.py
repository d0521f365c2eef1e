"""REST JSON in and out, without a server: every float32/float64 output reads back to its exact
bits (NaN and the infinities as TF Serving's tokens), answers are valid JSON, and request bodies
parse as the json module (lenient literals included) or fail with rapidjson's text."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyserving.client import tensors
from pyserving.server.errors import ServingError
from pyserving.server.rest.json_parse import debug_string, may_hold_bools, parse_json
from pyserving.server.rest.request_json import RequestFormat
from pyserving.server.rest.response_json import error_json, predict_json

# 100 examples keep tests/unit within 10 s; tests/e2e/test_fuzz_rest.py fuzzes the server.
FUZZ = settings(max_examples=100, deadline=None, derandomize=True)
FLOAT32_BITS = st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=20)
FLOAT64_BITS = st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=20)


def _read_back(payload: bytes, key: str = "predictions") -> list:
    """The answer as a strict reader reads it: UTF-8, with NaN/Infinity/-Infinity tokens."""
    return json.loads(payload.decode("utf-8"))[key]


@FUZZ
@given(bits=FLOAT32_BITS, fmt=st.sampled_from(list(RequestFormat)))
def test_float32_outputs_read_back_to_the_same_float32(bits: list[int],
                                                       fmt: RequestFormat) -> None:
    values = np.array(bits, dtype=np.uint32).view(np.float32)
    payload = predict_json([("y", values, tensors.DT_FLOAT)], fmt)
    key = "predictions" if fmt is RequestFormat.ROW else "outputs"
    back = np.array(_read_back(payload, key), dtype=np.float32)
    finite = np.isfinite(values)
    assert back[finite].view(np.uint32).tolist() == values[finite].view(np.uint32).tolist()
    np.testing.assert_array_equal(back, values)  # NaN, Infinity and -Infinity too


@FUZZ
@given(bits=FLOAT64_BITS)
def test_float64_outputs_read_back_to_the_same_float64(bits: list[int]) -> None:
    values = np.array(bits, dtype=np.uint64).view(np.float64)
    back = np.array(_read_back(predict_json([("y", values, tensors.DT_DOUBLE)],
                                            RequestFormat.ROW)), dtype=np.float64)
    finite = np.isfinite(values)
    assert back[finite].view(np.uint64).tolist() == values[finite].view(np.uint64).tolist()
    np.testing.assert_array_equal(back, values)


@FUZZ
@given(bits=st.integers(0, 2**32 - 1))
def test_float32_is_written_with_float32s_shortest_digits(bits: int) -> None:
    value = np.array([bits], dtype=np.uint32).view(np.float32)
    payload = predict_json([("y", value, tensors.DT_FLOAT)], RequestFormat.COLUMNAR)
    token = payload.decode()[len('{"outputs":['):-2]
    if math.isfinite(value[0]):
        assert np.float32(token) == value[0] and len(token) <= len(repr(float(value[0])))
    else:
        assert token in ("NaN", "Infinity", "-Infinity")


def test_non_finite_values_are_tf_servings_tokens_in_every_layout() -> None:
    nan, inf = float("nan"), float("inf")
    x = np.array([[nan, 1.5], [inf, -inf]], dtype=np.float32)
    text = np.array([b"a", b"\xff"], dtype=object)
    row = predict_json([("x", x, tensors.DT_FLOAT), ("t_bytes", text, tensors.DT_STRING)],
                       RequestFormat.ROW)
    assert b"NaN" in row and b"-Infinity" in row and b"null" not in row
    assert json.loads(row) == json.loads(json.dumps({"predictions": [
        {"x": [nan, 1.5], "t_bytes": {"b64": "YQ=="}},
        {"x": [inf, -inf], "t_bytes": {"b64": "/w=="}}]}))


def test_strings_that_are_not_utf8_become_replacement_characters() -> None:
    text = np.array([[b"ok", b"\xff\xfe"]], dtype=object)
    assert _read_back(predict_json([("t", text, tensors.DT_STRING)], RequestFormat.ROW)) == \
        [["ok", "\ufffd\ufffd"]]
    assert json.loads(error_json("name \udcff")) == {"error": "name \ufffd\ufffd\ufffd"}


def test_rank_zero_outputs_are_bare_values() -> None:
    payload = predict_json([("total", np.float32(3.5), tensors.DT_FLOAT),
                            ("word", b"hi", tensors.DT_STRING)], RequestFormat.COLUMNAR)
    assert json.loads(payload) == {"outputs": {"total": 3.5, "word": "hi"}}


def test_an_output_json_cannot_hold_is_tf_servings_error() -> None:
    with pytest.raises(ServingError) as raised:
        predict_json([("y", np.zeros(2, np.float16), tensors.DT_HALF)], RequestFormat.ROW)
    assert raised.value.message == "Failed to write JSON value for tensor type: half"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1)
    | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=4), children, max_size=4), max_leaves=30)


@FUZZ
@given(document=st.dictionaries(st.text(max_size=4), json_values, max_size=4),
       lenient=st.booleans())
def test_bodies_parse_as_the_json_module_reads_them(document: dict, lenient: bool) -> None:
    body = json.dumps(document).encode()
    if lenient:  # orjson refuses these: python-rapidjson reads them
        body = b"\xef\xbb\xbf" + body[:-1] + (b', "z": NaN}' if document else b'"z": NaN}')
        document = {**document, "z": float("nan")}
    parsed = parse_json(body)
    assert json.dumps(parsed, sort_keys=True) == json.dumps(document, sort_keys=True)


@pytest.mark.parametrize("body,bools", [(b'{"a": [1.5, true]}', True),
                                        (b'{"signature_name": "full", "a": [1]}', False),
                                        (b'{"a": [false]}', True)])
def test_may_hold_bools(body: bytes, bools: bool) -> None:
    assert may_hold_bools(body) is bools


def test_debug_string_stops_after_the_writer_call_that_reaches_256_bytes() -> None:
    assert debug_string({"a": "x" * 300, "b": 1}) == '{\n    "a": "' + "x" * 300 + '"'
    assert debug_string([list(range(10**6))]).endswith(", 63, 64, 65, 66")
    assert len(debug_string([[[[1]]]] * 10**5)) < 300
