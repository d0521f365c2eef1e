"""Issue 28: a lone batch of a signature measured fast runs on the caller's event loop, with
the same outputs, metrics, errors and deadlines as on a batch thread; a slow signature's
stays on the batch threads. On an injected clock: a call is slow when the model moves it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Sequence

import grpc
import numpy as np
import pytest

from fake_clock import FakeClock
from fake_servable import INPUT, OUTPUT, BlockingModel, FakeModel
from pyserving.server import request_context
from pyserving.server.batching.batcher import Batcher, BatchRun
from pyserving.server.batching.config import BatchingOptions
from pyserving.server.errors import ServingError
from pyserving.server.request_context import RequestContext
from pyserving.server.servable import INLINE_AFTER, INLINE_MAX_SECONDS, Servable
from support import wait_until

TIMEOUT = 1.0  # batch_timeout_micros, in seconds of the fake clock
WAIT = 10.0  # real seconds a test waits for what must happen at once
START = 1000.0


class ThreadNotingModel(FakeModel):
    """Notes the thread of each call; each call moves the clock by ``seconds`` (its run time
    as the batcher sees it)."""

    def __init__(self, clock: FakeClock, seconds: float = 0.0) -> None:
        super().__init__()
        self.clock = clock
        self.seconds = seconds
        self.threads: list[int] = []

    def run(self, feeds: Sequence[tuple[str, np.ndarray]],
            fetches: Sequence[str]) -> list[np.ndarray]:
        self.threads.append(threading.get_ident())
        if self.seconds:
            self.clock.advance(self.seconds)
        return super().run(feeds, fetches)


class Observed:
    """What the batcher's observers heard: (model, size, padded, waits) and each BatchRun."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, int, int, list[float]]] = []
        self.runs: list[BatchRun] = []

    def batch(self, model: str, size: int, padded: int, waits: list[float]) -> None:
        self.batches.append((model, size, padded, waits))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def observed() -> Observed:
    return Observed()


def make_batcher(clock: FakeClock, observed: Observed, wait_for_full_batch: bool = False
                 ) -> Batcher:
    return Batcher(BatchingOptions(max_batch_size=4, batch_timeout_micros=int(TIMEOUT * 1e6),
                                   num_batch_threads=1, allowed_batch_sizes=(2, 4)),
                   [observed.batch], run_observers=[observed.runs.append],
                   wait_for_full_batch=wait_for_full_batch, clock=clock)


@pytest.fixture
def batcher(clock: FakeClock, observed: Observed) -> Iterator[Batcher]:
    made = make_batcher(clock, observed)
    yield made
    made.stop()


def servable_of(batcher: Batcher, model: FakeModel, name: str = "model") -> Servable:
    made = Servable(name, 1, f"/models/{name}/1", model)
    batcher.prepare(made)  # as a load does: from now on its requests are counted
    return made


async def lone(batcher: Batcher, servable: Servable, rows: list[float],
               seconds_left: float = WAIT) -> list[float]:
    """One request as an event-loop transport makes it: counted in and out at its edge."""
    traffic = batcher.traffic.of(servable.name) if batcher.traffic is not None else None
    token = request_context.current.set(RequestContext(time.monotonic() + seconds_left))
    if traffic is not None:
        traffic.arrive()
    try:
        signature = servable.signatures["serving_default"]
        [y] = await batcher.run_async(servable, signature, [(INPUT, np.array(rows))], [OUTPUT],
                                      executor=None)
    finally:
        if traffic is not None:
            traffic.leave()
        request_context.current.reset(token)
    return y.tolist()


def one_after_another(batcher: Batcher, servable: Servable, count: int) -> list[list[float]]:
    """``count`` lone requests in a row on one event loop, as one client sends them."""
    async def all_of_them() -> list[list[float]]:
        return [await lone(batcher, servable, [float(i)]) for i in range(count)]
    return asyncio.run(all_of_them())


