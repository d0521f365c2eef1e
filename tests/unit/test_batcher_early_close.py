"""Issue 28: a batch opened by a lone request closes once every request in flight to its
model joined it; under load, TF Serving's wait. On an injected clock (no sleeps: a timeout
passes only when the test moves the clock)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from fake_clock import FakeClock
from fake_servable import INPUT, OUTPUT, BlockingModel, fake_servable
from pyserving.server import request_context
from pyserving.server.batching.arrivals import QUIET_SECONDS
from pyserving.server.batching.batcher import Batcher
from pyserving.server.batching.config import BatchingOptions
from pyserving.server.request_context import RequestContext
from pyserving.server.servable import Servable
from support import wait_until

SIGNATURE = fake_servable().signatures["serving_default"]
TIMEOUT = 1.0  # batch_timeout_micros, in seconds of the fake clock
WAIT = 10.0  # real seconds a test waits for what must happen at once
START = 1000.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


def make_batcher(clock: FakeClock, wait_for_full_batch: bool = False) -> Batcher:
    return Batcher(BatchingOptions(max_batch_size=4, batch_timeout_micros=int(TIMEOUT * 1e6),
                                   num_batch_threads=1),
                   wait_for_full_batch=wait_for_full_batch, clock=clock)


@pytest.fixture
def batcher(clock: FakeClock) -> Iterator[Batcher]:
    made = make_batcher(clock)
    yield made
    made.stop()


@pytest.fixture
def servable(batcher: Batcher) -> Servable:
    made = fake_servable()
    batcher.prepare(made)  # as a load does: from now on its requests are counted
    return made


def run(batcher: Batcher, servable: Servable, rows: list[float]) -> list[float]:
    token = request_context.current.set(RequestContext(time.monotonic() + WAIT))
    try:
        [y] = batcher.run(servable, SIGNATURE, [(INPUT, np.array(rows))], [OUTPUT])
    finally:
        request_context.current.reset(token)
    return y.tolist()


class Caller(threading.Thread):
    """One request as a transport makes it: counted in at its edge (``arrived`` is set then),
    run once ``go`` is set (or at once), counted out after its answer or error."""

    def __init__(self, batcher: Batcher, servable: Servable, rows: list[float],
                 go: threading.Event | None = None) -> None:
        super().__init__(daemon=True)
        self.batcher, self.servable, self.rows = batcher, servable, rows
        self.go = go
        self.arrived = threading.Event()
        self.result: list[float] | None = None

    def run(self) -> None:
        traffic = self.batcher.traffic.of(self.servable.name)
        assert traffic is not None
        traffic.arrive()
        self.arrived.set()
        try:
            if self.go is not None:
                assert self.go.wait(WAIT)
            self.result = run(self.batcher, self.servable, self.rows)
        finally:
            traffic.leave()

    def finish(self) -> list[float] | None:
        self.join(WAIT)
        assert not self.is_alive()
        return self.result


def start(caller: Caller) -> Caller:
    caller.start()
    assert caller.arrived.wait(WAIT)
    return caller


def waiting_for_timeout(clock: FakeClock) -> Callable[[], bool]:
    """True once the batch thread waits for the open batch's timeout (and nothing else)."""
    return lambda: clock.deadlines() == [START + TIMEOUT]


@pytest.fixture
def busy(batcher: Batcher) -> Iterator[tuple[BlockingModel, threading.Thread]]:
    """Another model's batch holding the only batch thread, so the test can queue requests
    behind it; released after the test at the latest."""
    model = BlockingModel()
    other = Servable("other", 1, "/models/other/1", model)
    caller = threading.Thread(target=run, args=(batcher, other, [5.0]), daemon=True)
    caller.start()
    assert model.running.wait(WAIT)
    yield model, caller
    model.release.set()
    caller.join(WAIT)


def queued(batcher: Batcher, servable: Servable, count: int) -> Callable[[], bool]:
    return lambda: batcher.traffic.of(servable.name).queued == count


