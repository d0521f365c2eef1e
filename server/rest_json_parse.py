"""REST request body bytes -> Python values, as TF Serving's rapidjson reads them.

orjson parses well-formed bodies; what it refuses but rapidjson's flags allow (NaN and
Infinity, trailing bytes) goes through a lenient decoder that also gives rapidjson's error
texts. Hostile bodies (deep nesting, huge numbers, lone surrogates) get a 400, never a crash.
"""

from __future__ import annotations

import functools
import json
import math
import re
from typing import Any

import orjson

from pyserving.server.errors import invalid_argument
from pyserving.server.rest_json_errors import json_value_error

_RAPIDJSON_INTEGERS = (-2**63, 2**64 - 1)  # int64 or uint64; anything else is a double
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_JSON_SPACE = " \t\n\r"


class JsonDocument(dict):
    """A parsed request body. ``may_hold_bools`` is False when the body has no true/false
    token, so numeric tensors need no per-value check that no bool hides among the numbers."""

    def __init__(self, document: dict, body: bytes) -> None:
        super().__init__(document)
        self._body = body

    @functools.cached_property
    def may_hold_bools(self) -> bool:
        # memchr for letters no number has, then a look around each: ~20x faster than
        # searching for the words in a large numeric body.
        body = self._body
        for letter, word in ((b"u", b"true"), (b"l", b"false")):
            at = body.find(letter)
            while at >= 0:
                if body[at - 2:at - 2 + len(word)] == word:
                    return True
                at = body.find(letter, at + 1)
        return False


def parse_json(body: bytes) -> JsonDocument:
    if not body:
        raise invalid_argument("JSON Parse error: The document is empty")
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        document = _parse_leniently(body)
    if not isinstance(document, dict):
        raise json_value_error(document, "Is not object")
    return JsonDocument(document, body)


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError("Number too big to be stored in double.")
    return value


def _json_int(text: str) -> int | float:
    """Integers as rapidjson reads them: beyond uint64/int64 they are doubles."""
    value = int(text) if len(text) < 22 else None
    if value is not None and _RAPIDJSON_INTEGERS[0] <= value <= _RAPIDJSON_INTEGERS[1]:
        return value
    return _finite_float(text)


_LENIENT = json.JSONDecoder(parse_float=_finite_float, parse_int=_json_int)


def _parse_leniently(body: bytes) -> Any:
    """What orjson refuses but TF Serving's rapidjson flags allow: NaN and Infinity tokens
    (kParseNanAndInfFlag) and anything after the document (kParseStopWhenDoneFlag)."""
    try:
        text = body.decode("utf-8")
        start = len(text) - len(text.lstrip(_JSON_SPACE))
        document, _ = _LENIENT.raw_decode(text, start)
    except RecursionError:
        raise invalid_argument("JSON Parse error: The document is nested too deeply.") from None
    except ValueError as error:  # also UnicodeDecodeError: rapidjson would keep such bytes
        raise invalid_argument(f"JSON Parse error: {error}") from None
    if _SURROGATE_ESCAPE.search(body) and _has_lone_surrogate(document):
        raise invalid_argument("JSON Parse error: The surrogate pair in string is invalid.")
    return document


def _has_lone_surrogate(document: Any) -> bool:
    pending = [document]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            pending.extend(value)
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return True
    return False
