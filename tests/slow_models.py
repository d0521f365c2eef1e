"""A test model that takes as long as it is told and counts its runs in a variable: "sleep"
sleeps for max(ms) milliseconds (cheap on the CPU), "spin" loops max(n) times in a
tf.while_loop, "carry" sleeps like "sleep" and reports the size of a payload, "calls" reads
the run counter; so run times, and whether a request ran at all, show in the responses.
Import the fixtures into a test module to use them (``from slow_models import slow_base,
slow_model``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import tensorflow as tf
from tensorflow.python.data.experimental.ops import testing as tf_data_testing
from tensorflow_serving.apis import prediction_service_pb2_grpc

MODEL = "slow"


TIMEOUT = 20.0


Stub = prediction_service_pb2_grpc.PredictionServiceStub


class _Slow(tf.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = tf.Variable(0, dtype=tf.int64)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])
    def sleep(self, ms: tf.Tensor) -> dict[str, tf.Tensor]:
        call = self.calls.assign_add(1)
        # The sleep dataset sleeps before the element and again before end-of-sequence.
        slept = tf.data.Dataset.from_tensors(ms).apply(
            tf_data_testing.sleep(tf.reduce_max(ms) * 500)).get_single_element()
        return {"call": tf.fill(tf.shape(ms), call), "ms": slept}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])
    def spin(self, n: tf.Tensor) -> dict[str, tf.Tensor]:
        call = self.calls.assign_add(1)
        spins = tf.while_loop(lambda i: i < tf.reduce_max(n), lambda i: i + 1,
                              [tf.constant(0, tf.int64)])[0]
        return {"call": tf.fill(tf.shape(n), call), "spins": tf.fill(tf.shape(n), spins)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64),
                                  tf.TensorSpec([None, None], tf.uint8)])
    def carry(self, ms: tf.Tensor, payload: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"ms": self.sleep(ms)["ms"],
                "bytes": tf.fill(tf.shape(ms), tf.shape(payload, tf.int64)[1])}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])
    def count(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"calls": tf.fill(tf.shape(x), self.calls.read_value())}


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    module = _Slow()
    path = tmp_path_factory.mktemp("slow") / "1"
    tf.saved_model.save(module, str(path), signatures={
        "serving_default": module.sleep, "spin": module.spin, "calls": module.count,
        "carry": module.carry})
    return path


@pytest.fixture
def slow_base(slow_model: Path, tmp_path: Path) -> Path:
    """A base path whose version 1 is the slow model."""
    base = tmp_path / MODEL
    base.mkdir()
    (base / "1").symlink_to(slow_model)
    return base
