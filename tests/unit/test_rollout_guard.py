"""The rollout guard judges versions, not clients (issue #24): what counts as an arm's failure,
and a canary compared with the stable arm over the same period. Plain-Python fakes; the
end-to-end scenario (malformed requests against a 50/50 split) is in test_rollout.py."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import text_format

from pyserving.client.protos.pyserving import rollout_pb2
from pyserving.server.apis import model_pb2
from pyserving.server.errors import ServingError, invalid_argument, not_found, unavailable
from pyserving.server.rollout.plan import rollout_plans
from pyserving.server.rollout.router import Route, Router
from pyserving.server.rollout.state import ModelRollout, Rollouts
from pyserving.server.rollout.verdict import counts_against_version, model_failure

SPLIT = """rollouts { model_name: "m" split { version: 1 weight: 1 } split { version: 2 weight: 1 }
                      guard { max_error_rate: 0.2 min_requests: 10 } }"""


def rollouts() -> Rollouts:
    made = Rollouts()
    made.apply(rollout_plans(text_format.Parse(SPLIT, rollout_pb2.RolloutConfig())))
    return made


def rollout() -> ModelRollout:
    model = rollouts().get("m")
    assert model is not None
    return model


class _Manager:
    """Version 1 is loaded; any other is not."""

    def acquire(self, name: str, version: int | None = None, label: str | None = None) -> object:
        if version != 1:
            raise not_found(f"Servable not found for request: Specific({name}, {version})")
        return object()


@pytest.mark.parametrize("error, counts", [
    (None, False),
    (invalid_argument("input size does not match signature: 1!=2 for inputs x"), False),
    (unavailable("The batch scheduling queue to which this task was submitted is full"), False),
    (ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many requests"), False),
    (ServingError(grpc.StatusCode.CANCELLED, "Request cancelled"), False),
    (model_failure(ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, "Timed out")), False),
    (model_failure(ServingError(grpc.StatusCode.CANCELLED, "Session closed")), False),
    (model_failure(invalid_argument("assertion failed: [x must be positive]")), True),
    (model_failure(ServingError(grpc.StatusCode.INTERNAL, "OOM when allocating")), True),
    (RuntimeError("a bug of the server"), False),
])
def test_only_failures_of_the_version_run_count(error, counts):
    assert counts_against_version(error) is counts


def test_refusals_before_the_run_do_not_count_against_the_arm():
    model = rollout()
    router = Router(_Manager(), Rollouts())  # type: ignore[arg-type]
    canary = model.arms[1]
    for _ in range(50):
        router.finish(Route(model, canary), invalid_argument("Missing input y"))
    router.finish(Route(model, canary), None)
    assert (canary.requests, canary.errors, canary.tripped) == (51, 0, False)


def test_an_arm_whose_version_is_not_loaded_fails_and_trips():
    made = rollouts()
    model = made.get("m")
    assert model is not None
    router = Router(_Manager(), made)  # type: ignore[arg-type]
    refused = 0
    for _ in range(200):
        try:
            router.route(model_pb2.ModelSpec(name="m"), model)
        except ServingError as error:
            assert error.code == grpc.StatusCode.NOT_FOUND
            refused += 1
    assert model.arms[1].tripped and model.arms[1].errors == refused >= 10


def test_a_fault_that_hits_every_arm_alike_trips_nothing():
    model = rollout()
    stable, canary = model.arms
    for n in range(400):  # half of each arm's requests fail: an overload, a bad client release
        failed = n % 2 == 0
        model.record(stable, ok=not failed, failed=failed)
        model.record(canary, ok=not failed, failed=failed)
    assert not canary.tripped


def test_a_canary_trips_when_it_fails_more_than_the_stable_arm_by_the_limit():
    model = rollout()
    stable, canary = model.arms
    for n in range(20):
        model.record(stable, ok=n % 10 != 0, failed=n % 10 == 0)  # 10%
    for n in range(9):
        model.record(canary, ok=n % 4 != 0, failed=n % 4 == 0)  # 3 of 9, below min_requests
    assert not canary.tripped
    model.record(canary, ok=True, failed=False)  # 3 of 10 = 30%: 20 points above 10%
    assert canary.tripped
    reason = model.status(lambda target: target.version)["guard"]["reason"]
    assert reason.startswith("version 2 failed 3 of 10 requests, version 1 2 of 20")