def test_a_fast_signature_s_lone_batch_runs_on_the_loop_once_measured(batcher, clock, observed):
    model = ThreadNotingModel(clock)
    servable = servable_of(batcher, model)
    here = threading.get_ident()
    answers = one_after_another(batcher, servable, INLINE_AFTER + 3)
    assert answers == [[2.0 * i] for i in range(INLINE_AFTER + 3)]
    assert here not in model.threads[:INLINE_AFTER]  # measured on the batch thread first
    assert model.threads[INLINE_AFTER:] == [here] * 3
    # the same padding, metrics and run records as a batch thread's run
    assert model.calls[-1] == [float(INLINE_AFTER + 2)] * 2  # padded to 2
    thread_run, loop_run = observed.batches[INLINE_AFTER - 1], observed.batches[INLINE_AFTER]
    assert thread_run == ("model", 1, 2, [0.0])
    assert loop_run == ("model", 1, 2, [0.0])
    assert [(run.size, run.padded, len(run.requests)) for run in observed.runs] \
        == [(1, 2, 1)] * (INLINE_AFTER + 3)
    traffic = batcher.traffic.of("model")
    assert (len(traffic.requests), traffic.queued, traffic.lone) == (0, 0, 0)
    assert clock.now() == START


def test_a_request_the_loop_already_holds_joins_the_lone_batch(batcher, clock, observed):
    model = ThreadNotingModel(clock)
    servable = servable_of(batcher, model)
    one_after_another(batcher, servable, INLINE_AFTER)

    async def two_at_once() -> list[list[float]]:  # as two requests a transport read at once
        return list(await asyncio.gather(lone(batcher, servable, [1.0]),
                                         lone(batcher, servable, [2.0])))

    assert asyncio.run(two_at_once()) == [[2.0], [4.0]]
    assert model.calls[-1] == [1.0, 2.0]  # the second joined during the first's turn
    assert model.threads[-1] == threading.get_ident()
    assert observed.batches[-1] == ("model", 2, 2, [0.0, 0.0])
    traffic = batcher.traffic.of("model")
    assert traffic.busy_at == START  # seen as load: the next batches wait as in TF Serving
    assert (len(traffic.requests), traffic.queued, traffic.lone) == (0, 0, 0)
    assert not traffic.alone(clock.now())


def test_a_lone_request_cancelled_during_its_turn_is_dropped(batcher, clock):
    model = ThreadNotingModel(clock)
    servable = servable_of(batcher, model)
    one_after_another(batcher, servable, INLINE_AFTER)

    async def cancelled() -> None:
        call = asyncio.ensure_future(lone(batcher, servable, [1.0]))
        await asyncio.sleep(0)  # it queued and is taking its turn
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call

    asyncio.run(cancelled())
    traffic = batcher.traffic.of("model")
    wait_until(lambda: traffic.queued == 0, "the cancelled request to leave its queue")
    assert len(model.calls) == INLINE_AFTER  # never run
    assert one_after_another(batcher, servable, 1) == [[0.0]]


def test_a_slow_signature_s_lone_batch_stays_on_the_batch_thread(batcher, clock):
    model = ThreadNotingModel(clock, seconds=2 * INLINE_MAX_SECONDS)
    servable = servable_of(batcher, model)
    here = threading.get_ident()
    assert one_after_another(batcher, servable, INLINE_AFTER + 3)[-1] \
        == [2.0 * (INLINE_AFTER + 2)]
    assert here not in model.threads


def test_a_signature_turned_slow_goes_back_to_the_batch_thread(batcher, clock):
    model = ThreadNotingModel(clock)
    servable = servable_of(batcher, model)
    here = threading.get_ident()
    one_after_another(batcher, servable, INLINE_AFTER + 1)
    assert model.threads[-1] == here
    model.seconds = 10 * INLINE_MAX_SECONDS
    one_after_another(batcher, servable, 3)  # two slow runs on the loop, then off it
    assert model.threads[-3:-1] == [here, here]
    assert model.threads[-1] != here


def test_one_slow_run_on_the_loop_is_taken_for_noise(batcher, clock):
    model = ThreadNotingModel(clock)
    servable = servable_of(batcher, model)
    here = threading.get_ident()
    one_after_another(batcher, servable, INLINE_AFTER)
    for seconds in (10 * INLINE_MAX_SECONDS, 0.0, 10 * INLINE_MAX_SECONDS, 0.0):
        model.seconds = seconds
        one_after_another(batcher, servable, 1)
    assert model.threads[-4:] == [here] * 4


def test_a_failing_lone_batch_on_the_loop_fails_only_its_request(batcher, clock):
    servable = servable_of(batcher, ThreadNotingModel(clock))
    one_after_another(batcher, servable, INLINE_AFTER)
    loop_errors: list[dict] = []

    async def failing_then_good() -> list[float]:
        asyncio.get_running_loop().set_exception_handler(lambda _, info: loop_errors.append(info))
        with pytest.raises(ServingError) as raised:
            await lone(batcher, servable, [-1.0])
        assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert raised.value.message == "x must be non-negative"
        return await lone(batcher, servable, [4.0])

    assert asyncio.run(failing_then_good()) == [8.0]
    assert loop_errors == []  # no future left with an exception nobody retrieved


