"""PROTOTYPE, NOT PYSERVING'S CODE PATH: the minimal batching behind grpc.aio that sized the
change pyserving then made (server/grpc_aio.py, commit 71b6a10); kept as a comparison row.

The request decodes on the event loop and waits as an asyncio future; one worker thread runs
each batch through ``Servable.run``, and a finished batch wakes the loop once to resolve all
its futures. Decoding, the TF call and encoding are pyserving's own (``input_feeds``,
``Servable.run``, ``fill_tensor_proto``); no metrics, admission or deadlines. Queueing follows
BatchingParameters' max_batch_size, batch_timeout_micros and num_batch_threads.
bench/batching_throughput.py runs it with ``--servers ...,aio-batched``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np


class _Queue:
    def __init__(self, servable: Any, feed_names: list[str], fetches: list[str]) -> None:
        self.servable = servable
        self.feed_names = feed_names
        self.fetches = fetches
        self.tasks: deque[tuple[list[np.ndarray], int, asyncio.Future]] = deque()
        self.rows = 0
        self.timer: asyncio.TimerHandle | None = None
        self.due = False  # the oldest task's timeout has passed


class AsyncBatcher:
    """Batches ``await run(...)`` calls of one shape; at most ``threads`` batches run at once."""

    def __init__(self, max_batch_size: int, timeout_micros: int, threads: int) -> None:
        self._max = max_batch_size
        self._timeout = timeout_micros / 1e6
        self._free = threads
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="batch")
        self._queues: dict[tuple, _Queue] = {}
        self._ready: deque[_Queue] = deque()
        self.stats = [0, 0]  # batches, rows run so far

    async def run(self, servable: Any, feeds: list[tuple[str, np.ndarray]],
                  fetches: list[str]) -> list[np.ndarray]:
        key = (id(servable), tuple(name for name, _ in feeds), tuple(fetches),
               tuple((a.dtype.str, a.shape[1:]) for _, a in feeds))
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue(servable, [n for n, _ in feeds], list(fetches))
        future = asyncio.get_running_loop().create_future()
        size = int(feeds[0][1].shape[0])
        queue.tasks.append(([array for _, array in feeds], size, future))
        queue.rows += size
        if queue.rows >= self._max:
            self._mark_ready(queue)
        elif queue.timer is None and not queue.due:
            loop = asyncio.get_running_loop()
            queue.timer = (loop.call_later(self._timeout, self._timed_out, queue)
                           if self._timeout else loop.call_soon(self._timed_out, queue))
        return await future

    def _timed_out(self, queue: _Queue) -> None:
        queue.timer = None
        queue.due = True
        self._mark_ready(queue)

    def _mark_ready(self, queue: _Queue) -> None:
        if queue not in self._ready:
            self._ready.append(queue)
        self._start_batches()

    def _start_batches(self) -> None:
        while self._free and self._ready:
            queue = self._ready.popleft()
            batch, rows = [], 0
            while queue.tasks and rows + queue.tasks[0][1] <= self._max:
                task = queue.tasks.popleft()
                batch.append(task)
                rows += task[1]
            queue.rows -= rows
            if queue.timer is not None:
                queue.timer.cancel()
                queue.timer = None
            queue.due = False
            if queue.tasks:  # what is left starts a new batch with its own timeout
                if queue.rows >= self._max:
                    self._ready.append(queue)
                else:
                    loop = asyncio.get_running_loop()
                    queue.timer = loop.call_later(self._timeout, self._timed_out, queue)
            self._free -= 1
            self.stats[0] += 1
            self.stats[1] += rows
            feeds = [(name, np.concatenate([t[0][i] for t in batch]) if len(batch) > 1
                      else batch[0][0][i]) for i, name in enumerate(queue.feed_names)]
            done = asyncio.get_running_loop().run_in_executor(
                self._pool, queue.servable.run, feeds, queue.fetches)
            done.add_done_callback(lambda result, b=batch: self._finish(b, result))

    def _finish(self, batch: list, result: asyncio.Future) -> None:
        self._free += 1
        error = result.exception()
        start = 0
        for _, size, future in batch:
            if future.done():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result([output[start:start + size] for output in result.result()])
            start += size
        self._start_batches()


def aio_batched_service(core: Any, batcher: AsyncBatcher) -> Any:
    """A PredictionService whose Predict decodes, awaits the batcher, and encodes on the loop."""
    from pyserving.client.tensors import fill_tensor_proto
    from pyserving.server.apis import predict_pb2, prediction_service_pb2_grpc
    from pyserving.server.errors import ServingError
    from pyserving.server.grpc_services import status_message
    from pyserving.server.predict import find_predict_signature, input_feeds, output_aliases

    class Service(prediction_service_pb2_grpc.PredictionServiceServicer):
        async def Predict(self, request: Any, context: Any) -> Any:
            try:
                with core.servable_for(request.model_spec) as servable:
                    name, signature = find_predict_signature(
                        servable, request.model_spec.signature_name)
                    feeds = input_feeds(signature, request.inputs, 2**31)
                    aliases = output_aliases(signature, request.output_filter)
                    fetches = [signature.outputs[alias].name for alias in aliases]
                    values = await batcher.run(servable, feeds, fetches)
                    response = predict_pb2.PredictResponse()
                    response.model_spec.name = request.model_spec.name
                    response.model_spec.signature_name = name
                    response.model_spec.version.value = servable.version
                    for alias, value in zip(aliases, values, strict=False):
                        fill_tensor_proto(response.outputs[alias], value,
                                          dtype_enum=signature.outputs[alias].dtype or None)
                    return response
            except ServingError as error:
                await context.abort(error.code, status_message(error.message))

    return Service()
