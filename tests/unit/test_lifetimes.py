"""Nothing outlives its owner (issue #24), with plain-Python fakes and forced interleavings:
the batcher refuses work once stopped, warmup ends early once shutdown begins, a cancelled
load's files go outside the manager's lock, shadow requests carry a deadline and are
cancelled by a stop, and the shadow budget is read and written under one lock.

A check that would hang on the old code waits with a bound instead, so it fails there."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import text_format

from fake_servable import INPUT, OUTPUT, FakeModel, fake_servable
from pyserving.client.protos.pyserving import rollout_pb2
from pyserving.server import request_context
from pyserving.server.apis import prediction_log_pb2
from pyserving.server.batching.batcher import STOPPED, Batcher
from pyserving.server.batching.config import BatchingOptions
from pyserving.server.config import VersionDirectory
from pyserving.server.errors import ServingError
from pyserving.server.manager import LoadPolicy, ModelManager, VersionState
from pyserving.server.request_context import RequestContext
from pyserving.server.rollout.plan import rollout_plans
from pyserving.server.rollout.router import Route, Router
from pyserving.server.rollout.shadow import ShadowRunner
from pyserving.server.rollout.shadow_budget import ShadowBudget
from pyserving.server.rollout.state import Rollouts
from pyserving.server.servable import Servable
from pyserving.server.warmup import STOPPED as WARMUP_STOPPED
from pyserving.server.warmup import WARMUP_FILE, Warmup

WAIT = 10.0  # the bound on what must happen at once (only reached when it does not)
SIGNATURE = fake_servable().signatures["serving_default"]


def in_thread(call: Callable[[], Any], timeout: float = WAIT) -> Any:
    """``call()``'s result (or its exception, raised) from another thread; AssertionError
    when it does not return within ``timeout``."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(("value", call()))
        except BaseException as error:
            outcome.append(("error", error))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert outcome, f"still running after {timeout} s"
    kind, value = outcome[0]
    if kind == "error":
        raise value
    return value


# --- the batcher ----------------------------------------------------------------------------

def test_a_stopped_batcher_refuses_new_work_with_unavailable():
    """Before: the task was queued where no batch thread looks; its caller waited until its
    deadline (forever without one)."""
    batcher = Batcher(BatchingOptions(max_batch_size=4, batch_timeout_micros=0,
                                      num_batch_threads=1))
    batcher.stop()
    servable = fake_servable()
    token = request_context.current.set(RequestContext(time.monotonic() + 2.0))
    try:
        with pytest.raises(ServingError) as raised:
            batcher.run(servable, SIGNATURE, [(INPUT, np.array([1.0]))], [OUTPUT])
    finally:
        request_context.current.reset(token)
    assert (raised.value.code, raised.value.message) == (grpc.StatusCode.UNAVAILABLE, STOPPED)
    assert servable.model.calls == []


# --- warmup ---------------------------------------------------------------------------------

class _Replayer:
    """A Predictor for Warmup: counts replays; ``on_replay(n)`` runs at the n-th."""

    def __init__(self, on_replay: Callable[[int], None]) -> None:
        self.replays = 0
        self._on_replay = on_replay

    def predict(self, servable: Servable, request: Any) -> None:
        self.replays += 1
        self._on_replay(self.replays)


def test_warmup_ends_after_the_current_request_once_shutdown_begins(tmp_path: Path):
    (tmp_path / "assets.extra").mkdir()
    (tmp_path / WARMUP_FILE).write_bytes(b"")
    record = prediction_log_pb2.PredictionLog()
    record.predict_log.request.model_spec.name = "m"
    records = [record.SerializeToString()] * 1000
    warmup: Warmup | None = None

    def stop_at_second(count: int) -> None:
        if count == 2:
            assert warmup is not None
            warmup.stop()  # as ModelServer.stop does from the signal handler's thread

    replayer = _Replayer(stop_at_second)
    warmup = Warmup(replayer, None, lambda path: iter(records), iterations=3)  # type: ignore
    with pytest.raises(ServingError) as raised:
        warmup.run(fake_servable(path=str(tmp_path)))
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE
    assert raised.value.message.startswith(WARMUP_STOPPED)
    assert replayer.replays == 2  # of 3000


# --- the manager ----------------------------------------------------------------------------

def test_a_cancelled_load_is_retired_outside_the_managers_lock():
    """Retiring a bucket version deletes its local copy (after_close): GetModelStatus must
    not wait for that. The retire callback asks for the status from another thread."""
    gate = threading.Event()
    asked: list[Any] = []
    manager: ModelManager | None = None

    def status_while_retiring() -> None:
        assert manager is not None
        asked.append(in_thread(lambda: manager.version_statuses("model"), timeout=3.0))

    def load(name: str, version: int, path: str) -> Servable:
        assert gate.wait(WAIT)
        servable = Servable(name, version, path, FakeModel())
        servable.after_close(status_while_retiring)
        return servable

    manager = ModelManager(load, LoadPolicy(max_retries=0))
    try:
        manager.set_aspired_versions("model", [VersionDirectory(1, "/models/model/1")])
        assert _settles(lambda: [s.state for s in manager.version_statuses("model")] == [
            VersionState.LOADING])
        manager.set_aspired_versions("model", [])  # cancels the load in progress
        gate.set()
        assert _settles(lambda: [s.state for s in manager.version_statuses("model")] == [
            VersionState.END])
    finally:
        manager.close(drain_seconds=0)
    assert len(asked) == 1 and [s.version for s in asked[0]] == [1]


# --- shadows --------------------------------------------------------------------------------

