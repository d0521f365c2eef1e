"""rapidjson 1.1.0's reader as TF Serving runs it, for the bodies orjson refuses.

json_tensor.cc ParseJson reads the body through ``EncodedInputStream<UTF8<>, MemoryStream>``
(leading 0xEF, 0xBB, 0xBF bytes skipped) with kParseIterativeFlag | kParseNanAndInfFlag |
kParseStopWhenDoneFlag and no encoding validation. This is a port of that reader: same
accepted documents (NaN/Inf, raw non-UTF-8 bytes in strings, lone low surrogates, no nesting
limit, bytes after the document ignored) and the same error and offset. Strings come back
decoded with ``surrogateescape``, so ``str.encode("utf-8", "surrogateescape")`` gives the bytes
rapidjson holds. Objects keep the first of duplicate names, as FindMember finds it.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

# The error texts of rapidjson/error/en.h.
EMPTY = "The document is empty."
INVALID_VALUE = "Invalid value."
MISS_NAME = "Missing a name for object member."
MISS_COLON = "Missing a colon after a name of object member."
MISS_COMMA_OR_CURLY = "Missing a comma or '}' after an object member."
MISS_COMMA_OR_SQUARE = "Missing a comma or ']' after an array element."
INVALID_HEX = "Incorrect hex digit after \\u escape in string."
INVALID_SURROGATE = "The surrogate pair in string is invalid."
INVALID_ESCAPE = "Invalid escape character in string."
MISS_QUOTE = "Missing a closing quotation mark in string."
TOO_BIG = "Number too big to be stored in double."
MISS_FRACTION = "Miss fraction part in number."
MISS_EXPONENT = "Miss exponent in number."


class RapidJsonError(ValueError):
    """A parse error: rapidjson's English message and the byte offset it reports."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"{message} at offset: {offset}")
        self.offset = offset


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
_WHITESPACE = re.compile(rb"[ \t\n\r]*")
_DIGITS = re.compile(rb"[0-9]*")
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

