"""``{"b64": ...}`` strings decoded as TF Serving decodes them: absl::Base64Unescape.

absl is more lenient than RFC 4648: whitespace anywhere is skipped, padding may be left out
(but if present must be complete), and '.' pads like '='. Anything else fails.
"""

from __future__ import annotations

import binascii
import re

_CANONICAL = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_ALPHABET = re.compile(r"[A-Za-z0-9+/]*")
_SPACE = dict.fromkeys(map(ord, " \t\n\v\f\r"))  # absl::ascii_isspace, for str.translate
_PADDING_AND_SPACE = dict.fromkeys(map(ord, "=. \t\n\v\f\r"))
_EXPECTED_PADDING = {0: 0, 2: 2, 3: 1}  # by the number of data characters modulo 4


def unescape(text: str) -> bytes | None:
    """The decoded bytes, or None where absl::Base64Unescape returns false."""
    if _CANONICAL.fullmatch(text):
        return binascii.a2b_base64(text)
    ends = [at for at in (text.find("="), text.find(".")) if at >= 0]
    pad = min(ends) if ends else len(text)
    data = text[:pad].translate(_SPACE)
    tail = text[pad:]
    if not _ALPHABET.fullmatch(data) or tail.translate(_PADDING_AND_SPACE):
        return None
    remainder = len(data) % 4
    if remainder == 1:
        return None  # six bits left over
    padding = len(tail.translate(_SPACE))
    if padding not in (0, _EXPECTED_PADDING[remainder]):
        return None
    return binascii.a2b_base64(data + "=" * (-len(data) % 4))  # ignores the unused low bits