class _FakeManager:
    def acquire(self, name: str, version: int | None = None, label: str | None = None
                ) -> Servable:
        servable = fake_servable(name, version or 1)
        assert servable.try_acquire()
        return servable


def _routed(text: str) -> tuple[Router, Route]:
    rollouts = Rollouts()
    rollouts.apply(rollout_plans(text_format.Parse(text, rollout_pb2.RolloutConfig())))
    router = Router(_FakeManager(), rollouts)  # type: ignore[arg-type]
    rollout = rollouts.get("m")
    assert rollout is not None
    return router, Route(rollout, rollout.arms[0], mirror=True)


SHADOWED = 'rollouts { model_name: "m" split { version: 1 weight: 1 } ' \
           'shadow { version: 2 fraction: 1 %s } }'


def _mirror(router: Router, route: Route, shadow: Callable[[Any], Any],
            deadline: float | None = None) -> None:
    token = request_context.current.set(RequestContext(deadline))
    try:
        router.mirror(route, lambda: {"y": np.zeros(1)}, shadow)
    finally:
        request_context.current.reset(token)


def test_a_shadow_request_has_the_primarys_deadline_or_its_timeout():
    router, route = _routed(SHADOWED % "timeout_seconds: 0.5")
    seen: list[RequestContext] = []
    done = threading.Semaphore(0)

    def shadow(spec: Any) -> dict:
        seen.append(request_context.current.get())
        done.release()
        return {"y": np.zeros(1)}

    try:
        primary_deadline = time.monotonic() + 0.2
        before = time.monotonic()
        _mirror(router, route, shadow, deadline=primary_deadline)
        _mirror(router, route, shadow)  # no deadline of its own: the shadow's timeout
        after = time.monotonic()
        assert done.acquire(timeout=WAIT) and done.acquire(timeout=WAIT)
    finally:
        router.stop()
    assert seen[0].deadline == primary_deadline
    assert seen[1].deadline is not None and before + 0.5 <= seen[1].deadline <= after + 0.5
    assert route.rollout.plan.shadow is not None
    assert route.rollout.plan.shadow.timeout_seconds == 0.5


def test_a_hung_shadow_is_cancelled_by_stop_and_stop_returns():
    """A shadow version that never answers (it waits while its request is active) pinned the
    shadow thread and made stop() wait 30 s; now the stop cancels its request."""
    router, route = _routed(SHADOWED % "timeout_seconds: 3600")
    started = threading.Event()

    def hung(spec: Any) -> dict:
        started.set()
        context = request_context.current.get()
        while context.is_active() and not context.expired():
            time.sleep(0.01)  # a TensorFlow run polling its cancellation
        raise ServingError(grpc.StatusCode.CANCELLED, "cancelled")

    _mirror(router, route, hung)
    assert started.wait(WAIT)
    began = time.monotonic()
    in_thread(router.stop, timeout=WAIT)
    assert time.monotonic() - began < 2.0
    assert route.rollout.shadow.errors == 1


def test_the_shadow_budget_is_read_and_written_under_one_lock():
    """Forced interleaving: the shadow thread has read the budget to subtract a job's time
    when a caller's thread refills it; before, the subtraction overwrote the refill."""
    now = [0.0]
    interleave = threading.Event()
    budget = ShadowBudget(0.1, clock=lambda: now[0])

    def clock() -> float:
        if interleave.is_set() and threading.current_thread().name == "pyserving-shadow":
            interleave.clear()
            in_thread(budget.spent, timeout=1.0)  # a caller checks (and refills) meanwhile
        return now[0]

    runner = ShadowRunner(clock=clock)
    ran = threading.Semaphore(0)

    def job(seconds: float, then_interleave: bool = False) -> Callable[[], None]:
        def run() -> None:
            now[0] += seconds
            if then_interleave:
                interleave.set()
            ran.release()
        return run

    try:
        assert runner.submit(job(0.45), lambda: None, budget)  # 0.05 - 0.45 = -0.40
        assert ran.acquire(timeout=WAIT)
        assert _settles(lambda: budget.seconds_left == pytest.approx(-0.40))
        now[0] = 4.45  # -0.40 + 4.45 * 0.1 = 0.045 when the next job is offered
        assert runner.submit(job(1.0, then_interleave=True), lambda: None, budget)
        assert ran.acquire(timeout=WAIT)
        # The refill at 5.45 (0.045 -> 0.05, capped) happens before the 1 s is spent.
        assert _settles(lambda: budget.seconds_left == pytest.approx(0.05 - 1.0))
    finally:
        runner.stop(timeout=WAIT)


def _settles(condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_budget_and_timeout_are_fields_of_the_shadow_with_defaults():
    _, route = _routed(SHADOWED % "")
    shadow = route.rollout.plan.shadow
    assert shadow is not None and (shadow.budget, shadow.timeout_seconds) == (0.1, 5.0)
    _router, route = _routed(SHADOWED % "budget: 0.5 timeout_seconds: 2")
    shadow = route.rollout.plan.shadow
    assert shadow is not None and (shadow.budget, shadow.timeout_seconds) == (0.5, 2.0)
    for field, message in (("budget: 0", "shadow.budget: must be in (0, 1], got 0.0"),
                           ("budget: 1.5", "shadow.budget: must be in (0, 1], got 1.5"),
                           ("timeout_seconds: -1",
                            "shadow.timeout_seconds: must be a finite number > 0, got -1.0")):
        with pytest.raises(ServingError) as raised:
            _routed(SHADOWED % field)
        assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert raised.value.message.endswith(message), raised.value.message
