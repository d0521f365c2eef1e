"""REST request bodies -> Python values, and JSON values as TF Serving's error texts show them.

orjson parses the well-formed bodies (a 1000x100 float body in ~10 ms). What it refuses goes to
python-rapidjson, which is rapidjson itself: it reads the NaN/Infinity literals TF Serving
accepts (kParseNanAndInfFlag) and gives rapidjson's error text and offset for invalid JSON.
Around it, what TF Serving's ParseJson adds: a UTF-8 BOM is skipped, bytes after the document
are ignored (kParseStopWhenDoneFlag), bytes that are not UTF-8 are taken as they are (no
encoding validation; held as ``surrogateescape`` text). A name that repeats in an object keeps
its last value, as every JSON library here does (rapidjson's FindMember finds the first).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson
import rapidjson

from pyserving.server.errors import ServingError, invalid_argument

_BOM = b"\xef\xbb\xbf"
_ERROR = re.compile(r"Parse error at offset (\d+): (.*)", re.DOTALL)
_TRAILING = "The document root must not be followed by other values."
_INT64_MIN, _UINT64_MAX = -2**63, 2**64 - 1
_DEBUG_STRING_BYTES = 256  # json_tensor.cc kMaxJsonDebugStringBytes
# A writer call of rapidjson's PrettyWriter: its separator and indent, then one token.
_WRITER_CALL = re.compile(rb'[\s,:]*(?:"(?:[^"\\]|\\.)*"|[\[\]{}]|[^\s,:\[\]{}"]+)', re.DOTALL)
# A JSON string (skipped) or number token, to find the number rapidjson finds too big.
_STRING_OR_NUMBER = re.compile(r'"(?:[^"\\]|\\.)*"|(-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)',
                               re.DOTALL)
_TOO_BIG = "Number too big to be stored in double."
_TOO_BIG_SUM = 1.7976931348623157e307


def parse_json(body: bytes) -> dict:
    """The request body as an object, or INVALID_ARGUMENT with TF Serving's texts."""
    if not body:
        raise invalid_argument("JSON Parse error: The document is empty")  # ParseJson's own
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        document = _parse_leniently(body)
    if not isinstance(document, dict):
        raise json_value_error(document, "Is not object")
    return document


def _parse_leniently(body: bytes) -> Any:
    start = len(_BOM) if body.startswith(_BOM) else 0
    try:
        text = body[start:].decode()
    except UnicodeDecodeError:
        return _parse_raw_bytes(body, start)
    return _rapidjson(text, start)


def _rapidjson(text: str, start: int) -> Any:
    """``text`` (which began at byte ``start`` of the body) as rapidjson reads it; numbers
    correctly rounded, as orjson reads them."""
    try:
        document = rapidjson.loads(text, number_mode=rapidjson.NM_NAN)
        if not isinstance(document, (list, dict)) or _native_numbers(document):
            return document
        # A number beyond a double (python-rapidjson reads some as inf): rapidjson's TooBig.
        too_big = _number_too_big(text, start)
        if too_big is None:
            return document
        raise too_big
    except ValueError as error:
        if not isinstance(error, rapidjson.JSONDecodeError):
            # An integer longer than Python's int digit limit (sys.get_int_max_str_digits).
            too_big = _number_too_big(text, start)
            raise too_big if too_big is not None else invalid_argument(
                f"JSON Parse error: {_TOO_BIG} at offset: {start}") from None
        return _rapidjson_error(text, start, error)
    except RecursionError as error:
        return _rapidjson_error(text, start, error)


def _number_too_big(text: str, start: int) -> ServingError | None:
    """rapidjson's NumberTooBig at the first number whose integer part overflows its reader,
    if there is one (its exponent check python-rapidjson makes itself: 1e400 is refused,
    1.5e309 is Infinity)."""
    for token in _STRING_OR_NUMBER.finditer(text):
        if token[1] is not None and _integer_part_too_big(token[1]):
            offset = len(text[:token.start()].encode("utf-8", "surrogateescape"))
            return invalid_argument(f"JSON Parse error: {_TOO_BIG} at offset: {start + offset}")
    return None


def _integer_part_too_big(number: str) -> bool:
    """reader.h ParseNumber: past 64 bits the integer part is summed as a double, refused
    once the sum reaches 1.7976931348623157e307 before another digit."""
    digits = number.lstrip("-").split(".")[0].split("e")[0].split("E")[0]
    if len(digits) < 309:
        return False
    total = 0.0
    for digit in digits:
        if total >= _TOO_BIG_SUM:
            return True
        total = total * 10 + (ord(digit) - 48)
    return False


