"""rapidjson 1.1.0's ParseNumber (kParseNanAndInfFlag): where a number ends, its value, and
its errors with the offsets rapidjson reports, TooBig included exactly as rapidjson decides it
(by its exponent and integer checks, not by the value: 1.5e309 is Infinity)."""

from __future__ import annotations

import re

INVALID_VALUE = "Invalid value."
TOO_BIG = "Number too big to be stored in double."
MISS_FRACTION = "Miss fraction part in number."
MISS_EXPONENT = "Miss exponent in number."

_DIGITS = re.compile(rb"[0-9]*")
_UINT64_TENTH = (2**64 - 1) // 10  # the guards of ParseNumber's 64-bit loops
_INT64_TENTH = 2**63 // 10
_DOUBLE_MAX_TENTH = 1.7976931348623157e307
_FAST_PATH_MAX = 2**53 - 1


class RapidJsonError(ValueError):
    """A parse error: rapidjson's English message and the byte offset it reports."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"{message} at offset: {offset}")
        self.offset = offset


class NumberReader:
    """ParseNumber over ``body`` up to ``end``, where MemoryStream::Peek() gives '\\0'."""

    def __init__(self, body: bytes, end: int) -> None:
        self.body = body
        self.end = end

    def peek(self, at: int) -> int:
        return self.body[at] if at < self.end else 0

    def read(self, start: int) -> tuple[int | float, int]:
        """The number at ``start`` and where it ends."""
        at = start + (self.peek(start) == 0x2D)
        minus = at > start
        char = self.peek(at)
        special: float | None = None
        digits = b""
        if 0x30 <= char <= 0x39:
            stop = at + 1 if char == 0x30 else self._digits_end(at)
            digits, at = self.body[at:stop], stop
        elif char in (0x4E, 0x49):  # N, I
            special, at = self._nan_or_inf(at, minus)
        else:
            raise RapidJsonError(INVALID_VALUE, at)
        special_end = at
        significant, is_double = _check_integer(digits, minus, start)
        counted = 0
        if self.peek(at) == 0x2E:  # .
            stop = self._digits_end(at + 1)
            if stop == at + 1:
                raise RapidJsonError(MISS_FRACTION, at + 1)
            counted = _counted_fraction_digits(int(digits or b"0"), self.body[at + 1:stop],
                                               significant, is_double)
            at, is_double = stop, True
        if self.peek(at) in (0x65, 0x45):  # e, E
            at, is_double = self._exponent(at + 1, counted, start), True
        if special is not None:
            if not is_double:
                return special, at
            # rapidjson goes on from a zero significand: "NaN.5" is 0.5
            return float((b"-0" if minus else b"0") + self.body[special_end:at]), at
        text = self.body[start:at]
        return (float(text) if is_double else int(text)), at

    def _digits_end(self, at: int) -> int:
        return _DIGITS.match(self.body, at, self.end).end()

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
        stop = self._digits_end(at)
        if stop == at:
            raise RapidJsonError(MISS_EXPONENT, at)
        if not negative:
            limit = 308 + counted
            value = 0
            for digit in self.body[at:stop]:
                value = value * 10 + digit - 0x30
                if value > limit:
                    raise RapidJsonError(TOO_BIG, start)
        return stop


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
