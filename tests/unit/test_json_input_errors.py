"""No client JSON yields an internal error: the reader and the converters behind it answer
INVALID_ARGUMENT (HTTP 400) with TF Serving's text for any body, however odd its numbers,
nesting or literals. Hypothesis drives the reader and the request converters directly (no
server: thousands of bodies in seconds); test_fuzz_rest.py fuzzes a real server."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyserving.client import tensors
from pyserving.server.apis import classification_pb2, meta_graph_pb2
from pyserving.server.errors import ServingError
from pyserving.server.rest import json_parse, request_json

FUZZ = settings(deadline=None, derandomize=True, database=None, max_examples=300,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
HUGE = "1" * 5000  # beyond Python's int digit limit (4300) and beyond a double
DTYPES = [tensors.DT_FLOAT, tensors.DT_DOUBLE, tensors.DT_INT32, tensors.DT_INT64,
          tensors.DT_UINT8, tensors.DT_BOOL, tensors.DT_STRING, tensors.DT_HALF]

numbers = st.one_of(
    st.integers(min_value=-10**30, max_value=10**30).map(str),
    st.integers(min_value=300, max_value=6000).map(lambda n: "1" * n),
    st.integers(min_value=300, max_value=6000).map(lambda n: "-" + "9" * n),
    st.integers(min_value=300, max_value=6000).map(lambda n: "1" * n + ".5"),
    st.integers(min_value=300, max_value=6000).map(lambda n: "1" * n + "e-" + str(n)),
    st.sampled_from(["1e400", "-1e400", "1e-400", "0.0", "-0", "1E+2", "NaN", "Infinity",
                     "-Infinity", "Inf", "-Inf", "nan", "true", "false", "null", "01", "1.",
                     ".5", "+1", "0x10", "1e", "--1", "\"\\ud800\"", "\"\\u0000\""]))
values = st.recursive(
    numbers,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda items: "[" + ",".join(items) + "]"),
        st.dictionaries(st.sampled_from(['"x"', '"instances"', '"inputs"', '"examples"',
                                         '"b64"', '"signature_name"', '"context"']),
                        inner, max_size=3).map(
            lambda items: "{" + ",".join(f"{k}: {v}" for k, v in items.items()) + "}")),
    max_leaves=12)
nesting = st.tuples(st.integers(1, 3000), st.sampled_from(["[", '{"x":'])).map(
    lambda pair: pair[1] * pair[0] + "1" + ("]" if pair[1] == "[" else "}") * pair[0])
bodies = st.one_of(
    st.tuples(st.sampled_from(["instances", "inputs", "x", "examples"]), values).map(
        lambda pair: f'{{"{pair[0]}": {pair[1]}}}'),
    st.tuples(values, values).map(lambda pair: f'{{"instances": {pair[0]}, "x": {pair[1]}}}'),
    nesting.map(lambda text: f'{{"instances": {text}}}'),
    values,
).map(str.encode)


def _parsed(body: bytes) -> dict | None:
    """The document, or None after the INVALID_ARGUMENT every refusal must be."""
    try:
        return json_parse.parse_json(body)
    except ServingError as error:
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT, error
        assert error.message.startswith(("JSON Parse error: ", "JSON Value: ")), error.message
        return None


@pytest.mark.parametrize("body,offset", [
    (b'{"instances": [[NaN]], "x": ' + HUGE.encode() + b"}", 28),
    (b'{"instances": [[1.0]], "x": ' + HUGE.encode() + b"}", 28),
    (b'{"instances": [[NaN]], "x": -' + HUGE.encode() + b"}", 28),
    (b'{"x": ' + HUGE.encode() + b".5}", 6),
    (b'{"s": "1e999", "x": 1e999}', 20),
    (b'\xef\xbb\xbf{"\xff": 1, "x": ' + HUGE.encode() + b"}", 17),
])
def test_a_number_beyond_a_double_is_rapidjsons_number_too_big(body: bytes, offset: int) -> None:
    """The issue's body: a 5,000-digit integer in a field no one reads was an HTTP 500 with
    ValueError('Invalid integer value'); rapidjson refuses the document at the number."""
    with pytest.raises(ServingError) as raised:
        json_parse.parse_json(body)
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.message == ("JSON Parse error: Number too big to be stored in double. "
                                    f"at offset: {offset}")


def test_infinity_literals_and_long_fractions_still_parse() -> None:
    assert json_parse.parse_json(b'{"x": Infinity, "y": -Infinity, "z": 0.' + b"1" * 5000
                                 + b"}")["x"] == float("inf")


@FUZZ
@given(body=bodies)
def test_any_body_parses_or_is_invalid_argument(body: bytes) -> None:
    _parsed(body)


@FUZZ
@given(body=bodies, dtype=st.sampled_from(DTYPES))
def test_any_document_converts_or_is_invalid_argument(body: bytes, dtype: int) -> None:
    document = _parsed(body)
    if document is None:
        return
    inputs = {"x": meta_graph_pb2.TensorInfo(dtype=dtype)}
    _refused_cleanly(lambda: request_json.predict_inputs(document, lambda name: inputs))
    _refused_cleanly(lambda: request_json.fill_examples_request(
        document, classification_pb2.ClassificationRequest()))


def _refused_cleanly(call: Any) -> None:
    try:
        call()
    except ServingError as error:
        assert error.code in (grpc.StatusCode.INVALID_ARGUMENT,
                              grpc.StatusCode.UNIMPLEMENTED), error
