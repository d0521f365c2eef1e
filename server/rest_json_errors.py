"""How TF Serving's REST errors show a JSON value: JsonValueToDebugString and the value's type."""

from __future__ import annotations

import json
from typing import Any, Iterator

from pyserving.server.errors import ServingError, invalid_argument

_DEBUG_STRING_BYTES = 256


def debug_string(value: Any) -> str:
    """Compact JSON of ``value`` cut at 256 characters (JsonValueToDebugString); a huge or
    deeply nested value costs only what is written."""
    parts = []
    size = 0
    for token in _json_tokens(value):
        parts.append(token)
        size += len(token)
        if size >= _DEBUG_STRING_BYTES:
            break
    return "".join(parts)[:_DEBUG_STRING_BYTES]


_END = object()


def _json_tokens(value: Any) -> Iterator[str]:
    """The compact JSON text of ``value``, piece by piece, without recursion."""
    stack: list[tuple[Iterator, str, bool]] = [(iter((value,)), "", False)]
    first = True
    while stack:
        items, closer, is_object = stack[-1]
        item = next(items, _END)
        if item is _END:
            stack.pop()
            yield closer
            first = False
            continue
        if not first:
            yield ","
        first = False
        if is_object:
            key, item = item
            yield _scalar_json(key) + ":"
        if isinstance(item, list):
            yield "["
            stack.append((iter(item), "]", False))
            first = True
        elif isinstance(item, dict):
            yield "{"
            stack.append((iter(item.items()), "}", True))
            first = True
        else:
            yield _scalar_json(item)


def _scalar_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


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
