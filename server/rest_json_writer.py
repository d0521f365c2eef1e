"""TF Serving's REST response bytes: rapidjson's PrettyWriter layout and json_tensor.cc numbers.

TF Serving writes its Predict, Classify, Regress and error bodies with
``rapidjson::PrettyWriter`` (4-space indent), switching arrays to one line
(``kFormatSingleLineArray``) inside each row of a row-format answer, and writes floats
with ``WriteDecimal``: six significant digits (``%g``) when they read back as the same
value, else ``max_digits10`` digits, with ``.0`` added to whole numbers. So

    {"instances": [1.0, 2.0, 5.0]}  ->  b'{\\n    "predictions": [2.5, 3.0, 4.5\\n    ]\\n}'

The functions here build those bytes directly: one pass of joins per tensor, no per-value
writer calls. Text is handled as ``str`` decoded with ``surrogateescape``, so string outputs
that are not UTF-8 go out as their raw bytes, as rapidjson writes them.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np

_INDENT = "    "
_NEEDS_ESCAPE = re.compile(r'[\x00-\x1f"\\]')
_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n",
                  "\r": "\\r", "\t": "\\t"}
_NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}
# absl::StrCat(value) is printf's "%g"; what does not round-trip gets max_digits10 digits
_MAX_DIGITS = {np.dtype(np.float32): "%.9g", np.dtype(np.float64): "%.17g"}
_PRECISE_FIXED_BELOW = {np.dtype(np.float32): 1e9, np.dtype(np.float64): 1e17}


def quote(text: str) -> str:
    """A JSON string as rapidjson's Writer::String escapes it: quotes, backslashes and
    control characters only (``\\u001F`` in upper case); everything else as it is."""
    if _NEEDS_ESCAPE.search(text) is None:
        return f'"{text}"'
    return '"' + _NEEDS_ESCAPE.sub(_escape, text) + '"'


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return _SHORT_ESCAPES.get(char) or f"\\u{ord(char):04X}"


def text_of(raw: bytes) -> str:
    """Bytes as text that ``encode_document`` turns back into the same bytes."""
    return raw.decode("utf-8", "surrogateescape")


def encode_document(document: str) -> bytes:
    try:
        return document.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate echoed from a request into a message
        return document.encode("utf-8", "replace")


def decimal_tokens(values: np.ndarray) -> list[str]:
    """json_tensor.cc WriteDecimal for each value of a float32 or float64 array.

    Each value needs one printf-style formatting: whole numbers that print without an
    exponent are written "%.1f" (what "%g" plus ".0" gives), and only values close enough
    to a six-digit decimal are read back to see whether "%g" round-trips.
    """
    flat = values.reshape(-1)
    wide = flat.astype(np.float64)
    finite = np.isfinite(wide)
    magnitude = np.abs(np.where(finite, wide, 0.0))
    whole = finite & (np.floor(np.where(finite, wide, 0.0)) == wide)
    fixed = whole & (magnitude < 1e6)
    short = fixed | _six_digits_round_trip(wide, flat, finite & ~fixed)
    fixed |= ~short & whole & (magnitude < _PRECISE_FIXED_BELOW[flat.dtype])
    tokens = np.empty(flat.size, dtype=object)
    for where, style in ((fixed, "%.1f"), (short & ~fixed, "%g"),
                         (finite & ~short & ~fixed, _MAX_DIGITS[flat.dtype])):
        index = np.flatnonzero(where)
        if index.size:
            tokens[index] = list(map(style.__mod__, wide[index].tolist()))
    for index in np.flatnonzero(~finite).tolist():
        tokens[index] = _NON_FINITE["%g" % wide[index]]
    return tokens.tolist()


def _six_digits_round_trip(wide: np.ndarray, flat: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Where "%g" (six significant digits) reads back as the same value, among ``mask``."""
    result = np.zeros(flat.size, dtype=bool)
    index = np.flatnonzero(mask)
    if not index.size:
        return result
    values = wide[index]
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        exponent = np.floor(np.log10(np.abs(values)))
        digits = np.round(values / 10.0 ** (exponent - 5))
        exponent += (np.abs(digits) >= 1e6).astype(np.float64) - (np.abs(digits) < 1e5)
        nearest = np.round(values / 10.0 ** (exponent - 5)) * 10.0 ** (exponent - 5)
    # Within half an ulp (plus the arithmetic's error) of the nearest six-digit decimal:
    # only these may round-trip, and reading "%g" back decides it exactly. Subnormal
    # doubles, whose powers of ten underflow, are always read back.
    ulp = np.spacing(np.abs(flat[index])).astype(np.float64)
    slack = 0.5000001 if flat.dtype == np.float32 else 4.0
    maybe = index[~np.isfinite(nearest) | (np.abs(values) < 1e-290)
                  | (np.abs(nearest - values) <= slack * ulp)]
    if maybe.size:
        texts = list(map("%g".__mod__, wide[maybe].tolist()))
        back = np.array(texts, dtype=np.float64).astype(flat.dtype, copy=False)
        result[maybe] = back == flat[maybe]
    return result