def test_an_expired_lone_request_is_dropped_on_the_loop_as_on_a_thread(batcher, clock):
    model = ThreadNotingModel(clock)
    servable = servable_of(batcher, model)
    one_after_another(batcher, servable, INLINE_AFTER)
    with pytest.raises(ServingError) as raised:
        asyncio.run(lone(batcher, servable, [1.0], seconds_left=-1.0))
    assert raised.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert raised.value.message == "Deadline exceeded before the batch ran"
    assert len(model.calls) == INLINE_AFTER


def test_the_request_that_closes_a_lone_batch_runs_it_for_those_queued(batcher, clock):
    model = ThreadNotingModel(clock)
    servable = servable_of(batcher, model)
    one_after_another(batcher, servable, INLINE_AFTER)
    blocking = BlockingModel()
    other = Servable("other", 1, "/models/other/1", blocking)
    signature = servable.signatures["serving_default"]
    busy = threading.Thread(target=lambda: asyncio.run(lone(batcher, other, [5.0])))
    busy.start()  # holds the only batch thread
    try:
        assert blocking.running.wait(WAIT)
        first: list[list[float]] = []
        waiting = threading.Thread(target=lambda: first.append(batcher_run(batcher, servable)))
        traffic = batcher.traffic.of("model")
        waiting.start()  # alone: opens a batch that may close early
        wait_until(lambda: traffic.queued == 1, "the first request to queue")
        traffic.arrive()  # the closing request, in flight (decoding) before that batch ran
        here = threading.get_ident()

        async def closing() -> list[float]:
            request_context.current.set(RequestContext(time.monotonic() + WAIT))
            try:
                [y] = await batcher.run_async(servable, signature, [(INPUT, np.array([2.0]))],
                                              [OUTPUT], executor=None)
            finally:
                traffic.leave()
            return y.tolist()

        assert asyncio.run(closing()) == [4.0]
        waiting.join(WAIT)
        assert first == [[2.0]]
        assert model.calls[-1] == [1.0, 2.0]
        assert model.threads[-1] == here
        assert clock.now() == START
    finally:
        blocking.release.set()
        busy.join(WAIT)


def batcher_run(batcher: Batcher, servable: Servable) -> list[float]:
    """A request waiting in its thread (``Batcher.run``), counted in and out at its edge."""
    traffic = batcher.traffic.of(servable.name)
    traffic.arrive()
    token = request_context.current.set(RequestContext(time.monotonic() + WAIT))
    try:
        [y] = batcher.run(servable, servable.signatures["serving_default"],
                          [(INPUT, np.array([1.0]))], [OUTPUT])
    finally:
        request_context.current.reset(token)
        traffic.leave()
    return y.tolist()


def timing_out(clock: FakeClock) -> bool:
    """The batch thread waits for an open batch's timeout."""
    deadlines = clock.deadlines()
    return bool(deadlines) and None not in deadlines


def test_waiting_for_full_batches_never_runs_on_the_loop(clock, observed):
    batcher = make_batcher(clock, observed, wait_for_full_batch=True)
    try:
        model = ThreadNotingModel(clock)
        servable = servable_of(batcher, model)
        results: list[list[list[float]]] = []
        caller = threading.Thread(target=lambda: results.append(
            one_after_another(batcher, servable, INLINE_AFTER + 1)))
        caller.start()
        for done in range(INLINE_AFTER + 1):
            wait_until(lambda done=done: len(model.calls) == done and timing_out(clock),
                       "the batch to wait for its timeout")
            clock.advance(TIMEOUT)
        caller.join(WAIT)
        assert results[0][-1] == [2.0 * INLINE_AFTER]
        assert caller.ident not in model.threads
    finally:
        batcher.stop()


def test_a_stopped_batcher_refuses_a_lone_request_as_before(batcher, clock):
    servable = servable_of(batcher, ThreadNotingModel(clock))
    one_after_another(batcher, servable, INLINE_AFTER)
    batcher.stop()
    with pytest.raises(ServingError) as raised:
        asyncio.run(lone(batcher, servable, [1.0]))
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE
