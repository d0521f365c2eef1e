"""Admission: a bound on each model's in-flight requests, so overload fails fast instead of
queueing without bound (``--max_in_flight_requests_per_model``).

A request holds its model's slot from admission until its call returns. A slot whose caller
went away (cancelled, or its deadline passed) no longer counts once the model is full: the
next request takes it over, even while an abandoned TensorFlow run is still finishing.
"""

from __future__ import annotations

import threading

import grpc

from pyserving.server import request_context
from pyserving.server.errors import ServingError, unavailable
from pyserving.server.request_context import RequestContext

DEADLINE_PASSED = "Deadline exceeded before the request was admitted"
CALLER_GONE = "Request cancelled before it was admitted"


class Slot:
    """One admitted request; leaving the ``with`` block frees the slot."""

    __slots__ = ("_limit", "context", "model")

    def __init__(self, limit: InFlightLimit, model: str, context: RequestContext) -> None:
        self._limit = limit
        self.model = model
        self.context = context

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._limit.release(self)

    def abandoned(self) -> bool:
        return self.context.expired() or not self.context.is_active()


class InFlightLimit:
    """At most ``limit`` requests in flight per model name (0 or less: no limit)."""

    def __init__(self, limit: int, flag: str = "--max_in_flight_requests_per_model") -> None:
        self.limit = limit
        self._flag = flag
        self._lock = threading.Lock()
        self._held: dict[str, set[Slot]] = {}

    def admit(self, model: str) -> Slot:
        """A slot for a request to ``model``; raises UNAVAILABLE when the model is full, and
        DEADLINE_EXCEEDED / CANCELLED for a request that no longer needs an answer."""
        context = request_context.current.get()
        if context.expired():
            raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, DEADLINE_PASSED)
        if not context.is_active():
            raise ServingError(grpc.StatusCode.CANCELLED, CALLER_GONE)
        slot = Slot(self, model, context)
        if self.limit <= 0:
            return slot
        with self._lock:
            held = self._held.setdefault(model, set())
            if len(held) >= self.limit:
                held.difference_update([other for other in held if other.abandoned()])
                if len(held) >= self.limit:
                    raise unavailable(
                        f"Too many requests in flight for model {model}: the limit is "
                        f"{self.limit} ({self._flag}); retry later")
            held.add(slot)
        return slot

    def release(self, slot: Slot) -> None:
        """Free a slot (again: a no-op)."""
        if self.limit <= 0:
            return
        with self._lock:
            held = self._held.get(slot.model)
            if held is not None:
                held.discard(slot)
                if not held:
                    del self._held[slot.model]

    def in_flight(self, model: str) -> int:
        """Requests to ``model`` holding a slot now."""
        with self._lock:
            return len(self._held.get(model, ()))