def test_a_lone_request_runs_without_waiting_out_the_timeout(batcher, servable, clock):
    for value in (1.0, 2.0, 3.0):  # one after another, as one client sends them
        assert start(Caller(batcher, servable, [value])).finish() == [2 * value]
    assert servable.model.calls == [[1.0], [2.0], [3.0]]
    assert clock.now() == START  # no time had to pass


def test_a_call_no_transport_counted_runs_at_once(batcher, servable, clock):
    assert run(batcher, servable, [1.0, 2.0]) == [2.0, 4.0]
    assert clock.now() == START


def test_concurrent_requests_still_batch_together_as_in_tf_serving(batcher, servable, clock):
    go = threading.Event()
    first = start(Caller(batcher, servable, [1.0], go))
    second = start(Caller(batcher, servable, [2.0], go))
    go.set()  # both are in flight before either reaches the batcher: that is load
    wait_until(queued(batcher, servable, 2), "both requests to queue")
    wait_until(waiting_for_timeout(clock), "the batch to wait for its timeout")
    assert servable.model.calls == []
    clock.advance(TIMEOUT)
    assert (first.finish(), second.finish()) == ([2.0], [4.0])
    [call] = servable.model.calls
    assert sorted(call) == [1.0, 2.0]


def test_a_request_in_flight_keeps_the_batch_open_until_the_timeout(batcher, servable, clock):
    late = threading.Event()
    joining = start(Caller(batcher, servable, [2.0], late))  # counted, e.g. still decoding
    first = start(Caller(batcher, servable, [1.0]))
    wait_until(waiting_for_timeout(clock), "the batch to wait for its timeout")
    late.set()
    wait_until(queued(batcher, servable, 2), "the second request to join")
    clock.advance(TIMEOUT / 2)
    assert servable.model.calls == []
    clock.advance(TIMEOUT / 2)
    assert (first.finish(), joining.finish()) == ([2.0], [4.0])
    assert servable.model.calls == [[1.0, 2.0]]


def test_a_full_batch_runs_before_the_timeout(batcher, servable, clock):
    go = threading.Event()
    callers = [start(Caller(batcher, servable, rows, go)) for rows in ([1.0], [2.0, 3.0], [4.0])]
    go.set()
    assert sorted(caller.finish() for caller in callers) == [[2.0], [4.0, 6.0], [8.0]]
    assert len(servable.model.calls) == 1
    assert clock.now() == START


def test_a_lone_batch_takes_a_request_arriving_before_it_runs(batcher, servable, clock, busy):
    model, _ = busy
    late = threading.Event()
    first = start(Caller(batcher, servable, [1.0]))  # alone: opens a batch that may close
    wait_until(queued(batcher, servable, 1), "the first request to queue")
    joining = start(Caller(batcher, servable, [2.0], late))  # arrives before it ran
    model.release.set()
    wait_until(waiting_for_timeout(clock), "the batch to wait for the request in flight")
    assert servable.model.calls == []
    late.set()  # it joins: nothing else is in flight, so the batch closes without a timeout
    assert (first.finish(), joining.finish()) == ([2.0], [4.0])
    assert servable.model.calls == [[1.0, 2.0]]
    assert clock.now() == START


def test_a_lone_batch_closes_when_the_request_it_waited_for_leaves(batcher, servable, clock,
                                                                   busy):
    model, _ = busy
    first = start(Caller(batcher, servable, [1.0]))
    wait_until(queued(batcher, servable, 1), "the first request to queue")
    traffic = batcher.traffic.of(servable.name)
    traffic.arrive()  # a request whose input will fail validation
    model.release.set()
    wait_until(waiting_for_timeout(clock), "the batch to wait for the request in flight")
    traffic.leave()  # it never reaches the batcher
    assert first.finish() == [2.0]
    assert clock.now() == START


def test_requests_to_another_model_do_not_hold_the_batch(batcher, servable, clock):
    other = fake_servable("other")
    batcher.prepare(other)
    batcher.traffic.of("other").arrive()
    try:
        assert start(Caller(batcher, servable, [1.0])).finish() == [2.0]
    finally:
        batcher.traffic.of("other").leave()


