"""Dynamic batching: concurrent requests to one signature become one TensorFlow call.

One queue per (model version, signature, fetches, input shapes); a shared pool of
``num_batch_threads`` threads runs batches, as TF Serving's SharedBatchScheduler does. A
request waits in its queue until the open batch is full or ``batch_timeout_micros`` passed;
inputs are concatenated on dimension 0 (padded up to an allowed batch size), and each caller
gets its own slice of every output. A failing batch is re-run request by request, so one bad
input never fails its batch-mates.

Callers wait either in their thread (``run``) or as an asyncio future (``run_async``, the
event-loop transports): a finished batch wakes each event loop once for all of its requests.
Batches run on the batch threads: running every fast one on the event loop instead measured
0.84-0.93x the requests/s on a model whose batches take over 1 ms (bench/README.md). The one
exception is a lone batch (below) of a signature measured fast (``inline.py``): the coroutine
whose request closed it runs it on its own loop, through the same steps as a batch thread.

Unlike TF Serving, a batch opened by a lone request (no other request to its model in flight)
closes as soon as every request in flight to the model has joined it (``arrivals.py``): it
does not wait out ``batch_timeout_micros`` for companions that cannot come. Under load the
semantics are TF Serving's. ``wait_for_full_batch`` restores TF Serving's wait everywhere.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import NamedTuple

import numpy as np

from pyserving.server import request_context
from pyserving.server.batching import arrivals
from pyserving.server.batching.clock import MONOTONIC, Clock
from pyserving.server.batching.config import (
    BatchingOptions,
    check_thread_count,
    queue_options,
    read_batching_parameters,
)
from pyserving.server.batching.padding import pad_to_common_shape, round_up
from pyserving.server.batching.queue import QUEUE_FULL, BatchQueue
from pyserving.server.batching.tasks import Task, TaskMaker, wake, within_deadline
from pyserving.server.errors import (
    ServingError,
    failed_precondition,
    internal,
    invalid_argument,
    unavailable,
)
from pyserving.server.servable import Servable, SignatureDef

log = logging.getLogger(__name__)

PER_MODEL_FILE = "batching_params.pbtxt"

Feeds = Sequence[tuple[str, np.ndarray]]
BatchObserver = Callable[[str, int, int, list[float]], None]  # model, size, padded, waits (s)


class BatchRun(NamedTuple):
    """One batch that ran, for the observers of its stages (metrics, tracing)."""

    model: str
    size: int
    padded: int
    started: float  # the batcher's clock (time.monotonic() in a server) when its run began
    seconds: float  # its TensorFlow run
    requests: list[tuple[request_context.RequestContext, float]]  # each with its enqueue time


BatchRunObserver = Callable[[BatchRun], None]
__all__ = ["QUEUE_FULL", "STOPPED", "BatchRun", "Batcher", "Feeds"]
STOPPED = "The batch scheduler is stopped: the server is shutting down"

LONE_TURNS = 3  # turns of the event loop a lone batch gives to requests the transport holds
_UNPREPARED = BatchingOptions()  # marks a version ``prepare`` has not seen


class _Plan(NamedTuple):
    """Where a batchable call queues (servable, feed names, fetches, input signature) and
    what it adds."""

    key: tuple
    options: BatchingOptions
    arrays: list[np.ndarray]
    size: int


class Batcher:
    """Runs signature calls through per-signature batch queues on a shared thread pool."""

    def __init__(self, options: BatchingOptions, observers: Sequence[BatchObserver] = (), *,
                 per_model_parameters: bool = False, wait_for_full_batch: bool = False,
                 clock: Clock = MONOTONIC,
                 run_observers: Sequence[BatchRunObserver] = ()) -> None:
        """``wait_for_full_batch``: TF Serving's behaviour, a batch waits until full or timed
        out even when nothing can join it. Otherwise the transports count each request to a
        model of ``traffic`` in and out (``traffic`` is None when waiting for full batches).
        ``run_observers`` hear of each batch that ran (stage metrics, tracing)."""
        check_thread_count(options)
        self.options = options
        self._clock = clock
        self._now = clock.now
        self.traffic = None if wait_for_full_batch else \
            arrivals.Traffic(self._look_again, self._now)
        self._observers = list(observers)
        self._run_observers = list(run_observers)
        self._per_model = per_model_parameters
        self._model_options: weakref.WeakKeyDictionary[Servable, BatchingOptions | None] = \
            weakref.WeakKeyDictionary()
        self._lock = threading.Condition()
        self._queues: dict[tuple, BatchQueue] = {}
        self._queue_list: list[BatchQueue] = []  # the same queues, scanned on every wake-up
        self._stopped = False
        self._threads = [threading.Thread(target=self._work, name=f"batch-{i}", daemon=True)
                         for i in range(options.num_batch_threads)]
        for thread in self._threads:
            thread.start()

    def run(self, servable: Servable, signature: SignatureDef, feeds: Feeds,
            fetches: Sequence[str]) -> list[np.ndarray]:
        """Like ``servable.run``, batched with concurrent calls of the same shape; waits at
        most until the request's deadline."""
        planned = self._plan(servable, signature, feeds, fetches)
        if planned is None:
            return servable.run(feeds, fetches)
        context = request_context.current.get()
        tasks, _ = self._enqueue(planned, lambda part, rows: Task(part, rows, context))
        if len(tasks) == 1:
            return tasks[0].wait()
        return _joined([task.wait() for task in tasks])

    async def run_async(self, servable: Servable, signature: SignatureDef, feeds: Feeds,
                        fetches: Sequence[str], executor: Executor) -> list[np.ndarray]:
        """``run`` for a coroutine: waits as a future; unbatchable calls run on ``executor``.
        A lone batch of a signature measured fast that this request closes runs here, on the
        loop (``inline.py``), after ``LONE_TURNS`` turns of the loop: requests the transport
        already holds get in, and join it or show that the model is under load."""
        loop = asyncio.get_running_loop()
        planned = self._plan(servable, signature, feeds, fetches)
        if planned is None:
            return await loop.run_in_executor(executor, contextvars.copy_context().run,
                                              servable.run, feeds, fetches)
        context = request_context.current.get()
        tasks, queue = self._enqueue(
            planned, lambda part, rows: Task(part, rows, context, loop.create_future()),
            caller_may_run=True)
        if queue is not None:
            batch = await self._take_lone(queue, tasks[0])
            if batch is not None:
                return self._run_here(queue, batch, tasks[0], loop)
        if len(tasks) == 1:
            return await tasks[0].wait_async()
        return _joined(await within_deadline(
            asyncio.gather(*(task.awaitable() for task in tasks)), context))

    def _plan(self, servable: Servable, signature: SignatureDef, feeds: Feeds,
              fetches: Sequence[str]) -> _Plan | None:
        """Where a call queues and what it adds, or None to run it unbatched."""
        options = self._options_for(servable)
        if options is None or not feeds or not _batchable(signature, feeds):
            return None
        size = int(feeds[0][1].shape[0])
        if size > options.max_batch_size:
            raise invalid_argument(f"Task size {size} is larger than maximum input batch size "
                                   f"{options.max_batch_size}")
        pad = options.pad_variable_length_inputs
        names = tuple(name for name, _ in feeds)
        key = (servable, names, tuple(fetches),
               tuple((a.dtype.str, a.ndim if pad else a.shape[1:]) for _, a in feeds))
        return _Plan(key, options, [array for _, array in feeds], size)

    def _enqueue(self, plan: _Plan, make: TaskMaker, caller_may_run: bool = False
                 ) -> tuple[list[Task], BatchQueue | None]:
        """Add a request to its queue as one task or more, made by ``make``, and tell the
        batch threads. Finding the queue and adding to it is one step under the lock: a queue
        forgotten in between would hold its tasks where no batch thread looks. With
        ``caller_may_run``, when the request closed a lone batch of a fast signature as one
        task, the batch threads are not told, and its queue is returned for the caller to
        ``_take_lone`` (else None)."""
        with self._lock:
            if self._stopped:  # no batch thread would look at it any more
                raise unavailable(STOPPED)
            queue = self._queue(plan)
            tasks, moved = queue.add_request(plan.arrays, plan.size, make, self._now())
            if caller_may_run and queue.times.fast and len(tasks) == 1 \
                    and queue.lone_ready():
                queue.reserved = True
                return tasks, queue
            if moved:  # else the batch threads' current wait still holds
                self._lock.notify(len(tasks))
            return tasks, None

    async def _take_lone(self, queue: BatchQueue, mine: Task) -> list[Task] | None:
        """After ``LONE_TURNS`` turns of the event loop, the lone batch holding ``mine``, taken
        off its queue for the caller to run, if it still closes early and no one took it; else
        None and the batch threads are told (it waits as any batch, or ran already). The turns
        are what tell one client from many: on a loop that runs every batch inline a request
        is never in flight beside another one, so the requests waiting in the transport
        would otherwise never be counted (a gRPC call takes a few turns from its arrival to
        its handler: with one turn, at 8 clients 26-39% of batches still ran one row on the
        loop; with three, 2%)."""
        try:
            for _ in range(LONE_TURNS):
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            mine.awaitable().cancel()  # dropped from its batch
            self._release(queue)
            raise
        with self._lock:
            if queue.lone_ready() and mine in queue.batches[0] and not self._stopped:
                return queue.take(self._now())
        self._release(queue)
        return None

    def _release(self, queue: BatchQueue) -> None:
        """Leave a reserved lone batch to the batch threads."""
        with self._lock:
            queue.reserved = False
            self._lock.notify()

    def _run_here(self, queue: BatchQueue, batch: list[Task], mine: Task,
                  loop: asyncio.AbstractEventLoop) -> list[np.ndarray]:
        """Run a batch taken off its queue in the caller's thread (on ``loop``), exactly as a
        batch thread would; the caller's own task is answered by return, the others woken."""
        mine.future = mine.loop = None
        self._execute(queue, batch, loop)
        return mine.result()

    def _look_again(self) -> None:
        """A request to a model with a born-alone batch left without joining it, and every
        other one in flight is queued: that batch may close now."""
        with self._lock:
            self._lock.notify()

    def prepare(self, servable: Servable) -> None:
        """Check a loading version's queue options, so bad ones fail its load as in TF
        Serving: the server's, or with per-model parameters its batching_params.pbtxt (whose
        num_batch_threads TF Serving ignores: the pool is the server's), or none without one:
        TF Serving batches such a model not at all."""
        options: BatchingOptions | None = self.options
        if self._per_model:
            path = os.path.join(servable.path, PER_MODEL_FILE)
            options = read_batching_parameters(path) if os.path.exists(path) else None
        if options is not None:
            options = queue_options(options)
            if self.traffic is not None:
                self.traffic.track(servable.name)  # the edges count its requests from now
        with self._lock:
            self._model_options[servable] = options

    def _options_for(self, servable: Servable) -> BatchingOptions | None:
        """The options ``prepare`` settled for a version, or None to run it unbatched."""
        options = self._model_options.get(servable, _UNPREPARED)  # one lookup, no lock
        if options is _UNPREPARED:
            self.prepare(servable)
            options = self._model_options.get(servable)
        return options

    def _queue(self, plan: _Plan) -> BatchQueue:
        """The queue of a plan's key, made on first use (the lock is held)."""
        queue = self._queues.get(plan.key)
        if queue is None:
            servable, names, fetches, _ = plan.key
            traffic = None if self.traffic is None else self.traffic.track(servable.name)
            queue = self._queues[plan.key] = BatchQueue(servable, names, fetches, plan.options,
                                                    traffic)
            self._queue_list.append(queue)
        return queue

    def _work(self) -> None:
        while True:
            with self._lock:
                queue = self._next_ready()
                while queue is None:
                    if self._stopped:
                        return
                    self._clock.wait(self._lock, self._wait_time())
                    queue = self._next_ready()
                batch = queue.take(self._now())
            self._execute(queue, batch)

    def _next_ready(self) -> BatchQueue | None:
        """The queue whose first batch has been ready longest (the lock is held)."""
        now = self._now()
        best, best_at = None, None
        retired = False
        for queue in self._queue_list:
            at = queue.ready_at()
            if at is None:
                retired = retired or queue.servable.retired
                continue
            if self._stopped:
                at = 0.0  # stopping: run what is queued now, so no caller waits forever
            if at <= now and (best_at is None or at < best_at):
                best, best_at = queue, at
        if retired:
            self._forget_retired()
        return best

    def _forget_retired(self) -> None:
        """Drop the empty queues of versions that are unloaded and hold no request any more
        (the lock is held): a request still counted in may yet enqueue."""
        self._queue_list = [q for q in self._queue_list
                            if not (q.idle() and q.servable.drained)]
        kept = set(map(id, self._queue_list))
        self._queues = {key: q for key, q in self._queues.items() if id(q) in kept}

    def _wait_time(self) -> float | None:
        pending = [at for at in (queue.ready_at() for queue in self._queue_list)
                   if at is not None]
        return max(min(pending) - self._now(), 0.0) if pending else None

    def _execute(self, queue: BatchQueue, batch: list[Task],
                 here: asyncio.AbstractEventLoop | None = None) -> None:
        """Run a batch taken off ``queue`` and wake its callers: on a batch thread, or on the
        event loop ``here`` when a caller runs its lone batch itself."""
        live: list[Task] = []
        dropped: list[Task] = []
        for task in batch:
            task.error = task.dropped()
            (live if task.error is None else dropped).append(task)
        wake(dropped, here)
        if not live:
            return
        started = self._now()
        try:
            outputs, padded = self._run_batch(queue, live)
        except ServingError as error:
            if len(live) == 1:
                live[0].error = error
                wake(live, here)
                return
            log.info("batch of %d failed (%s); running its requests one by one", len(live), error)
            for task in live:
                self._execute(queue, [task], here)
            return
        except Exception as error:  # a bug must not leave callers waiting forever
            log.exception("batch of %d failed", len(live))
            for task in live:
                task.error = internal(f"Batch failed: {error}")
            wake(live, here)
            return
        seconds = self._now() - started
        if here is not None:
            queue.times.ran_inline(seconds)
        elif len(live) == 1:
            queue.times.ran_on_thread(seconds)
        start = 0
        for task in live:
            task.outputs = [output[start:start + task.size] for output in outputs]
            start += task.size
        if self._observers:  # before the callers wake: their answers follow the metrics
            waits = [started - task.enqueued for task in live]
            for observer in self._observers:
                observer(queue.servable.name, start, padded, waits)
        if self._run_observers:
            run = BatchRun(queue.servable.name, start, padded, started, seconds,
                           [(task.context, task.enqueued) for task in live])
            for run_observer in self._run_observers:
                run_observer(run)
        wake(live, here)

    def _run_batch(self, queue: BatchQueue, tasks: list[Task]) -> tuple[list[np.ndarray], int]:
        size = sum(task.size for task in tasks)
        padded = round_up(size, queue.options.allowed_batch_sizes)
        feeds = []
        for i, name in enumerate(queue.feed_names):
            parts = [task.feeds[i] for task in tasks]
            if queue.options.pad_variable_length_inputs:
                parts = pad_to_common_shape(parts)
            merged = parts[0] if len(parts) == 1 else np.concatenate(parts)
            if padded > size:
                filler = np.repeat(merged[:1], padded - size, axis=0)
                merged = np.concatenate([merged, filler])
            feeds.append((name, merged))
        # TF Serving bounds a batch's run by the latest deadline of its requests.
        deadlines = [task.context.deadline for task in tasks
                     if task.context.deadline is not None]
        latest = max(deadlines) if len(deadlines) == len(tasks) else None
        token = request_context.current.set(request_context.RequestContext(latest))
        try:
            outputs = queue.servable.run(feeds, queue.fetches)
        finally:
            request_context.current.reset(token)
        for output in outputs:
            if output.ndim == 0:
                raise failed_precondition("Batched output tensor has 0 dimensions")
            if output.shape[0] != padded:
                raise failed_precondition(
                    "Batched output tensor's 0th dimension does not equal the sum of the 0th "
                    "dimension sizes of the input tensors")
        return outputs, padded

    def runs_lone_batches_inline(self, model: str) -> bool:
        """Whether some signature of ``model`` runs its lone batches on the caller's loop."""
        with self._lock:
            return any(queue.times.fast for queue in self._queue_list
                       if queue.servable.name == model)

    def add_run_observer(self, observer: BatchRunObserver) -> None:
        """Tell ``observer`` of each batch that runs from now on (benches, embedders)."""
        self._run_observers = [*self._run_observers, observer]

    def queue_depths(self) -> dict[str, int]:
        """Tasks (requests, or their parts when split) waiting in each model's queues."""
        depths: dict[str, int] = {}
        with self._lock:
            for queue in self._queue_list:
                name = queue.servable.name
                depths[name] = depths.get(name, 0) + queue.waiting()
            self._forget_retired()
        return depths

    def stop(self) -> None:
        """Run what is queued, refuse new work with UNAVAILABLE, end the batch threads."""
        with self._lock:
            self._stopped = True
            self._lock.notify_all()
        for thread in self._threads:
            thread.join()


def _joined(parts: list[list[np.ndarray]]) -> list[np.ndarray]:
    """The outputs of a split request's parts, concatenated back in order."""
    return [np.concatenate([outputs[i] for outputs in parts]) for i in range(len(parts[0]))]


def _batchable(signature: SignatureDef, feeds: Feeds) -> bool:
    """Batch only when every input has a dimension 0 of one common size and no output of the
    signature is declared without one (scalars and the like run unbatched)."""
    sizes = {array.shape[0] if array.ndim else None for _, array in feeds}
    if len(sizes) != 1 or None in sizes or 0 in sizes:
        return False
    for info in signature.outputs.values():
        shape = info.tensor_shape
        if not shape.unknown_rank and len(shape.dim) == 0:
            return False
    return True
