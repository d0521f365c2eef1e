"""The batcher with a plain-Python fake servable: batches, deadlines, and the race between a
request's enqueue and forgetting a retiring version's queues (issue 15)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from fake_clock import FakeClock
from fake_servable import INPUT, OUTPUT, FakeModel, fake_servable
from pyserving.server import request_context
from pyserving.server.batching.batcher import Batcher
from pyserving.server.batching.config import BatchingOptions
from pyserving.server.errors import ServingError
from pyserving.server.request_context import RequestContext

SIGNATURE = fake_servable().signatures["serving_default"]
WAIT = 10.0  # seconds a test waits for what must happen at once


@pytest.fixture
def batcher() -> Iterator[Batcher]:
    """Batches of at most 4 rows, always waiting for a full batch: the batch timeout is on a
    clock nobody moves, so only a full batch (or stopping) runs one."""
    made = Batcher(BatchingOptions(max_batch_size=4, batch_timeout_micros=10_000_000,
                                   num_batch_threads=1),
                   wait_for_full_batch=True, clock=FakeClock())
    yield made
    made.stop()


def run(batcher: Batcher, servable: object, rows: list[float],
        deadline_seconds: float | None = WAIT) -> list[float]:
    deadline = None if deadline_seconds is None else time.monotonic() + deadline_seconds
    token = request_context.current.set(RequestContext(deadline))
    try:
        [y] = batcher.run(servable, SIGNATURE, [(INPUT, np.array(rows))], [OUTPUT])
    finally:
        request_context.current.reset(token)
    return y.tolist()


def run_in_threads(batcher: Batcher, servable: object, inputs: list[list[float]]
                   ) -> list[object]:
    """Each input in a thread of its own; each caller's outputs (or error)."""
    results: list[object] = [None] * len(inputs)

    def call(i: int) -> None:
        try:
            results[i] = run(batcher, servable, inputs[i])
        except ServingError as error:
            results[i] = error

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert not any(thread.is_alive() for thread in threads)
    return results


def test_concurrent_requests_share_one_call_and_get_their_own_rows(batcher):
    servable = fake_servable()
    results = run_in_threads(batcher, servable, [[1.0], [2.0, 3.0], [4.0]])
    assert results == [[2.0], [4.0, 6.0], [8.0]]
    [call] = servable.model.calls
    assert sorted(call) == [1.0, 2.0, 3.0, 4.0]


def test_a_failing_batch_is_rerun_request_by_request(batcher):
    servable = fake_servable()
    results = run_in_threads(batcher, servable, [[1.0], [-1.0], [2.0], [3.0]])
    failed = [result for result in results if isinstance(result, ServingError)]
    assert [(error.code, error.message) for error in failed] == [
        (grpc.StatusCode.INVALID_ARGUMENT, "x must be non-negative")]
    assert [result for result in results if not isinstance(result, ServingError)] == [
        [2.0], [4.0], [6.0]]
    assert len(servable.model.calls) == 5  # the batch of four, then each alone


def test_a_wait_ends_at_the_request_deadline_and_the_task_is_dropped(batcher):
    servable = fake_servable()
    with pytest.raises(ServingError) as raised:
        run(batcher, servable, [1.0], deadline_seconds=0.05)
    assert raised.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    batcher.stop()  # stopping runs what is queued: the expired task is dropped, not run
    assert servable.model.calls == []


def test_an_async_wait_ends_at_the_request_deadline(batcher):
    servable = fake_servable()

    async def late() -> None:
        request_context.current.set(RequestContext(time.monotonic() + 0.05))
        await batcher.run_async(servable, SIGNATURE, [(INPUT, np.array([1.0]))], [OUTPUT],
                                executor=None)

    with pytest.raises(ServingError) as raised:
        asyncio.run(late())
    assert raised.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    batcher.stop()
    assert servable.model.calls == []


def test_async_callers_share_one_call(batcher):
    servable = fake_servable()

    async def call(rows: list[float]) -> list[float]:
        request_context.current.set(RequestContext(time.monotonic() + WAIT))
        [y] = await batcher.run_async(servable, SIGNATURE, [(INPUT, np.array(rows))],
                                      [OUTPUT], executor=None)
        return y.tolist()

    async def main() -> list[list[float]]:
        return await asyncio.gather(call([1.0, 2.0]), call([3.0]), call([4.0]))

    assert asyncio.run(main()) == [[2.0, 4.0], [6.0], [8.0]]
    assert len(servable.model.calls) == 1


def test_a_request_racing_a_scrape_during_unload_still_runs(batcher, monkeypatch):
    # The request holds the version (counted in) when it looks up its queue; right then the
    # version starts unloading and a metrics scrape forgets idle queues of retired versions.
    # The queue must survive, or the request waits where no batch thread looks (and the
    # unload waits for the request).
    servable = fake_servable()
    run(batcher, servable, [0.0] * 4)  # the queue exists, idle
    assert servable.try_acquire()
    lookup = Batcher._queue

    def lookup_then_unload_and_scrape(self: Batcher, *args: object) -> object:
        queue = lookup(self, *args)
        servable.retire(drain_seconds=0)
        self.queue_depths()  # what a scrape does
        return queue

    monkeypatch.setattr(Batcher, "_queue", lookup_then_unload_and_scrape)
    finished = []
    caller = threading.Thread(target=lambda: finished.append(
        run(batcher, servable, [1.0] * 4, deadline_seconds=None)))
    caller.start()
    caller.join(WAIT)
    assert finished == [[2.0] * 4]
    servable.release()
    monkeypatch.setattr(Batcher, "_queue", lookup)
    assert batcher.queue_depths() == {"model": 0}  # drained: this scrape forgets its queue
    assert batcher.queue_depths() == {}


def test_a_model_that_cannot_batch_runs_unbatched(batcher):
    servable = fake_servable()
    scalar = SIGNATURE.__class__()
    scalar.CopyFrom(SIGNATURE)
    del scalar.outputs["y"].tensor_shape.dim[:]
    [y] = batcher.run(servable, scalar, [(INPUT, np.array([1.0, 2.0]))], [OUTPUT])
    assert y.tolist() == [2.0, 4.0]
    assert servable.model.calls == [[1.0, 2.0]]


def test_fake_model_closes_with_its_servable():
    servable = fake_servable()
    assert isinstance(servable.model, FakeModel)
    servable.retire()
    assert servable.model.closed and servable.drained
