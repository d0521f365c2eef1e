"""The time a model's shadow requests may take: checked by callers' threads, spent by the
shadow thread (shadow.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from pyserving.server.rollout.plan import DEFAULT_SHADOW_BUDGET

_BURST_SECONDS = 0.05  # shadow time saved up while idle that a busy spell may spend at once


class ShadowBudget:
    """A model's shadow time budget: ``rate`` seconds of shadow work per second of wall time,
    with a little saved up while idle. Callers' threads check it and the shadow thread spends
    it, so every read and write is under one lock."""

    def __init__(self, rate: float = DEFAULT_SHADOW_BUDGET,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = _BURST_SECONDS
        self._refilled = clock()

    def spent(self) -> bool:
        """Whether a shadow request must be dropped now: the budget is used up."""
        now = self._clock()
        with self._lock:
            self._tokens = min(_BURST_SECONDS,
                               self._tokens + max(now - self._refilled, 0.0) * self._rate)
            self._refilled = max(now, self._refilled)
            return self._tokens <= 0

    def spend(self, seconds: float) -> None:
        with self._lock:
            self._tokens -= seconds

    @property
    def seconds_left(self) -> float:
        with self._lock:
            return self._tokens
