"""What the core may know about the request being served: its deadline, whether the caller
still waits, its headers (gRPC metadata or HTTP headers), its request ID and, with
--enable_tracing, its span. Transports set it per call; the batcher reads it to drop dead
requests (and to trace its batches), the rollout to route by a sticky key, log lines to name
the request."""

from __future__ import annotations

import contextvars
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RequestContext:
    deadline: float | None = None  # time.monotonic() value; None when the caller set none
    is_active: Callable[[], bool] = lambda: True
    header: Callable[[str], str | None] = lambda name: None  # by lower-case name, first value
    request_id: str = ""  # x-request-id, given or generated (request_id.py)
    trace: Any = None  # tracing.RequestTrace with --enable_tracing, else None

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline


NO_CONTEXT = RequestContext()
current: contextvars.ContextVar[RequestContext] = contextvars.ContextVar(
    "pyserving_request", default=NO_CONTEXT)


def narrow_deadline(seconds: float) -> contextvars.Token[RequestContext]:
    """Bound the current request's deadline to ``seconds`` from now (a V2 request's
    ``timeout`` parameter); ``current.reset(token)`` restores it."""
    context = current.get()
    deadline = time.monotonic() + seconds
    if context.deadline is not None:
        deadline = min(deadline, context.deadline)
    return current.set(dataclasses.replace(context, deadline=deadline))
