"""TensorFlow runs a short graph in the calling thread (run_mode.py): chosen per signature by
measuring both modes, with the same answers and errors, and only when the operator left the
inter-op pool to TensorFlow; a long graph stays on the pool, where the deadline stops it."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pyserving.server import request_context
from pyserving.server.apis import config_pb2
from pyserving.server.errors import ServingError
from pyserving.server.run_mode import SAMPLES
from pyserving.server.saved_model import load_servable, measures_run_mode
from pyserving.server.servable import Servable
from slow_models import slow_model  # noqa: F401 (fixture)

X = np.array([[1.0], [2.0], [5.0]], dtype=np.float32)


@pytest.fixture
def loaded() -> Callable[..., Servable]:
    servables: list[Servable] = []

    def load(path: str | Path, config: config_pb2.ConfigProto | None = None) -> Servable:
        servable = load_servable("m", 1, str(path), ["serve"],
                                 config or config_pb2.ConfigProto())
        servables.append(servable)
        return servable

    yield load
    for servable in servables:
        servable.retire(0)


def half_plus_two(testdata_model: Callable[..., str]) -> Path:
    return next(Path(testdata_model("saved_model_half_plus_two_cpu")).iterdir())


def predict(servable: Servable, x: np.ndarray = X) -> np.ndarray:
    signature = servable.signatures["serving_default"]
    feeds = [(signature.inputs["x"].name, x)]
    return servable.run(feeds, [signature.outputs["y"].name])[0]


def test_a_short_graph_comes_to_run_in_the_calling_thread_with_the_same_answers(
        testdata_model, loaded):
    servable = loaded(half_plus_two(testdata_model))
    modes = servable.model.run_modes
    answers = [predict(servable) for _ in range(2 * SAMPLES + 2)]
    fetches = (servable.signatures["serving_default"].outputs["y"].name,)
    assert modes.chosen(fetches) is True
    for answer in answers:
        np.testing.assert_array_equal(answer, [[2.5], [3.0], [4.5]])


def test_a_deadline_is_kept_in_the_calling_thread_too(testdata_model, loaded):
    servable = loaded(half_plus_two(testdata_model))
    for _ in range(2 * SAMPLES):
        predict(servable)
    soon = request_context.RequestContext(deadline=time.monotonic() + 30)
    token = request_context.current.set(soon)
    try:
        np.testing.assert_array_equal(predict(servable), [[2.5], [3.0], [4.5]])
    finally:
        request_context.current.reset(token)
    passed = request_context.RequestContext(deadline=time.monotonic() - 1)
    token = request_context.current.set(passed)
    try:
        with pytest.raises(ServingError, match="Deadline exceeded before the TensorFlow run"):
            predict(servable)
    finally:
        request_context.current.reset(token)


def test_a_tensorflow_error_reads_the_same_in_either_mode(testdata_model, loaded):
    path = half_plus_two(testdata_model)
    in_caller = loaded(path)
    for _ in range(2 * SAMPLES):
        predict(in_caller)
    on_pool = loaded(path, config_pb2.ConfigProto(inter_op_parallelism_threads=2))
    errors = []
    for servable in (in_caller, on_pool):
        with pytest.raises(ServingError) as raised:
            predict(servable, np.array([[1]], dtype=np.int32))
        errors.append((raised.value.code, raised.value.message))
    assert errors[0] == errors[1]
    assert errors[0][0].name == "INVALID_ARGUMENT"


def test_an_operator_sized_inter_op_pool_is_kept(testdata_model, loaded):
    sized = config_pb2.ConfigProto(inter_op_parallelism_threads=2)
    assert not measures_run_mode(sized)
    assert not measures_run_mode(config_pb2.ConfigProto(inter_op_parallelism_threads=-1))
    assert measures_run_mode(config_pb2.ConfigProto(intra_op_parallelism_threads=2))
    servable = loaded(half_plus_two(testdata_model), sized)
    assert servable.model.run_modes is None
    np.testing.assert_array_equal(predict(servable), [[2.5], [3.0], [4.5]])


def test_a_long_graph_stays_on_the_pool_where_its_deadline_stops_it(slow_model, loaded):  # noqa: F811
    servable = loaded(slow_model)
    signature = servable.signatures["serving_default"]
    feeds = [(signature.inputs["ms"].name, np.array([8], dtype=np.int64))]
    fetches = [signature.outputs["ms"].name]
    for _ in range(2 * SAMPLES):
        servable.run(feeds, fetches)
    assert servable.model.run_modes.chosen(tuple(fetches)) is False
    token = request_context.current.set(
        request_context.RequestContext(deadline=time.monotonic() + 0.2))
    started = time.monotonic()
    try:
        with pytest.raises(ServingError) as raised:
            servable.run([(feeds[0][0], np.array([5000], dtype=np.int64))], fetches)
    finally:
        request_context.current.reset(token)
    assert raised.value.code.name == "DEADLINE_EXCEEDED"
    assert time.monotonic() - started < 3