_UINT64_TENTH = (2**64 - 1) // 10  # the guards of ParseNumber's 64-bit loops
_INT64_TENTH = 2**63 // 10
_DOUBLE_MAX_TENTH = 1.7976931348623157e307
_FAST_PATH_MAX = 2**53 - 1


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

    def peek(self, at: int) -> int:
        return self.body[at] if at < self.end else 0

    def parse(self) -> Any:
        at = 0
        for bom in (0xEF, 0xBB, 0xBF):
            if self.peek(at) == bom:
                at += 1
        state = START
        root: Any = None
        stack: list[tuple[Any, int, list]] = []  # (container, state to return to, members)
        at = _WHITESPACE.match(self.body, at).end()
        while at < self.end:
            char = self.body[at]
            if char in b"[{":
                if state not in _VALUE_AFTER:
                    break
                subtree = self._subtree(at) if len(stack) < _SHORTCUT_DEPTH else None
                if subtree is not None:
                    value, at = subtree
                    if state == START:
                        return value
                    self._add(stack[-1], value)
                    state = _VALUE_AFTER[state]
                    at = _WHITESPACE.match(self.body, at).end()
                    continue
                container: Any = [] if char == 0x5B else {}
                members: list = []
                if stack:
                    self._add(stack[-1], container)
                else:
                    root = container
                stack.append((container, _VALUE_AFTER[state], members))
                state = ARRAY_INITIAL if char == 0x5B else OBJECT_INITIAL
                at += 1
            elif char in b"]}":
                closes_array = char == 0x5D
                if state not in ((ARRAY_INITIAL, ELEMENT, ELEMENT_DELIMITER) if closes_array
                                 else (OBJECT_INITIAL, MEMBER_VALUE, MEMBER_DELIMITER)):
                    break
                if state == ELEMENT_DELIMITER:  # no kParseTrailingCommasFlag
                    raise RapidJsonError(INVALID_VALUE, at)
                if state == MEMBER_DELIMITER:
                    raise RapidJsonError(MISS_NAME, at)
                container, state, members = stack.pop()
                if not closes_array and len(members) > len(container):
                    container = DuplicateNamesObject(members)
                    if stack:
                        _replace_last(stack[-1], container)
                at += 1
                if not stack:
                    return root if container is root or closes_array else container
            elif char == 0x2C:  # ,
                if state == ELEMENT:
                    run = self._numbers(stack[-1][0], at)
                    state, at = (ELEMENT, run) if run else (ELEMENT_DELIMITER, at + 1)
                elif state == MEMBER_VALUE:
                    state, at = MEMBER_DELIMITER, at + 1
                else:
                    break
            elif char == 0x3A:  # :
                if state != MEMBER_KEY:
                    break
                state = KEY_VALUE_DELIMITER
                at += 1
            elif state in (OBJECT_INITIAL, MEMBER_DELIMITER):
                if char != 0x22:
                    break
                key, at = self._string(at)
                stack[-1][2].append((key, None))
                state = MEMBER_KEY
            elif state in _VALUE_AFTER:
                value, at = self._value(at)
                if state == START:
                    return value
                self._add(stack[-1], value)
                state = _VALUE_AFTER[state]
            else:
                break
            at = _WHITESPACE.match(self.body, at).end()
        raise RapidJsonError(_STATE_ERROR[state], at)

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
        return self._number(at)

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

    def _number(self, start: int) -> tuple[int | float, int]:
        """ParseNumber: where it ends, what it fails with, and TooBig exactly as rapidjson."""
        at = start + (self.peek(start) == 0x2D)
        minus = at > start
        char = self.peek(at)
        special: float | None = None
        digits = b""
        if 0x30 <= char <= 0x39:
            end = at + 1 if char == 0x30 else _DIGITS.match(self.body, at, self.end).end()
            digits, at = self.body[at:end], end
        elif char in (0x4E, 0x49):  # N, I
            special, at = self._nan_or_inf(at, minus)
        else:
            raise RapidJsonError(INVALID_VALUE, at)
        special_end = at
        significant, is_double = _check_integer(digits, minus, start)
        counted = 0
        if self.peek(at) == 0x2E:  # .
            at += 1
            end = _DIGITS.match(self.body, at, self.end).end()
            if end == at:
                raise RapidJsonError(MISS_FRACTION, at)
            counted = _counted_fraction_digits(int(digits or b"0"), self.body[at:end],
                                               significant, is_double)
            at, is_double = end, True
        if self.peek(at) in (0x65, 0x45):  # e, E
            at, is_double = self._exponent(at + 1, counted, start), True
        if special is not None:
            if not is_double:
                return special, at
            # rapidjson goes on from a zero significand: "NaN.5" is 0.5
            return float((b"-0" if minus else b"0") + self.body[special_end:at]), at
        text = self.body[start:at]
        return (float(text) if is_double else int(text)), at

    def _nan_or_inf(self, at: int, minus: bool) -> tuple[float, int]:
        """Consume(N) && Consume(a) && Consume(N), else Consume(I) && ...: as in rapidjson,
        a partly matched word stays taken."""
        matched, at = self._consume(at, b"NaN")
        if matched:
            return float("nan"), at
        matched, at = self._consume(at, b"Inf")
        if not matched:
            raise RapidJsonError(INVALID_VALUE, at)
        if self.peek(at) == 0x69:  # i
            matched, at = self._consume(at, b"inity")
            if not matched:
                raise RapidJsonError(INVALID_VALUE, at)
        return -float("inf") if minus else float("inf"), at

    def _consume(self, at: int, word: bytes) -> tuple[bool, int]:
        for expected in word:
            if self.peek(at) != expected:
                return False, at
            at += 1
        return True, at

    def _exponent(self, at: int, counted: int, start: int) -> int:
        """Past 'e': the end of the exponent; TooBig once it passes 308 + counted digits."""
        negative = self.peek(at) == 0x2D
        at += self.peek(at) in (0x2B, 0x2D)
        end = _DIGITS.match(self.body, at, self.end).end()
        if end == at:
            raise RapidJsonError(MISS_EXPONENT, at)
        if not negative:
            limit = 308 + counted
            value = 0
            for digit in self.body[at:end]:
                value = value * 10 + digit - 0x30
                if value > limit:
                    raise RapidJsonError(TOO_BIG, start)
        return end


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


def _check_integer(digits: bytes, minus: bool, start: int) -> tuple[int, bool]:
    """(significandDigit, whether it became a double) of an integer part; TooBig where
    rapidjson's double accumulation passes DBL_MAX / 10."""
    if len(digits) <= 18:
        return max(len(digits) - 1, 0), False
    tenth, last = (_INT64_TENTH, 8) if minus else (_UINT64_TENTH, 5)
    value = 0
    for index, digit in enumerate(digits):
        digit -= 0x30
        if value >= tenth and (value != tenth or digit > last):
            double = float(value)
            for rest in digits[index:]:
                if double >= _DOUBLE_MAX_TENTH:
                    raise RapidJsonError(TOO_BIG, start)
                double = double * 10 + (rest - 0x30)
            return index - 1, True
        value = value * 10 + digit
    return len(digits) - 1, False


def _counted_fraction_digits(integer: int, fraction: bytes, significant: int,
                             is_double: bool) -> int:
    """-expFrac of ParseNumber: the fraction digits it counts before 17 significant ones."""
    counted = 0
    index = 0
    if not is_double:
        value = integer
        while index < len(fraction) and value <= _FAST_PATH_MAX:
            value = value * 10 + fraction[index] - 0x30
            counted += 1
            significant += value != 0
            index += 1
        nonzero = value != 0
    else:
        nonzero = True
    for digit in fraction[index:]:
        if significant >= 17:
            break
        counted += 1
        nonzero = nonzero or digit != 0x30
        significant += nonzero
    return counted
