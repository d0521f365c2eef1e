"""A clock the test moves by hand, for the batcher (as TF Serving's batching tests use
test_util::FakeClockEnv): a batch timeout passes when the test says so, never by waiting."""

from __future__ import annotations

import threading

REAL_CAP = 30.0  # seconds a wait may block for real: a stuck test fails instead of hanging


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Lock()
        self._waits: list[tuple[threading.Condition, float | None]] = []

    def now(self) -> float:
        return self._now

    def wait(self, condition: threading.Condition, timeout: float | None) -> None:
        if timeout is not None and timeout <= 0:
            return
        entry = (condition, None if timeout is None else self._now + timeout)
        with self._lock:
            self._waits.append(entry)
        try:
            condition.wait(REAL_CAP)  # ``advance`` or the batcher's own notify ends it
        finally:
            with self._lock:
                self._waits.remove(entry)

    def advance(self, seconds: float) -> None:
        """Move time on and wake every wait (each re-checks what time it is)."""
        with self._lock:
            self._now += seconds
            conditions = {id(condition): condition for condition, _ in self._waits}
        for condition in conditions.values():
            with condition:
                condition.notify_all()

    def deadlines(self) -> list[float | None]:
        """When each current wait times out (None: waits for a notify only)."""
        with self._lock:
            return [deadline for _, deadline in self._waits]
