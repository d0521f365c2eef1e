"""A plain-Python servable for the core's unit tests, as TF Serving's core/test_util/
fake_loader.h: no TensorFlow, so manager, source and batcher tests run in milliseconds."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import grpc
import numpy as np

from pyserving.server.apis import meta_graph_pb2
from pyserving.server.errors import ServingError
from pyserving.server.servable import Servable

INPUT, OUTPUT = "x:0", "y:0"


def doubling_signature() -> meta_graph_pb2.SignatureDef:
    """serving_default: input "x" ([n]) -> output "y" ([n]), y = 2 x."""
    signature = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    signature.inputs["x"].name = INPUT
    signature.inputs["x"].tensor_shape.dim.add(size=-1)
    signature.outputs["y"].name = OUTPUT
    signature.outputs["y"].tensor_shape.dim.add(size=-1)
    return signature


class FakeModel:
    """Doubles ``x:0`` into every fetch; records the rows of each call. A negative input
    fails the call (INVALID_ARGUMENT), as a TensorFlow assertion would."""

    def __init__(self) -> None:
        self.signatures = {"serving_default": doubling_signature()}
        self.calls: list[list[float]] = []
        self.closed = False
        self._lock = threading.Lock()

    def run(self, feeds: Sequence[tuple[str, np.ndarray]],
            fetches: Sequence[str]) -> list[np.ndarray]:
        x = dict(feeds)[INPUT]
        with self._lock:
            self.calls.append(x.tolist())
        if (x < 0).any():
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "x must be non-negative")
        return [x * 2 for _ in fetches]

    def close(self) -> None:
        self.closed = True


def fake_servable(name: str = "model", version: int = 1, path: str = "") -> Servable:
    return Servable(name, version, path or f"/models/{name}/{version}", FakeModel())


class FakeLoader:
    """A manager's loader: makes fake servables, fails the versions in ``failing`` and, for
    those in ``gates``, waits until the gate is set (a load in progress)."""

    def __init__(self) -> None:
        self.failing: dict[tuple[str, int], ServingError] = {}
        self.gates: dict[tuple[str, int], threading.Event] = {}
        self.loaded: list[Servable] = []

    def __call__(self, name: str, version: int, path: str) -> Servable:
        gate = self.gates.get((name, version))
        if gate is not None and not gate.wait(10):
            raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, "test gate never opened")
        error = self.failing.get((name, version))
        if error is not None:
            raise error
        servable = Servable(name, version, path, FakeModel())
        self.loaded.append(servable)
        return servable


class BlockingModel(FakeModel):
    """Keeps the thread that runs it (a batch thread) busy until ``release`` is set (at most
    ``wait`` seconds: a stuck test fails instead of hanging)."""

    def __init__(self, wait: float = 10.0) -> None:
        super().__init__()
        self.running = threading.Event()
        self.release = threading.Event()
        self._wait = wait

    def run(self, feeds: Sequence[tuple[str, np.ndarray]],
            fetches: Sequence[str]) -> list[np.ndarray]:
        self.running.set()
        assert self.release.wait(self._wait)
        return super().run(feeds, fetches)
