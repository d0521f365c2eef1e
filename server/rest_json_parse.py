"""REST request body bytes -> Python values, as TF Serving's rapidjson reads them.

orjson parses well-formed bodies. What it refuses (NaN and Infinity, bytes after the
document, a BOM, raw non-UTF-8 bytes in strings, invalid JSON) goes through
``rest_json_reader``, rapidjson's reader as TF Serving runs it, which also gives rapidjson's
error text and offset. Objects keep the first of repeated names.
"""

from __future__ import annotations

import functools
from typing import Any

import orjson

from pyserving.server import rest_json_reader
from pyserving.server.errors import invalid_argument
from pyserving.server.rest_json_errors import json_value_error
from pyserving.server.rest_json_numbers import RapidJsonError


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
        raise invalid_argument("JSON Parse error: The document is empty")  # ParseJson's own
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        document = _parse_leniently(body)
    else:
        if isinstance(document, dict) and not _has_a_member_per_colon(document, body):
            document = _parse_leniently(body)  # a name may repeat: keep the first
    if not isinstance(document, dict):
        raise json_value_error(document, "Is not object")
    return JsonDocument(document, body)


def _has_a_member_per_colon(document: dict, body: bytes) -> bool:
    """Whether the objects hold as many members as the body has colons, so that no name
    repeats (orjson keeps the last). Cheap for the usual bodies: a numeric body's colons are
    its top-level members; a False (colons in strings, objects in mixed lists) only costs a
    second parse."""
    colons = body.count(b":")
    count = 0
    pending: list = [document]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            count += len(value)
            if count >= colons:
                return True
            pending.extend(item for item in value.values() if isinstance(item, (dict, list)))
        elif isinstance(value, list) and value:
            first = value[0]
            if isinstance(first, (dict, list)):
                pending.extend(value)
            elif isinstance(first, str):
                pending.extend(item for item in value if isinstance(item, dict))
    return count >= colons


def _parse_leniently(body: bytes) -> Any:
    """What orjson refuses but TF Serving's rapidjson flags allow (kParseNanAndInfFlag,
    kParseStopWhenDoneFlag, no encoding validation), or rapidjson's error and offset."""
    try:
        return rest_json_reader.parse(body)
    except RapidJsonError as error:
        raise invalid_argument(f"JSON Parse error: {error}") from None
