"""Request IDs: the caller's ``x-request-id`` (gRPC metadata or HTTP header) when it is a sane
token, else a new one; the transport returns it (trailing metadata, response header) and log
lines about the request carry it (logging_setup.py).

A new ID is a random per-process prefix and a counter: 0.4 us, where ``uuid.uuid4().hex``
took 4.3 us on the same (busy) machine (bench/tracing_overhead.py times it). The prefix is
drawn again in a forked child, so ``--workers`` processes never share one.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable

HEADER = "x-request-id"
_MAX_LENGTH = 128
# What a caller's ID may hold: it goes into log lines, so no spaces, quotes or control codes.
_TOKEN = re.compile(rf"[A-Za-z0-9._:/+=@-]{{1,{_MAX_LENGTH}}}")


def _reset() -> None:
    global _prefix, _counter  # noqa: PLW0603 (one sequence per process, new after a fork)
    _prefix = os.urandom(6).hex() + "-"
    _counter = itertools.count(1)


_prefix = ""
_counter = itertools.count(1)
_reset()
os.register_at_fork(after_in_child=_reset)


def new_request_id() -> str:
    """A request ID unique to this process run (``3f2a9c01b7e4-1a``)."""
    return f"{_prefix}{next(_counter):x}"


def request_id(header: Callable[[str], str | None]) -> str:
    """The caller's ``x-request-id`` if it is a token of at most 128 characters, else new."""
    given = header(HEADER)
    if given and _TOKEN.fullmatch(given):
        return given
    return new_request_id()
