"""Watching a served model from outside, as a client does: Predict load from client threads
that records the versions answering, and GetModelStatus polled for the states each version
went through (TF Serving's order: START, LOADING, AVAILABLE, UNLOADING, END)."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field

import grpc
import numpy as np
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from pyserving.client.tensors import fill_tensor_proto
from support import TESTDATA, wait_until

TWO_VERSIONS = TESTDATA / "saved_model_half_plus_two_2_versions"
RPC_TIMEOUT = 10.0


State = get_model_status_pb2.ModelVersionStatus


START, LOADING, AVAILABLE, UNLOADING, END = (State.START, State.LOADING, State.AVAILABLE,
                                             State.UNLOADING, State.END)


def predict_request(model: str = "default", x: float = 2.0,
                    delay: float | None = None) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    fill_tensor_proto(request.inputs["x"], np.array([x], np.float32))
    if delay is not None:
        fill_tensor_proto(request.inputs["delay"], np.array(delay, np.float32))
    return request


def switches(versions: list[int]) -> list[int]:
    """The versions a client saw, consecutive repeats collapsed: [123, 124] is one switch."""
    return [v for i, v in enumerate(versions) if i == 0 or versions[i - 1] != v]


@dataclass
class Client:
    versions: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    calls: list[tuple[float, float]] = field(default_factory=list)  # (started, finished)


class PredictLoad:
    """Client threads, each looping one Predict on a real channel until the block exits."""

    def __init__(self, channel: grpc.Channel, request: predict_pb2.PredictRequest,
                 clients: int = 4) -> None:
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        self._request = request
        self._stop = threading.Event()
        self.clients = [Client() for _ in range(clients)]
        self._threads = [threading.Thread(target=self._loop, args=(client,), name=f"client-{i}")
                         for i, client in enumerate(self.clients)]

    def _loop(self, client: Client) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                response = self._stub.Predict(self._request, RPC_TIMEOUT)
            except grpc.RpcError as error:
                client.errors.append(f"{error.code().name}: {error.details()}")
                continue
            client.calls.append((started, time.monotonic()))
            client.versions.append(response.model_spec.version.value)
            if list(response.outputs["y"].float_val) != [3.0]:
                client.errors.append(f"wrong output {response.outputs['y']}")

    def __enter__(self) -> PredictLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def wait_for_version(self, version: int) -> None:
        """Until every client has been answered by ``version``, then a few calls more."""
        wait_until(lambda: all(version in c.versions for c in self.clients),
                   f"every client to be served version {version}")
        counts = [len(c.versions) for c in self.clients]
        wait_until(lambda: all(len(c.versions) >= n + 3
                               for c, n in zip(self.clients, counts, strict=True)),
                   "more responses")

    @property
    def errors(self) -> list[str]:
        return [error for client in self.clients for error in client.errors]


class StatusWatcher:
    """Polls GetModelStatus and remembers the states each version went through."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._stub = model_service_pb2_grpc.ModelServiceStub(channel)
        self.seen: dict[tuple[str, int], list[int]] = {}

    def statuses(self, model: str = "default") -> list[State]:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model
        response = self._stub.GetModelStatus(request, RPC_TIMEOUT)
        for status in response.model_version_status:
            states = self.seen.setdefault((model, status.version), [])
            if not states or states[-1] != status.state:
                states.append(status.state)
        return list(response.model_version_status)

    def states(self, model: str = "default") -> dict[int, int]:
        return {status.version: status.state for status in self.statuses(model)}

    def wait_for(self, expected: dict[int, int], model: str = "default") -> list[State]:
        """Until each listed version is in its state; returns the statuses seen then."""
        latest: list[State] = []

        def reached() -> bool:
            latest[:] = self.statuses(model)
            states = {status.version: status.state for status in latest}
            return all(states.get(version) == state for version, state in expected.items())

        wait_until(reached, f"{model} states {expected}")
        return latest

    def assert_tf_serving_sequences(self) -> None:
        """Each version moved forward through START, LOADING, AVAILABLE, UNLOADING, END; only
        after END may it start again (a new load of the same version)."""
        for (model, version), states in self.seen.items():
            for before, after in itertools.pairwise(states):
                assert after > before or before == END, (model, version, states)
