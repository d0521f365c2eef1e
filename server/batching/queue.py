"""One signature's queue of tasks, grouped into batches as TF's SharedBatchScheduler groups
them: its splitting, capacity errors, timeouts, and the early close of a lone batch."""

from __future__ import annotations

from collections import deque

import grpc
import numpy as np

from pyserving.server.batching import arrivals
from pyserving.server.batching.config import BatchingOptions
from pyserving.server.batching.inline import CallTimes
from pyserving.server.batching.tasks import Task, TaskMaker
from pyserving.server.errors import ServingError
from pyserving.server.servable import Servable

QUEUE_FULL = "The batch scheduling queue to which this task was submitted is full"


class BatchQueue:
    """Tasks for one signature of one servable, grouped into batches of at most max size."""

    def __init__(self, servable: Servable, feed_names: tuple[str, ...],
                 fetches: tuple[str, ...], options: BatchingOptions,
                 traffic: arrivals.ModelTraffic | None) -> None:
        self.servable = servable
        self.feed_names = feed_names
        self.fetches = fetches
        self.options = options
        self.traffic = traffic  # None: always wait, as TF Serving
        self.batches: deque[list[Task]] = deque([[]])
        self.open_size = 0
        self.open_since = 0.0
        self.alone = False  # the first batch opened with nothing else in flight to the model
        self.times = CallTimes()  # whether its lone batches run on the caller's loop
        self.reserved = False  # a caller will take its lone batch: not for the batch threads

    def add_request(self, arrays: list[np.ndarray], size: int, make: TaskMaker, now: float
                    ) -> tuple[list[Task], bool]:
        """Enqueue one request, split as TF's SharedBatchScheduler splits it, all or none (the
        scheduler lock is held): its tasks, and True when that moved the queue's ready time,
        so a batch thread must look again."""
        sizes = self._part_sizes(size)
        before = self.ready_at()
        tasks, start = [], 0
        for part in sizes:
            task = make([array[start:start + part] for array in arrays] if len(sizes) > 1
                        else arrays, part)
            task.enqueued = now
            self._add(task, now)
            tasks.append(task)
            start += part
        return tasks, self.ready_at() != before

    def _part_sizes(self, size: int) -> list[int]:
        """The rows of each part of a request, or UNAVAILABLE with TF's text (shared_batch_
        scheduler.h ValidateBatchTaskQueueCapacity and SplitInputBatchIntoSubtasks)."""
        limit, enqueued = self.options.execution_batch_size, len(self.batches)
        allowed, open_size = self.options.max_enqueued_batches, self.open_size
        if not self.options.enable_large_batch_splitting:
            if open_size + size > limit and enqueued >= allowed:
                raise ServingError(grpc.StatusCode.UNAVAILABLE, f"{QUEUE_FULL}; currently "
                                   f"{enqueued} batches enqueued and max_enqueued_batches is "
                                   f"{allowed}")
            return [size]
        capacity = (allowed - enqueued) * limit + limit - open_size
        if size > capacity:
            raise ServingError(grpc.StatusCode.UNAVAILABLE, f"{QUEUE_FULL}; task size is {size} "
                               f"but scheduling capacity is only {capacity} (num_enqueued_"
                               f"batches={enqueued}, max_enqueued_batches={allowed}, open_batch_"
                               f"size={open_size}, max_execution_batch_size={limit})")
        remaining = limit - open_size
        if size <= remaining:
            return [size]
        sizes = [remaining] if remaining > 0 else []
        left = size - sum(sizes)
        sizes += [limit] * (left // limit) + ([left % limit] if left % limit else [])
        return sizes

    def _add(self, task: Task, now: float) -> None:
        if self.open_size + task.size > self.options.execution_batch_size:
            self.batches.append([])
            self.open_size = 0
            self._set_alone(False)
        if not self.batches[-1]:
            self.open_since = task.enqueued
            if self.traffic is not None and len(self.batches) == 1:
                self._set_alone(self.traffic.alone(now))
        self.batches[-1].append(task)
        self.open_size += task.size
        if self.traffic is not None:
            self.traffic.queued += 1

    def _set_alone(self, alone: bool) -> None:
        if alone != self.alone and self.traffic is not None:
            self.alone = alone
            self.traffic.lone += 1 if alone else -1

    def ready_at(self) -> float | None:
        """When the first batch may run: now if it is closed or full, else at its timeout;
        or, when a lone request opened it and every request in flight to its model has
        joined, since it opened (waiting cannot fill it)."""
        if len(self.batches) > 1:
            return 0.0
        if not self.batches[0]:
            return None
        if self.open_size >= self.options.execution_batch_size:
            return 0.0
        timeout = self.open_since + self.options.batch_timeout_micros / 1e6
        if self.closes_early():
            return timeout if self.reserved else self.open_since
        return timeout

    def lone_ready(self) -> bool:
        """The first batch is the only one and closes early (``closes_early``)."""
        return len(self.batches) == 1 and self.closes_early()

    def closes_early(self) -> bool:
        """The first batch was opened by a lone request and every request in flight to the
        model joined it: waiting cannot fill it."""
        return self.alone and self.traffic is not None and self.traffic.all_queued()

    def take(self, now: float) -> list[Task]:
        batch = self.batches.popleft()
        self._set_alone(False)
        self.reserved = False
        if self.traffic is not None:
            self.traffic.taken(len(batch))
        if not self.batches:
            self.batches.append([])
            self.open_size = 0
        return batch

    def idle(self) -> bool:
        return len(self.batches) == 1 and not self.batches[0]

    def waiting(self) -> int:
        return sum(len(batch) for batch in self.batches)
