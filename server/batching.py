"""Dynamic batching: concurrent requests to one signature become one TensorFlow call.

One queue per (model version, signature, fetches, input shapes); a shared pool of
``num_batch_threads`` threads runs batches, as TF Serving's SharedBatchScheduler does. A
request waits in its queue until the open batch is full or ``batch_timeout_micros`` passed;
inputs are concatenated on dimension 0 (padded up to an allowed batch size), and each caller
gets its own slice of every output. A failing batch is re-run request by request, so one bad
input never fails its batch-mates.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Sequence

import grpc
import numpy as np

from pyserving.server import request_context
from pyserving.server.batching_config import BatchingOptions, read_batching_parameters
from pyserving.server.errors import ServingError, failed_precondition, invalid_argument
from pyserving.server.servable import Servable, SignatureDef

log = logging.getLogger(__name__)

PER_MODEL_FILE = "batching_params.pbtxt"

Feeds = Sequence[tuple[str, np.ndarray]]
BatchObserver = Callable[[str, int, int, list[float]], None]  # model, size, padded, waits (s)


@dataclass(eq=False)
class _Task:
    feeds: list[np.ndarray]
    size: int
    context: request_context.RequestContext
    enqueued: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    outputs: list[np.ndarray] | None = None
    error: ServingError | None = None

    def finish(self, outputs: list[np.ndarray] | None = None,
               error: ServingError | None = None) -> None:
        self.outputs, self.error = outputs, error
        self.done.set()


class _Queue:
    """Tasks for one signature of one servable, grouped into batches of at most max size."""

    def __init__(self, servable: Servable, feed_names: tuple[str, ...],
                 fetches: tuple[str, ...], options: BatchingOptions) -> None:
        self.servable = servable
        self.feed_names = feed_names
        self.fetches = fetches
        self.options = options
        self.batches: deque[list[_Task]] = deque([[]])
        self.open_size = 0
        self.open_since = 0.0

    def add_all(self, tasks: Sequence[_Task]) -> None:
        """Enqueue the parts of one request, all or none (the scheduler lock is held)."""
        batches, open_size = len(self.batches), self.open_size
        for task in tasks:
            if open_size + task.size > self.options.execution_batch_size:
                if batches >= self.options.max_enqueued_batches:
                    raise ServingError(grpc.StatusCode.UNAVAILABLE, "The batch scheduling "
                                       "queue to which this task was submitted is full")
                batches, open_size = batches + 1, 0
            open_size += task.size
        for task in tasks:
            self._add(task)

    def _add(self, task: _Task) -> None:
        if self.open_size + task.size > self.options.execution_batch_size:
            self.batches.append([])
            self.open_size = 0
        if not self.batches[-1]:
            self.open_since = time.monotonic()
        self.batches[-1].append(task)
        self.open_size += task.size

    def ready_at(self) -> float | None:
        """When the first batch may run: now if it is closed or full, else at its timeout."""
        if len(self.batches) > 1:
            return 0.0
        if not self.batches[0]:
            return None
        if self.open_size >= self.options.execution_batch_size:
            return 0.0
        return self.open_since + self.options.batch_timeout_micros / 1e6

    def take(self) -> list[_Task]:
        batch = self.batches.popleft()
        if not self.batches:
            self.batches.append([])
            self.open_size = 0
        return batch


class Batcher:
    """Runs signature calls through per-signature batch queues on a shared thread pool."""

    def __init__(self, options: BatchingOptions, observers: Sequence[BatchObserver] = (), *,
                 per_model_parameters: bool = False) -> None:
        self.options = options
        self._observers = list(observers)
        self._per_model = per_model_parameters
        self._model_options: weakref.WeakKeyDictionary[Servable, BatchingOptions | None] = \
            weakref.WeakKeyDictionary()
        self._lock = threading.Condition()
        self._queues: weakref.WeakKeyDictionary[Servable, dict[tuple, _Queue]] = \
            weakref.WeakKeyDictionary()
        self._stopped = False
        self._threads = [threading.Thread(target=self._work, name=f"batch-{i}", daemon=True)
                         for i in range(options.num_batch_threads)]
        for thread in self._threads:
            thread.start()

    def run(self, servable: Servable, signature: SignatureDef, feeds: Feeds,
            fetches: Sequence[str]) -> list[np.ndarray]:
        """Like ``servable.run``, batched with concurrent calls of the same shape."""
        options = self._options_for(servable)
        if options is None or not feeds or not _batchable(signature, feeds):
            return servable.run(feeds, fetches)
        size = int(feeds[0][1].shape[0])
        limit = options.execution_batch_size
        if size > limit and (not options.enable_large_batch_splitting
                             or size > options.max_batch_size):
            raise invalid_argument(f"Task size {size} is larger than maximum input batch size "
                                   f"{options.max_batch_size}")
        queue = self._queue(servable, options, feeds, fetches)
        context = request_context.current.get()
        tasks = [_Task([array[start:start + limit] for _, array in feeds],
                       min(limit, size - start), context) for start in range(0, size, limit)]
        if len(tasks) == 1:
            tasks[0].feeds = [array for _, array in feeds]
        with self._lock:
            queue.add_all(tasks)
            self._lock.notify(len(tasks))
        for task in tasks:
            task.done.wait()
            if task.error is not None:
                raise task.error
        if len(tasks) == 1:
            return tasks[0].outputs
        return [np.concatenate([task.outputs[i] for task in tasks]) for i in range(len(fetches))]

    def prepare(self, servable: Servable) -> None:
        """Read a loading version's batching_params.pbtxt (per-model parameters), so a bad
        file fails the load, as in TF Serving."""
        if not self._per_model:
            return
        path = os.path.join(servable.path, PER_MODEL_FILE)
        options = read_batching_parameters(path) if os.path.exists(path) else None
        with self._lock:
            self._model_options[servable] = options

    def _options_for(self, servable: Servable) -> BatchingOptions | None:
        """The server's options; with per-model parameters, the version's
        batching_params.pbtxt (its thread count is ignored: the pool is shared), or None
        without one: TF Serving batches such a model not at all."""
        if not self._per_model:
            return self.options
        with self._lock:
            if servable in self._model_options:
                return self._model_options[servable]
        self.prepare(servable)
        return self._model_options.get(servable)

    def _queue(self, servable: Servable, options: BatchingOptions, feeds: Feeds,
               fetches: Sequence[str]) -> _Queue:
        pad = options.pad_variable_length_inputs
        key = (tuple(name for name, _ in feeds), tuple(fetches),
               tuple((a.dtype.str, a.ndim if pad else a.shape[1:]) for _, a in feeds))
        with self._lock:
            queues = self._queues.setdefault(servable, {})
            queue = queues.get(key)
            if queue is None:
                queue = queues[key] = _Queue(servable, key[0], key[1], options)
            return queue

    def _work(self) -> None:
        while True:
            with self._lock:
                queue = self._next_ready()
                while queue is None:
                    if self._stopped:
                        return
                    self._lock.wait(self._wait_time())
                    queue = self._next_ready()
                batch = queue.take()
            self._execute(queue, batch)

    def _next_ready(self) -> _Queue | None:
        now = time.monotonic()
        best, best_at = None, None
        for queues in list(self._queues.values()):
            for queue in queues.values():
                at = queue.ready_at()
                if self._stopped and at is not None:
                    at = 0.0  # stopping: run what is queued now, so no caller waits forever
                if at is not None and at <= now and (best_at is None or at < best_at):
                    best, best_at = queue, at
        return best

    def _wait_time(self) -> float | None:
        times = [q.ready_at() for qs in list(self._queues.values()) for q in qs.values()]
        pending = [t for t in times if t is not None]
        return max(min(pending) - time.monotonic(), 0.0) if pending else None

    def _execute(self, queue: _Queue, batch: list[_Task]) -> None:
        live = []
        for task in batch:
            if task.context.expired():
                task.finish(error=ServingError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                               "Deadline exceeded before the batch ran"))
            elif not task.context.is_active():
                task.finish(error=ServingError(grpc.StatusCode.CANCELLED,
                                               "Request cancelled before the batch ran"))
            else:
                live.append(task)
        if not live:
            return
        try:
            outputs, padded = self._run_batch(queue, live)
        except ServingError as error:
            if len(live) == 1:
                live[0].finish(error=error)
                return
            log.info("batch of %d failed (%s); running its requests one by one", len(live), error)
            for task in live:
                self._execute(queue, [task])
            return
        waits = [time.monotonic() - task.enqueued for task in live]
        start = 0
        for task in live:
            task.finish([output[start:start + task.size] for output in outputs])
            start += task.size
        for observer in self._observers:
            observer(queue.servable.name, start, padded, waits)

    def _run_batch(self, queue: _Queue, tasks: list[_Task]) -> tuple[list[np.ndarray], int]:
        size = sum(task.size for task in tasks)
        padded = _round_up(size, queue.options.allowed_batch_sizes)
        feeds = []
        for i, name in enumerate(queue.feed_names):
            parts = [task.feeds[i] for task in tasks]
            if queue.options.pad_variable_length_inputs:
                parts = _pad_to_common_shape(parts)
            merged = parts[0] if len(parts) == 1 else np.concatenate(parts)
            if padded > size:
                filler = np.repeat(merged[:1], padded - size, axis=0)
                merged = np.concatenate([merged, filler])
            feeds.append((name, merged))
        outputs = queue.servable.run(feeds, queue.fetches)
        for output in outputs:
            if output.ndim == 0:
                raise failed_precondition("Batched output tensor has 0 dimensions")
            if output.shape[0] != padded:
                raise failed_precondition(
                    "Batched output tensor's 0th dimension does not equal the sum of the 0th "
                    "dimension sizes of the input tensors")
        return outputs, padded

    def queue_depths(self) -> dict[str, int]:
        """Tasks (requests, or their parts when split) waiting in each model's queues."""
        depths: dict[str, int] = {}
        with self._lock:
            for servable, queues in list(self._queues.items()):
                waiting = sum(len(batch) for queue in queues.values() for batch in queue.batches)
                depths[servable.name] = depths.get(servable.name, 0) + waiting
        return depths

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._lock.notify_all()
        for thread in self._threads:
            thread.join()


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


def _round_up(size: int, allowed: Sequence[int]) -> int:
    for candidate in allowed:
        if candidate >= size:
            return candidate
    return size


def _pad_to_common_shape(parts: list[np.ndarray]) -> list[np.ndarray]:
    """Pad every array to the largest size of each non-batch dimension, with its first
    element (TF Serving's AddPadding)."""
    target = np.max([part.shape[1:] for part in parts], axis=0)
    padded = []
    for part in parts:
        widths = [(0, 0)] + [(0, int(t - s)) for t, s in zip(target, part.shape[1:])]
        if any(w for _, w in widths):
            fill = part.flat[0] if part.size else 0
            part = np.pad(part, widths, constant_values=fill) if part.dtype != object else \
                _pad_objects(part, widths, fill)
        padded.append(part)
    return padded


def _pad_objects(part: np.ndarray, widths: list[tuple[int, int]], fill: object) -> np.ndarray:
    shape = tuple(s + w for s, (_, w) in zip(part.shape, widths))
    out = np.empty(shape, dtype=object)
    out.fill(fill)
    out[tuple(slice(0, s) for s in part.shape)] = part
    return out