def integer_tokens(values: np.ndarray) -> list[str]:
    return list(map(str, values.reshape(-1).tolist()))


def bool_tokens(values: np.ndarray) -> list[str]:
    return ["true" if value else "false" for value in values.reshape(-1).tolist()]


def string_tokens(values: np.ndarray) -> list[str]:
    return [quote(text_of(bytes(raw))) for raw in values.reshape(-1)]


def b64_strings(values: np.ndarray) -> list[str]:
    """The base64 text of each value of a ``*_bytes`` output (absl::Base64Escape)."""
    return [base64.b64encode(bytes(raw)).decode("ascii") for raw in values.reshape(-1)]


def _b64_objects(encoded: Iterable[str], depth: int) -> list[str]:
    """``{"b64": ...}`` objects written at writer stack depth ``depth``."""
    head = "{\n" + _INDENT * (depth + 1) + '"b64": "'
    tail = '"\n' + _INDENT * depth + "}"
    return [head + text + tail for text in encoded]


class Tensor(NamedTuple):
    """An output ready to write: its row-major value tokens (base64 text when ``b64``)."""

    tokens: list[str]
    shape: tuple[int, ...]
    b64: bool = False


def tensor(value: Tensor, depth: int, single_line: bool) -> str:
    """AddTensorValues: the nested arrays of ``value`` written as a value at writer stack
    depth ``depth`` (how many arrays and objects enclose it). Rank 0 is the bare value."""
    shape = value.shape
    items: Sequence[str] = value.tokens
    if value.b64:
        items = _b64_objects(items, depth + len(shape))
    if not shape:
        return items[0]
    for axis in range(len(shape) - 1, -1, -1):
        size = shape[axis]
        if size == 0:
            items = ["[]"] * math.prod(shape[:axis])
            continue
        if single_line:
            head, separator, tail = "[", ", ", "]"
        else:
            pad = "\n" + _INDENT * (depth + axis + 1)
            head, separator, tail = "[" + pad, "," + pad, "\n" + _INDENT * (depth + axis) + "]"
        items = [head + separator.join(items[start:start + size]) + tail
                 for start in range(0, len(items), size)]
    return items[0]


def _row(value: Tensor, row: int, batch: int) -> Tensor:
    stride = len(value.tokens) // batch
    return Tensor(value.tokens[row * stride:(row + 1) * stride], value.shape[1:], value.b64)


def row_format(outputs: dict[str, Tensor], batch: int) -> str:
    """MakeRowFormatJsonFromTensors for outputs that all have ``batch`` rows: each row on one
    line in the "predictions" array (an object per row when there are several outputs)."""
    if len(outputs) == 1:
        (value,) = outputs.values()
        rows = [tensor(_row(value, row, batch), 2, single_line=True) for row in range(batch)]
        body = ", ".join(rows)
    else:
        rows = ["\n" + _INDENT * 2 + "{" + ",".join(
                    f"\n{_INDENT * 3}{quote(name)}: {tensor(_row(value, row, batch), 3, True)}"
                    for name, value in outputs.items()) + "\n" + _INDENT * 2 + "}"
                for row in range(batch)]
        body = ",".join(rows)
    closing = f"\n{_INDENT}]" if rows else "]"
    return f'{{\n{_INDENT}"predictions": [{body}{closing}\n}}'


def columnar_format(outputs: dict[str, Tensor]) -> str:
    """MakeColumnarFormatJsonFromTensors: {"outputs": tensor} or {"outputs": {name: tensor}}."""
    if len(outputs) == 1:
        (value,) = outputs.values()
        return f'{{\n{_INDENT}"outputs": {tensor(value, 1, single_line=False)}\n}}'
    members = ",".join(f"\n{_INDENT * 2}{quote(name)}: {tensor(value, 2, single_line=False)}"
                       for name, value in outputs.items())
    return f'{{\n{_INDENT}"outputs": {{{members}\n{_INDENT}}}\n}}'


def classification_results(results: Iterable[Iterable[tuple[str, str]]]) -> str:
    """MakeJsonFromClassificationResult: one line of [label, score] pairs per example."""
    lines = ", ".join("[" + ", ".join(f"[{label}, {score}]" for label, score in classes) + "]"
                      for classes in results)
    closing = f"\n{_INDENT}]" if lines else "]"
    return f'{{\n{_INDENT}"results": [{lines}{closing}\n}}'


def regression_results(tokens: Sequence[str]) -> str:
    """MakeJsonFromRegressionResult: the values on one line."""
    return f'{{\n{_INDENT}"results": [{", ".join(tokens)}]\n}}'


def error(message: str) -> str:
    """MakeJsonFromStatus: {"error": message}."""
    return f'{{\n{_INDENT}"error": {quote(message)}\n}}'
