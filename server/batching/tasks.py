"""A request waiting for its batch, and how a finished batch wakes its callers.

A caller waits in its thread (``Task.wait``: a lock the batch's runner releases) or as an
asyncio future (``Task.wait_async``): a finished batch wakes each event loop once for all of
its requests, and the loop that ran the batch itself at once. Every wait ends at the request's
deadline at the latest.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import grpc
import numpy as np

from pyserving.server import request_context
from pyserving.server.errors import ServingError

T = TypeVar("T")


class Task:
    """One request (or one part of a split request) waiting for its batch."""

    __slots__ = (
        "_done",
        "context",
        "enqueued",
        "error",
        "feeds",
        "future",
        "loop",
        "outputs",
        "size",
    )

    def __init__(self, feeds: list[np.ndarray], size: int,
                 context: request_context.RequestContext,
                 future: asyncio.Future[list[np.ndarray]] | None = None) -> None:
        self.feeds = feeds
        self.size = size
        self.context = context
        self.enqueued = 0.0  # on the batcher's clock, set by its queue
        self.outputs: list[np.ndarray] | None = None  # set, or ``error``, before the wake-up
        self.error: ServingError | None = None
        # A thread waits on ``_done``; a coroutine awaits ``future`` on ``loop``.
        self.future = future
        self.loop: asyncio.AbstractEventLoop | None
        self._done: threading.Lock | None
        if future is None:
            self.loop = None
            self._done = threading.Lock()  # held until the batch thread releases it
            self._done.acquire()
        else:
            self.loop = future.get_loop()
            self._done = None

    def wait(self) -> list[np.ndarray]:
        """The task's outputs, waiting at most until the request's deadline."""
        assert self._done is not None, "made without a future: run, not run_async"
        left = _seconds_left(self.context)
        if not self._done.acquire(timeout=-1 if left is None else left):
            raise _late()
        return self.result()

    def result(self) -> list[np.ndarray]:
        """The outputs of a finished task, or the error it ended with raised."""
        if self.error is not None:
            raise self.error
        assert self.outputs is not None
        return self.outputs

    def awaitable(self) -> asyncio.Future[list[np.ndarray]]:
        assert self.future is not None, "made with a future: run_async, not run"
        return self.future

    async def wait_async(self) -> list[np.ndarray]:
        """``wait`` for a coroutine; a task given up on is dropped from its batch."""
        return await within_deadline(self.awaitable(), self.context)

    def dropped(self) -> ServingError | None:
        """Why the task must not run any more (deadline passed, caller gone), else None."""
        if self.context.expired():
            return ServingError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                "Deadline exceeded before the batch ran")
        if (self.future is not None and self.future.cancelled()) \
                or not self.context.is_active():
            return ServingError(grpc.StatusCode.CANCELLED, "Request cancelled before the batch ran")
        return None


TaskMaker = Callable[[list[np.ndarray], int], Task]  # a request's arrays and rows -> its task


def _seconds_left(context: request_context.RequestContext) -> float | None:
    """Seconds until the request's deadline (at least 0), or None without one."""
    if context.deadline is None:
        return None
    return max(context.deadline - time.monotonic(), 0.0)


def _late() -> ServingError:
    return ServingError(grpc.StatusCode.DEADLINE_EXCEEDED,
                        "Deadline exceeded while waiting for the batch")


async def within_deadline(awaitable: Awaitable[T], context: request_context.RequestContext
                           ) -> T:
    """Await ``awaitable`` until the request's deadline; cancel it then (its tasks are
    dropped from their batch: ``Task.dropped``)."""
    try:
        return await asyncio.wait_for(awaitable, _seconds_left(context))
    except asyncio.TimeoutError:
        raise _late() from None


def wake(tasks: Sequence[Task], here: asyncio.AbstractEventLoop | None = None) -> None:
    """Hand finished tasks to their callers: threads one by one, each event loop once (the
    loop ``here``, whose thread runs this, at once). A task made for neither (the one whose
    caller ran the batch) is left to its caller."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Task]] = {}
    for task in tasks:
        if task._done is not None:
            task._done.release()
        elif task.loop is not None:
            by_loop.setdefault(task.loop, []).append(task)
    for loop, waiting in by_loop.items():
        if loop is here:
            _resolve(waiting)
            continue
        with contextlib.suppress(RuntimeError):  # the loop closed: its callers are gone
            loop.call_soon_threadsafe(_resolve, waiting)


def _resolve(tasks: list[Task]) -> None:
    for task in tasks:
        future = task.awaitable()
        if not future.done():
            if task.error is not None:
                future.set_exception(task.error)
            else:
                future.set_result(task.result())


