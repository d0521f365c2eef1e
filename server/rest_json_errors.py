"""How TF Serving's REST errors show a JSON value: JsonValueToDebugString and the value's type."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Iterator

from pyserving.server.errors import ServingError, invalid_argument
from pyserving.server.rest_json_writer import quote

_DEBUG_STRING_BYTES = 256
_INDENT = "    "
_INTEGERS = (-2**63, 2**64 - 1)  # what rapidjson holds as an integer; beyond, a double


def debug_string(value: Any) -> str:
    """JsonValueToDebugString: ``value`` as rapidjson's PrettyWriter writes it with arrays on
    one line, stopping after the first piece that reaches 256 bytes (each writer call checks
    the size before it writes). A huge or deeply nested value costs only what is written."""
    parts = []
    size = 0
    for piece in _pretty_pieces(value):
        if size >= _DEBUG_STRING_BYTES:
            break
        if piece is None:  # NaN or Infinity: rapidjson's writer refuses it and stops
            break
        parts.append(piece)
        size += len(piece.encode("utf-8", "surrogatepass"))
    return "".join(parts)


_END = object()


def _pretty_pieces(value: Any) -> Iterator[str | None]:
    """What each rapidjson writer call adds (separator and token), without recursion."""
    # stack entries: (items, is_object, members written so far)
    stack: list[list[Any]] = []
    pending: Any = value
    while True:
        if pending is _END:
            if not stack:
                return
            items, is_object, count = stack[-1]
            item = next(items, _END)
            if item is _END:
                stack.pop()
                if is_object:
                    yield "}" if not count else "\n" + _INDENT * len(stack) + "}"
                else:
                    yield "]"
                continue
            stack[-1][2] += 1
            if is_object:
                key, pending = item
                yield ("\n" if not count else ",\n") + _INDENT * len(stack) + quote(key)
                prefix = ": "
            else:
                pending = item
                prefix = ", " if count else ""
        else:
            prefix = ""
        if isinstance(pending, list):
            yield prefix + "["
            stack.append([iter(pending), False, 0])
        elif isinstance(pending, dict):
            yield prefix + "{"
            stack.append([iter(pending.items()), True, 0])
        else:
            token = _scalar(pending)
            if token is None:
                yield prefix
            yield None if token is None else prefix + token
        pending = _END


def _scalar(value: Any) -> str | None:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, int) and _INTEGERS[0] <= value <= _INTEGERS[1]:
        return str(value)
    return _double(float(value))


def _double(value: float) -> str | None:
    """rapidjson Writer::Double: shortest digits laid out by its Prettify (``1.0``, ``1e21``,
    ``1.5e-7``, ``0.001``); None for NaN and infinities, which the writer refuses."""
    if value != value or value in (float("inf"), float("-inf")):
        return None
    sign = "-" if str(value).startswith("-") else ""
    if value == 0:
        return sign + "0.0"
    _, digit_tuple, exponent = Decimal(repr(abs(value))).as_tuple()
    digits = "".join(map(str, digit_tuple)).rstrip("0") or "0"
    exponent += len(digit_tuple) - len(digits)  # value = digits * 10**exponent
    length = len(digits)
    point = length + exponent  # 10**(point-1) <= value < 10**point
    if 0 <= exponent and point <= 21:
        text = digits + "0" * exponent + ".0"
    elif 0 < point <= 21:
        text = digits[:point] + "." + digits[point:]
    elif -6 < point <= 0:
        text = "0." + "0" * -point + digits
    elif length == 1:
        text = f"{digits}e{point - 1}"
    else:
        text = f"{digits[0]}.{digits[1:]}e{point - 1}"
    return sign + text


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


def json_value_error(value: Any, *parts: str) -> ServingError:
    """INVALID_ARGUMENT ``JSON Value: <debug string> <parts>``."""
    return invalid_argument(f"JSON Value: {debug_string(value)} " + "".join(parts))