def _rapidjson_error(text: str, start: int, error: Exception) -> Any:
    """What rapidjson's error for ``text`` is in TF Serving's words (or the document, when
    the error was only bytes after it)."""
    offset, message = _parts(error)
    if message == _TRAILING:  # the document ended before the bytes that follow it
        end = len(text.encode()[:offset].decode(errors="ignore"))
        return _rapidjson(text[:end], start)
    if message == "Invalid encoding in string.":  # a raw control character
        message = "Invalid escape character in string."  # rapidjson 1.1.0's text
    stripped = text.lstrip(" \t\n\r")
    if message == "Invalid value." and stripped[:1] in ("]", "}", ",", ":") \
            and offset == len(text.encode()) - len(stripped.encode()):
        # rapidjson's iterative parser, as TF Serving runs it, has no value to start with
        message = "The document is empty."
    raise invalid_argument(f"JSON Parse error: {message} at offset: {start + offset}"
                           ) from None


def _native_numbers(value: Any) -> bool:
    """Integers beyond 64 bits made doubles in place, as rapidjson holds them; False when one
    is beyond a double too, or a float is infinite."""
    pending = [value]
    while pending:
        container = pending.pop()
        keys = range(len(container)) if isinstance(container, list) else list(container)
        for key in keys:
            item = container[key]
            if isinstance(item, (list, dict)):
                pending.append(item)
            elif type(item) is int and not _INT64_MIN <= item <= _UINT64_MAX:
                try:
                    container[key] = float(item)
                except OverflowError:
                    return False
            elif type(item) is float and math.isinf(item):
                return False  # an Infinity literal, or a number beyond a double
    return True


def _parts(error: Exception) -> tuple[int, str]:
    match = _ERROR.fullmatch(str(error))
    return (int(match[1]), match[2]) if match else (0, str(error))


def _parse_raw_bytes(body: bytes, start: int) -> Any:
    """A body that is not UTF-8: rapidjson checks it with each stray byte read as '?', which
    keeps every offset; the json module then reads the strings' raw bytes (but for an "Inf"
    literal, which it does not know: then the stray bytes stay '?')."""
    text = body[start:].decode("utf-8", "surrogateescape")
    checked = _rapidjson(re.sub("[\udc80-\udcff]", "?", text), start)
    try:
        return json.JSONDecoder(parse_int=_native_int).raw_decode(text.lstrip(" \t\n\r"))[0]
    except ValueError:
        return checked


def _native_int(text: str) -> int | float:
    number = int(text)
    return number if _INT64_MIN <= number <= _UINT64_MAX else float(text)


def may_hold_bools(body: bytes) -> bool:
    """Whether the body has a true/false token (else numeric tensors need no per-value check
    that no bool hides among the numbers). memchr for letters no number has, then a look
    around each: ~10x faster than searching for the words in a large numeric body."""
    for letter, word in ((b"u", b"true"), (b"l", b"false")):
        at = body.find(letter)
        while at >= 0:
            if body[at - 2:at - 2 + len(word)] == word:
                return True
            at = body.find(letter, at + 1)
    return False


def json_type_name(value: Any) -> str:
    """The JSON type as rapidjson names it in TF Serving's texts (``Number``, ``Array``...)."""
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def debug_string(value: Any) -> str:
    """JsonValueToDebugString: rapidjson's PrettyWriter with single-line arrays, whose writer
    calls stop once 256 bytes are written. Numbers are python-rapidjson's (``1e+21`` where
    rapidjson's C++ writer has ``1e21``)."""
    budget = [_DEBUG_STRING_BYTES]
    text = rapidjson.dumps(_head(value, budget), indent=4, ensure_ascii=False,
                           write_mode=rapidjson.WM_SINGLE_LINE_ARRAY,
                           number_mode=rapidjson.NM_NAN).encode()
    end = 0
    for call in _WRITER_CALL.finditer(text):
        if call.start() >= _DEBUG_STRING_BYTES:
            break
        end = call.end()
    return text[:end].decode(errors="replace")


def _head(value: Any, budget: list[int]) -> Any:
    """What of ``value`` can show in the first 256 bytes (each value writes at least one),
    with text that is not UTF-8 replaced: a huge or deep value costs only that."""
    budget[0] -= 1
    if isinstance(value, list):
        return [_head(item, budget) for item in value[:max(budget[0], 0)]]
    if isinstance(value, dict):
        items = list(value.items())[:max(budget[0], 0)]
        return {_utf8(key): _head(item, budget) for key, item in items}
    return _utf8(value) if isinstance(value, str) else value


def _utf8(text: str) -> str:
    if text.isascii():
        return text
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def json_value_error(value: Any, *parts: str) -> ServingError:
    """INVALID_ARGUMENT ``JSON Value: <debug string> <parts>``."""
    return invalid_argument(f"JSON Value: {debug_string(value)} " + "".join(parts))
