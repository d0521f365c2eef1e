"""A one-line progress bar on a terminal: rows done, rows/s and the time left."""

from __future__ import annotations

import time
from typing import TextIO

_WIDTH = 24
_INTERVAL = 0.2  # seconds between redraws


def duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Counts rows toward ``total``; draws on ``stream`` only when ``enabled``."""

    def __init__(self, total: int, stream: TextIO, *, enabled: bool, done: int = 0) -> None:
        self.total = total
        self.done = done
        self.sent = 0  # rows this run sent (resumed rows excluded from the rate)
        self._stream = stream
        self._enabled = enabled
        self._started = time.monotonic()
        self._drawn = 0.0

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._started

    @property
    def rate(self) -> float:
        """Rows per second this run."""
        return self.sent / self.elapsed if self.elapsed > 0 else 0.0

    def advance(self, rows: int) -> None:
        self.done += rows
        self.sent += rows
        now = time.monotonic()
        if self._enabled and (now - self._drawn >= _INTERVAL or self.done >= self.total):
            self._drawn = now
            self._stream.write("\r" + self.line())
            self._stream.flush()

    def line(self) -> str:
        fraction = self.done / self.total if self.total else 1.0
        filled = int(fraction * _WIDTH)
        bar = "#" * filled + "." * (_WIDTH - filled)
        rate = self.rate
        eta = duration((self.total - self.done) / rate) if rate else "?"
        return (f"[{bar}] {self.done}/{self.total} rows {fraction:4.0%}  "
                f"{rate:,.0f} rows/s  ETA {eta} ")

    def close(self) -> None:
        if self._enabled and self._drawn:
            self._stream.write("\n")
            self._stream.flush()
