"""Requests on their way to the batcher: counted in per model at the transport's edge (where
the in-flight gauge counts them), counted out when they reach their batch queue or leave
without reaching it (an error, an unbatchable signature).

The batcher closes an open batch early only when its model has no such request: nothing that
could still join it. The count is a deque per model (``append``/``pop`` are atomic, so no lock
is taken per request); which request reached the batcher travels in a context variable from
the edge to ``Batcher.run``. Only the models the batcher prepared are counted, so a client
cannot grow the table with made-up names.
"""

from __future__ import annotations

import contextvars
from collections import deque
from typing import Callable

Pending = deque  # one None per request of the model on its way to the batcher


class Arrival:
    """One request counted in; ``reached`` or ``leave`` counts it out, once."""

    __slots__ = ("_pending", "_token", "_arrivals")

    def __init__(self, pending: Pending, arrivals: "Arrivals") -> None:
        self._pending: Pending | None = pending
        self._arrivals = arrivals
        pending.append(None)
        self._token = current.set(self)

    def reached(self) -> bool:
        """The request is at its batch queue (called by the batcher, its lock held): True
        when that leaves its model with no request on the way."""
        pending = self._pending
        if pending is None:
            return False
        self._pending = None
        pending.pop()
        return not pending

    def leave(self) -> None:
        """The request's edge is done; if it never reached the batcher, a batch that waited
        for it may close now."""
        try:
            current.reset(self._token)
        except ValueError:  # left from another context than it arrived in: nothing to undo
            pass
        pending = self._pending
        if pending is not None:
            self._pending = None
            pending.pop()
            if not pending:
                self._arrivals.on_settled()


class Arrivals:
    """Per model name, the requests counted in and not yet in a batch queue."""

    def __init__(self) -> None:
        self._pending: dict[str, Pending] = {}
        self.on_settled: Callable[[], None] = _nothing  # the batcher's "look again"

    def arrive(self, model: str) -> Arrival | None:
        """Count a request to ``model`` in (None for a model the batcher does not know)."""
        pending = self._pending.get(model)
        return None if pending is None else Arrival(pending, self)

    def pending(self, model: str) -> Pending:
        """The live count of ``model`` (its ``len``), made on first use."""
        return self._pending.setdefault(model, deque())


def _nothing() -> None:
    pass


current: contextvars.ContextVar[Arrival | None] = contextvars.ContextVar(
    "pyserving_batch_arrival", default=None)