def test_only_models_the_batcher_prepared_are_counted(batcher):
    assert batcher.traffic.of("made-up") is None


def test_an_async_lone_request_runs_at_once(batcher, servable, clock):
    traffic = batcher.traffic.of(servable.name)

    async def call() -> list[float]:
        request_context.current.set(RequestContext(time.monotonic() + WAIT))
        traffic.arrive()
        try:
            [y] = await batcher.run_async(servable, SIGNATURE, [(INPUT, np.array([3.0]))],
                                          [OUTPUT], executor=None)
        finally:
            traffic.leave()
        return y.tolist()

    assert asyncio.run(call()) == [6.0]
    assert clock.now() == START
    assert (len(traffic.requests), traffic.queued, traffic.lone) == (0, 0, 0)


def test_waiting_for_full_batches_restores_the_timeout(clock):
    batcher = make_batcher(clock, wait_for_full_batch=True)
    try:
        assert batcher.traffic is None  # nothing is counted: the edges do no work for it
        servable = fake_servable()
        results: list[list[float]] = []
        caller = threading.Thread(target=lambda: results.append(run(batcher, servable, [1.0])))
        caller.start()
        wait_until(waiting_for_timeout(clock), "the batch to wait for its timeout")
        clock.advance(TIMEOUT - 0.001)
        assert servable.model.calls == []
        clock.advance(0.001)
        caller.join(WAIT)
        assert results == [[2.0]]
    finally:
        batcher.stop()


def test_a_full_batch_runs_before_the_timeout_when_waiting_for_full_batches(clock):
    batcher = make_batcher(clock, wait_for_full_batch=True)
    try:
        servable = fake_servable()
        results: list[list[float]] = []
        callers = [threading.Thread(target=lambda rows=rows: results.append(
            run(batcher, servable, rows))) for rows in ([1.0], [2.0, 3.0], [4.0])]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join(WAIT)
        assert sorted(results) == [[2.0], [4.0, 6.0], [8.0]]
        assert len(servable.model.calls) == 1
        assert clock.now() == START
    finally:
        batcher.stop()


def test_after_load_a_lone_request_waits_once_then_runs_at_once(batcher, servable, clock):
    go = threading.Event()
    pair = [start(Caller(batcher, servable, [value], go)) for value in (1.0, 2.0)]
    go.set()  # two requests in flight at once: load, so TF Serving's wait
    wait_until(queued(batcher, servable, 2), "both requests to queue")
    wait_until(waiting_for_timeout(clock), "the batch to wait for its timeout")
    clock.advance(TIMEOUT)
    assert [caller.finish() for caller in pair] == [[2.0], [4.0]]

    lone = start(Caller(batcher, servable, [3.0]))  # the model saw two at once just now
    wait_until(lambda: clock.deadlines() == [START + 2 * TIMEOUT], "the lone batch to wait")
    clock.advance(TIMEOUT)
    assert lone.finish() == [6.0]
    assert start(Caller(batcher, servable, [4.0])).finish() == [8.0]  # quiet since: no wait
    assert clock.now() == START + 2 * TIMEOUT


def test_a_lone_request_soon_after_two_were_in_flight_waits_as_in_tf_serving(batcher, servable,
                                                                              clock):
    traffic = batcher.traffic.of(servable.name)
    traffic.arrive()
    traffic.arrive()  # two in flight at once (here both fail before the batcher)...
    traffic.leave()
    traffic.leave()  # ...and both answered before the next request: many clients, not one
    clock.advance(QUIET_SECONDS / 2)
    opened = clock.now()
    lone = start(Caller(batcher, servable, [1.0]))
    wait_until(lambda: [round(d - opened, 6) for d in clock.deadlines() if d] == [TIMEOUT],
               "the batch to wait for its timeout")
    clock.advance(TIMEOUT)
    assert lone.finish() == [2.0]
    assert start(Caller(batcher, servable, [2.0])).finish() == [4.0]  # quiet since: no wait
    assert clock.now() == opened + TIMEOUT
