"""The batcher's clock: what time it is, and a wait on its condition that ends at a timeout.

Injected so tests can move time by hand (as TF Serving's batching tests use FakeClockEnv): a
batch timeout is then tested without waiting for it. Production uses ``MONOTONIC``, whose
methods are ``time.monotonic`` and ``Condition.wait`` themselves (no wrapper per call).
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic scale."""

    def wait(self, condition: threading.Condition, timeout: float | None) -> None:
        """Wait on ``condition`` (held) until notified or ``timeout`` seconds of this clock
        passed; may return early (callers re-check)."""


class MonotonicClock:
    """The real clock."""

    now = staticmethod(time.monotonic)

    @staticmethod
    def wait(condition: threading.Condition, timeout: float | None) -> None:
        condition.wait(timeout)


MONOTONIC = MonotonicClock()
