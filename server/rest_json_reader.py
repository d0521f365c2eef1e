"""rapidjson 1.1.0's reader as TF Serving runs it, for the bodies orjson refuses.

json_tensor.cc ParseJson reads the body through ``EncodedInputStream<UTF8<>, MemoryStream>``
(leading 0xEF, 0xBB, 0xBF bytes skipped) with kParseIterativeFlag | kParseNanAndInfFlag |
kParseStopWhenDoneFlag and no encoding validation. This is a port of that reader: same
accepted documents (NaN/Inf, raw non-UTF-8 bytes in strings, lone low surrogates, no nesting
limit, bytes after the document ignored) and the same error and offset. Strings come back
decoded with ``surrogateescape``, so ``str.encode("utf-8", "surrogateescape")`` gives the bytes
rapidjson holds. Objects keep the first of duplicate names, as FindMember finds it. Numbers
are read by ``rest_json_numbers``; whole valid arrays and objects by the json module's scanner.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

from pyserving.server.rest_json_numbers import INVALID_VALUE, NumberReader, RapidJsonError

# The error texts of rapidjson/error/en.h.
EMPTY = "The document is empty."
MISS_NAME = "Missing a name for object member."
MISS_COLON = "Missing a colon after a name of object member."
MISS_COMMA_OR_CURLY = "Missing a comma or '}' after an object member."
MISS_COMMA_OR_SQUARE = "Missing a comma or ']' after an array element."
INVALID_HEX = "Incorrect hex digit after \\u escape in string."
INVALID_SURROGATE = "The surrogate pair in string is invalid."
INVALID_ESCAPE = "Invalid escape character in string."
MISS_QUOTE = "Missing a closing quotation mark in string."


class DuplicateNamesObject(dict):
    """An object that named a member more than once: the dict holds the first value of each
    name (FindMember), ``members`` every (name, value) in order (iteration, MemberCount)."""

    def __init__(self, members: list[tuple[str, Any]]) -> None:
        super().__init__()
        for name, value in members:
            self.setdefault(name, value)
        self.members = members


# IterativeParsingState values and HandleError's message for each.
(START, FINISH, OBJECT_INITIAL, MEMBER_KEY, KEY_VALUE_DELIMITER, MEMBER_VALUE,
 MEMBER_DELIMITER, ARRAY_INITIAL, ELEMENT, ELEMENT_DELIMITER) = range(10)
_STATE_ERROR = {START: EMPTY, OBJECT_INITIAL: MISS_NAME, MEMBER_DELIMITER: MISS_NAME,
                MEMBER_KEY: MISS_COLON, MEMBER_VALUE: MISS_COMMA_OR_CURLY,
                KEY_VALUE_DELIMITER: INVALID_VALUE, ARRAY_INITIAL: INVALID_VALUE,
                ELEMENT_DELIMITER: INVALID_VALUE, ELEMENT: MISS_COMMA_OR_SQUARE}
_VALUE_AFTER = {START: FINISH, KEY_VALUE_DELIMITER: MEMBER_VALUE, ARRAY_INITIAL: ELEMENT,
                ELEMENT_DELIMITER: ELEMENT}
_ARRAY_OPEN = (ARRAY_INITIAL, ELEMENT, ELEMENT_DELIMITER)
_OBJECT_OPEN = (OBJECT_INITIAL, MEMBER_VALUE, MEMBER_DELIMITER)
_WHITESPACE = re.compile(rb"[ \t\n\r]*")
_UNESCAPED = re.compile(rb'[^"\\\x00-\x1f]*')
_ESCAPES = {ord(k): v for k, v in {'"': b'"', "\\": b"\\", "/": b"/", "b": b"\b", "f": b"\f",
                                    "n": b"\n", "r": b"\r", "t": b"\t"}.items()}
_HEX = frozenset(b"0123456789abcdefABCDEF")
# A run of ", <number>" whose numbers cannot fail (<= 15 integer digits, exponent < 100) and
# end where rapidjson's number ends: read in bulk so a long array costs one orjson call.
_SAFE_NUMBERS = re.compile(
    rb"(?:[ \t\n\r]*,[ \t\n\r]*-?(?:0|[1-9][0-9]{0,14})(?:\.[0-9]+)?(?:[eE][-+]?[0-9]{1,2})?"
    rb"(?![0-9.eE]))+")
_NUMBER_CHARACTERS = re.compile(rb"[-+.eE0-9 \t\n\r,]*")

# What the json module and orjson read unlike rapidjson: surrogate escapes (rapidjson refuses
# lone high ones and keeps lone low ones as bytes), integer parts of 19+ digits (beyond int64
# a double, past DBL_MAX / 10 too big) and positive 3-digit exponents (maybe too big). Without
# them no number overflows a double. Digits in strings only cost the slower way. Searched with
# literal prefixes and bytes.find: a plain alternation costs ~35 ns a byte.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_BIG_EXPONENTS = (re.compile(rb"e\+?[0-9]{3}"), re.compile(rb"E\+?[0-9]{3}"))
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_RUN = b"0" * 19
_ZEROS = re.compile(rb"0*")
_SHORTCUT_DEPTH = 8  # bounds the rescans of nested containers that hold the error


def _object(pairs: list[tuple[str, Any]]) -> dict:
    document = dict(pairs)
    return document if len(document) == len(pairs) else DuplicateNamesObject(pairs)


# The json module's C scanner, for what _needs_reader lets through.
LENIENT = json.JSONDecoder(object_pairs_hook=_object)
_SCAN = LENIENT.scan_once


def parse(body: bytes) -> Any:
    """The document rapidjson reads from ``body``, or RapidJsonError."""
    return _Reader(body).parse()


class _Reader:
    def __init__(self, body: bytes) -> None:
        self.body = body
        self.end = body.find(b"\0")  # MemoryStream::Peek() gives '\0' there and past the end
        if self.end < 0:
            self.end = len(body)
        self.text: str | None = None  # the body as latin-1, one character a byte
        self.numbers = NumberReader(body, self.end)
        self.state = START
        self.root: Any = None
        self.stack: list[tuple[Any, int, list]] = []  # (container, state after it, members)

    def peek(self, at: int) -> int:
        return self.body[at] if at < self.end else 0

    def parse(self) -> Any:
        at = 0
        for bom in (0xEF, 0xBB, 0xBF):
            if self.peek(at) == bom:
                at += 1
        at = _WHITESPACE.match(self.body, at).end()
        while at < self.end:
            char = self.body[at]
            if char in b"[{":
                at = self._open(at, char)
            elif char in b"]}":
                at = self._close(at, char == 0x5D)
            elif char == 0x2C:  # ,
                at = self._comma(at)
            elif char == 0x3A:  # :
                if self.state != MEMBER_KEY:
                    raise self._error(at)
                self.state, at = KEY_VALUE_DELIMITER, at + 1
            else:
                at = self._scalar(at, char)
            if self.state == FINISH:
                return self.root  # kParseStopWhenDoneFlag: what follows is not read
            at = _WHITESPACE.match(self.body, at).end()
        raise self._error(at)

    def _error(self, at: int) -> RapidJsonError:
        """HandleError: the message for the state the parser is stuck in."""
        return RapidJsonError(_STATE_ERROR[self.state], at)

    def _open(self, at: int, char: int) -> int:
        if self.state not in _VALUE_AFTER:
            raise self._error(at)
        subtree = self._subtree(at) if len(self.stack) < _SHORTCUT_DEPTH else None
        if subtree is not None:
            value, at = subtree
            self._completed(value)
            return at
        container: Any = [] if char == 0x5B else {}
        then = _VALUE_AFTER[self.state]
        self._completed(container)  # filled in place from here on
        self.stack.append((container, then, []))
        self.state = ARRAY_INITIAL if char == 0x5B else OBJECT_INITIAL
        return at + 1

    def _close(self, at: int, closes_array: bool) -> int:
        if self.state not in (_ARRAY_OPEN if closes_array else _OBJECT_OPEN):
            raise self._error(at)
        if self.state == ELEMENT_DELIMITER:  # no kParseTrailingCommasFlag
            raise RapidJsonError(INVALID_VALUE, at)
        if self.state == MEMBER_DELIMITER:
            raise RapidJsonError(MISS_NAME, at)
        container, self.state, members = self.stack.pop()
        if not closes_array and len(members) > len(container):
            container = DuplicateNamesObject(members)
            if self.stack:
                _replace_last(self.stack[-1], container)
            else:
                self.root = container
        return at + 1

    def _comma(self, at: int) -> int:
        if self.state == ELEMENT:
            run = self._numbers(self.stack[-1][0], at)
            if run:
                return run
            self.state = ELEMENT_DELIMITER
        elif self.state == MEMBER_VALUE:
            self.state = MEMBER_DELIMITER
        else:
            raise self._error(at)
        return at + 1

    def _scalar(self, at: int, char: int) -> int:
        """A member's name, or a string, number, true, false or null where a value goes."""
        if self.state in (OBJECT_INITIAL, MEMBER_DELIMITER):
            if char != 0x22:
                raise self._error(at)
            name, at = self._string(at)
            self.stack[-1][2].append((name, None))
            self.state = MEMBER_KEY
            return at
        if self.state not in _VALUE_AFTER:
            raise self._error(at)
        value, at = self._value(at)
        self._completed(value)
        return at

    def _completed(self, value: Any) -> None:
        """A value where one goes: the document, an element, or a member's value."""
        if self.stack:
            self._add(self.stack[-1], value)
        else:
            self.root = value
        self.state = _VALUE_AFTER[self.state]

    def _subtree(self, at: int) -> tuple[Any, int] | None:
        """A whole array or object the json module's C scanner reads as rapidjson would, and
        where it ends; None where only this reader can tell (or the error is inside)."""
        if self.text is None:
            self.text = self.body[:self.end].decode("latin-1")
        try:
            value, end = _SCAN(self.text, at)
        except (ValueError, RecursionError, StopIteration):
            return None
        piece = self.body[at:end]
        if _needs_reader(piece):
            return None
        if not piece.isascii():  # strings read as latin-1: read them again as rapidjson's bytes
            value = LENIENT.decode(piece.decode("utf-8", "surrogateescape"))
        return value, end

    @staticmethod
    def _add(frame: tuple[Any, int, list], value: Any) -> None:
        container, _, members = frame
        if isinstance(container, list):
            container.append(value)
            return
        name = members[-1][0]
        members[-1] = (name, value)
        container.setdefault(name, value)

    def _numbers(self, array: list, comma: int) -> int:
        """At an element's comma: read a run of plain numbers at once; 0 if there is none.
        orjson accepts a run only where rapidjson splits it the same way; runs where rapidjson
        could say TooBig take the stricter pattern."""
        if not isinstance(array[-1], (int, float)):
            return 0
        end = _NUMBER_CHARACTERS.match(self.body, comma + 1, self.end).end()
        run = self.body[comma + 1:end]
        if not _needs_reader(run):
            try:
                values = orjson.loads(b"[" + run + b"]")
            except orjson.JSONDecodeError:
                values = None
            if values:
                array.extend(values)
                return end
        match = _SAFE_NUMBERS.match(self.body, comma, self.end)
        if match is None:
            return 0
        array.extend(orjson.loads(b"[" + self.body[comma + 1:match.end()] + b"]"))
        return match.end()

    def _value(self, at: int) -> tuple[Any, int]:
        char = self.body[at]
        for word, value in ((b"null", None), (b"true", True), (b"false", False)):
            if char == word[0]:
                for offset in range(1, len(word)):
                    if self.peek(at + offset) != word[offset]:
                        raise RapidJsonError(INVALID_VALUE, at + offset)
                return value, at + len(word)
        if char == 0x22:
            return self._string(at)
        return self.numbers.read(at)

    def _string(self, at: int) -> tuple[str, int]:
        body, parts = self.body, []
        at += 1
        while True:
            run = _UNESCAPED.match(body, at, self.end)
            parts.append(body[at:run.end()])
            at = run.end()
            char = self.peek(at)
            if char == 0x22:
                return b"".join(parts).decode("utf-8", "surrogateescape"), at + 1
            if char != 0x5C:  # a control character, or the end
                raise RapidJsonError(MISS_QUOTE if char == 0 else INVALID_ESCAPE, at)
            escape = at
            kind = self.peek(at + 1)
            if kind in _ESCAPES:
                parts.append(_ESCAPES[kind])
                at += 2
                continue
            if kind != 0x75:  # u
                raise RapidJsonError(INVALID_ESCAPE, escape)
            code, at = self._hex4(at + 2, escape)
            if 0xD800 <= code <= 0xDBFF:
                if self.peek(at) != 0x5C or self.peek(at + 1) != 0x75:
                    raise RapidJsonError(INVALID_SURROGATE, escape)
                low, at = self._hex4(at + 2, escape)
                if not 0xDC00 <= low <= 0xDFFF:
                    raise RapidJsonError(INVALID_SURROGATE, escape)
                code = ((code - 0xD800) << 10 | (low - 0xDC00)) + 0x10000
            parts.append(chr(code).encode("utf-8", "surrogatepass"))  # a lone low one too

    def _hex4(self, at: int, escape: int) -> tuple[int, int]:
        digits = self.body[at:min(at + 4, self.end)]
        for index in range(4):
            if index >= len(digits) or digits[index] not in _HEX:
                raise RapidJsonError(INVALID_HEX, escape)
        return int(digits, 16), at + 4

def _needs_reader(text: bytes) -> bool:
    """Whether ``text`` may hold what only this reader reads as rapidjson does."""
    if b"\\u" in text and _SURROGATE_ESCAPE.search(text):
        return True
    if any(pattern.search(text) for pattern in _BIG_EXPONENTS):
        return True
    digits = text.translate(_DIGITS_AS_ZERO)
    at = digits.find(_LONG_RUN)
    while at >= 0:
        if at == 0 or digits[at - 1] != 0x2E:  # a run not after '.': an integer part
            return True
        at = digits.find(_LONG_RUN, _ZEROS.match(digits, at).end())
    return False


def _replace_last(frame: tuple[Any, int, list], value: dict) -> None:
    """Put a finished DuplicateNamesObject where its plain dict was added to its parent."""
    container, _, members = frame
    if isinstance(container, list):
        container[-1] = value
        return
    name, old = members[-1]
    members[-1] = (name, value)
    if container.get(name) is old:
        container[name] = value
