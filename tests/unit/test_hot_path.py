"""The one data path on a fake servable: a request with no rollout never enters the rollout
package, answer observers hear each answer once, the unbatched async runner moves fast
signatures onto the event loop and slow ones back (tests/e2e/test_hot_path_servers.py: the
same path through real servers)."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from fake_servable import INPUT, FakeModel, fake_servable
from pyserving.client.tensors import make_tensor_proto, ndarray_from_tensor_proto
from pyserving.server import servable as servable_module
from pyserving.server.apis import predict_pb2, tensor_pb2
from pyserving.server.core import Answer, ServingCore
from pyserving.server.errors import ServingError, not_found
from pyserving.server.example_inference import ExampleInference
from pyserving.server.predict import Predictor
from pyserving.server.rollout.router import Router
from pyserving.server.rollout.state import Rollouts
from pyserving.server.servable import Servable, run_steps_async, unbatched_async


class OneModel:
    """The manager's acquire() for one fake servable named "m"."""

    def __init__(self, servable: Servable) -> None:
        self.servable = servable

    def acquire(self, name: str, version: int | None = None,
                label: str | None = None) -> Servable:
        if name != "m":
            raise not_found(f"Servable not found for request: Latest({name})")
        assert self.servable.try_acquire()
        return self.servable


def core_for(servable: Servable) -> ServingCore:
    manager: Any = OneModel(servable)
    return ServingCore(manager, None, Predictor(), ExampleInference(),  # type: ignore[arg-type]
                       router=Router(manager, Rollouts()))


def predict_request(values: list[float], model: str = "m") -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["x"].CopyFrom(make_tensor_proto(tensor_pb2.TensorProto,
                                                   np.array(values, dtype=np.float32)))
    return request


# --- the core -------------------------------------------------------------------------------


def test_a_request_without_rollout_never_enters_the_rollout_package(monkeypatch):
    core = core_for(fake_servable("m"))

    def entered(*_: object) -> None:
        raise AssertionError("the rollout package was entered")

    monkeypatch.setattr(Router, "route", entered)
    monkeypatch.setattr(Router, "mirror", entered)
    monkeypatch.setattr(Router, "finish", entered)
    monkeypatch.setattr(Rollouts, "get", entered)
    response = core.predict(predict_request([1.0, 2.0]))
    assert ndarray_from_tensor_proto(response.outputs["y"]).tolist() == [2.0, 4.0]


def test_answer_observers_hear_each_answer_once_and_cannot_fail_it(caplog):
    core = core_for(fake_servable("m", version=7))
    heard: list[Answer] = []

    def failing(answer: Answer) -> None:
        raise RuntimeError("observer bug")

    core.add_answer_observer(heard.append)
    core.add_answer_observer(failing)
    request = predict_request([3.0])
    response = core.predict(request)
    outputs = core.predict_arrays(request.model_spec, lambda servable: (
        "", {"x": np.array([1.0], dtype=np.float32)}))

    assert [(a.api, a.model, a.version) for a in heard] == [("Predict", "m", 7)] * 2
    assert heard[0].request is request and heard[0].response is response
    assert heard[1].response == outputs and outputs[0][0] == "y"
    assert "answer observer" in caplog.text and "observer bug" in caplog.text


def test_failed_requests_are_not_observed():
    core = core_for(fake_servable("m"))
    heard: list[Answer] = []
    core.add_answer_observer(heard.append)
    with pytest.raises(ServingError, match="x must be non-negative"):
        core.predict(predict_request([-1.0]))  # the fake model refuses negative input
    assert heard == []


def test_array_steps_run_on_an_event_loop_through_the_async_runner():
    core = core_for(fake_servable("m"))
    spec = predict_request([1.0]).model_spec
    with ThreadPoolExecutor(1) as pool:
        outputs = asyncio.run(run_steps_async(core.predict_arrays_steps(
            spec, lambda servable: ("serving_default",
                                    {"x": np.array([5.0], dtype=np.float32)}), ("y",)),
            unbatched_async(pool)))
    assert [(alias, value.tolist()) for alias, value, _ in outputs] == [("y", [10.0])]


# --- where the unbatched TensorFlow call runs --------------------------------------------


class ThreadRecordingModel(FakeModel):
    def __init__(self) -> None:
        super().__init__()
        self.threads: list[str] = []

    def run(self, feeds: Any, fetches: Any) -> list[np.ndarray]:
        self.threads.append(threading.current_thread().name)
        return super().run(feeds, fetches)


def test_a_fast_signature_moves_onto_the_loop_and_a_slow_call_sends_it_back(monkeypatch):
    model = ThreadRecordingModel()
    servable = Servable("m", 1, "/m/1", model)
    signature = servable.signatures["serving_default"]
    feeds = [(INPUT, np.array([1.0], dtype=np.float32))]
    calls = servable_module.INLINE_AFTER

    async def run(count: int) -> None:
        for _ in range(count):
            await runner(servable, signature, feeds, ["y:0"])

    with ThreadPoolExecutor(1, thread_name_prefix="pool") as pool:
        runner = unbatched_async(pool)
        monkeypatch.setattr(servable_module, "INLINE_MAX_SECONDS", 60.0)
        asyncio.run(run(calls + 2))
        assert model.threads[:calls] == ["pool_0"] * calls
        assert model.threads[calls:] == ["MainThread"] * 2  # measured fast: inline
        monkeypatch.setattr(servable_module, "INLINE_MAX_SECONDS", 0.0)
        model.threads.clear()
        asyncio.run(run(3))
        # two slow calls in a row on the loop: back to the pool
        assert model.threads == ["MainThread", "MainThread", "pool_0"]


def test_a_slow_signature_stays_on_the_pool(monkeypatch):
    model = ThreadRecordingModel()
    servable = Servable("m", 1, "/m/1", model)
    signature = servable.signatures["serving_default"]
    monkeypatch.setattr(servable_module, "INLINE_MAX_SECONDS", 0.0)

    async def run() -> None:
        for _ in range(3 * servable_module.INLINE_AFTER):
            await runner(servable, signature, [(INPUT, np.array([1.0], np.float32))], ["y:0"])

    with ThreadPoolExecutor(1, thread_name_prefix="pool") as pool:
        runner = unbatched_async(pool)
        asyncio.run(run())
    assert set(model.threads) == {"pool_0"}
