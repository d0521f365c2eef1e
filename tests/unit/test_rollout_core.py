"""The rollout core without a server: reading plans, splitting, stickiness, guards, shadow
comparison and the bounded shadow runner."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import numpy as np
import pytest

from pyserving.server.errors import ServingError
from pyserving.server.rollout.plan import Target, read_rollout_config
from pyserving.server.rollout.shadow import ShadowRunner, compare_outputs
from pyserving.server.rollout.shadow_budget import ShadowBudget
from pyserving.server.rollout.state import Comparison, Rollouts
from support import wait_until

CANARY = """
rollouts {
  model_name: "m"
  split { label: "stable" weight: 80 }
  split { version: 2 weight: 20 }
  sticky_metadata_key: "x-user-id"
  shadow { label: "twin" fraction: 0.5 }
  guard { max_error_rate: 0.5 min_requests: 4 max_mismatch_rate: 0.5 }
}
"""


def plans(tmp_path: Path, text: str) -> dict:
    path = tmp_path / "rollout.txt"
    path.write_text(text)
    return read_rollout_config(str(path))


def refusal(tmp_path: Path, text: str) -> str:
    with pytest.raises(ServingError) as raised:
        plans(tmp_path, text)
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    return raised.value.message


def test_a_plan_reads_every_field(tmp_path):
    plan = plans(tmp_path, CANARY)["m"]
    assert [(arm.target, arm.weight) for arm in plan.arms] == [
        (Target(label="stable"), 80), (Target(version=2), 20)]
    assert plan.sticky_metadata_key == "x-user-id"
    assert (plan.shadow.target, plan.shadow.fraction, plan.shadow.max_abs_diff) == (
        Target(label="twin"), 0.5, 1e-6)
    assert (plan.guard.max_error_rate, plan.guard.min_requests,
            plan.guard.max_mismatch_rate) == (0.5, 4, 0.5)


@pytest.mark.parametrize("text, message", [
    ('rollouts { split { version: 1 weight: 1 } }', "rollouts[0].model_name: required"),
    ('rollouts { model_name: "m" }', "rollouts[0].split: at least one arm is required"),
    ('rollouts { model_name: "m" split { version: 1 weight: -1 } }',
     "rollouts[0].split[0].weight: must be a finite number >= 0, got -1.0"),
    ('rollouts { model_name: "m" split { version: 1 weight: nan } }',
     "rollouts[0].split[0].weight: must be a finite number >= 0, got nan"),
    ('rollouts { model_name: "m" split { version: 1 weight: 0 } }',
     "rollouts[0].split: at least one arm needs a weight above 0"),
    ('rollouts { model_name: "m" split { weight: 1 } }',
     "rollouts[0].split[0]: needs a label or a version"),
    ('rollouts { model_name: "m" split { version: 0 weight: 1 } }',
     "rollouts[0].split[0].version: must be positive, got 0"),
    ('rollouts { model_name: "m" split { label: "" weight: 1 } }',
     "rollouts[0].split[0].label: must not be empty"),
    ('rollouts { model_name: "m" split { version: 1 weight: 1 } split { version: 1 weight: 1 } }',
     "rollouts[0].split[1]: version 1 is already an arm"),
    ('rollouts { model_name: "m" split { version: 1 weight: 1 } shadow { fraction: 2 '
     'version: 2 } }', "rollouts[0].shadow.fraction: must be in [0, 1], got 2.0"),
    ('rollouts { model_name: "m" split { version: 1 weight: 1 } shadow { fraction: 1 } }',
     "rollouts[0].shadow: needs a label or a version"),
    ('rollouts { model_name: "m" split { version: 1 weight: 1 } shadow { version: 2 '
     'max_abs_diff: -1 } }', "rollouts[0].shadow.max_abs_diff: must be >= 0, got -1.0"),
    ('rollouts { model_name: "m" split { version: 1 weight: 1 } guard { max_error_rate: 1.5 } }',
     "rollouts[0].guard.max_error_rate: must be in (0, 1], got 1.5"),
    ('rollouts { model_name: "m" split { version: 1 weight: 1 } guard { max_mismatch_rate: 0.1 '
     '} }', "rollouts[0].guard.max_mismatch_rate: needs a shadow to guard"),
    ('rollouts { model_name: "m" split { version: 1 weight: 1 } }\n'
     'rollouts { model_name: "m" split { version: 1 weight: 1 } }',
     "rollouts[1].model_name: model 'm' has a rollout already"),
])
def test_an_invalid_plan_is_refused_naming_the_field(tmp_path, text, message):
    assert refusal(tmp_path, text) == f"Invalid rollout config: {message}"


def test_an_unparsable_file_is_refused_as_a_protobuf_file(tmp_path):
    assert refusal(tmp_path, "rollouts { bogus: 1 }") == (
        f"Invalid protobuf file: '{tmp_path / 'rollout.txt'}'")


def rollout_of(tmp_path: Path, text: str = CANARY):
    rollouts = Rollouts()
    rollouts.apply(plans(tmp_path, text))
    return rollouts, rollouts.get("m")


def test_the_split_follows_the_weights(tmp_path):
    _, model = rollout_of(tmp_path, CANARY.replace('sticky_metadata_key: "x-user-id"', ""))
    picks = [model.choose(None).target for _ in range(20_000)]
    canary = picks.count(Target(version=2)) / len(picks)
    assert abs(canary - 0.2) < 0.015  # > 5 standard deviations (0.0028)


def test_a_sticky_key_keeps_its_arm_and_keys_spread_by_weight(tmp_path):
    _, model = rollout_of(tmp_path)
    keys = [f"user-{n}" for n in range(10_000)]
    first = [model.choose(key).target for key in keys]
    assert first == [model.choose(key).target for key in keys]
    assert abs(first.count(Target(version=2)) / len(keys) - 0.2) < 0.02


def test_changing_a_weight_moves_only_the_keys_it_must(tmp_path):
    _, before = rollout_of(tmp_path)
    _, after = rollout_of(tmp_path, CANARY.replace("weight: 20", "weight: 30"))
    keys = [f"user-{n}" for n in range(10_000)]
    moved = [(before.choose(key).target, after.choose(key).target) for key in keys]
    changed = [pair for pair in moved if pair[0] != pair[1]]
    # 20% -> 30% of the keys on the canary: about a tenth move, all of them stable -> canary.
    assert all(pair == (Target(label="stable"), Target(version=2)) for pair in changed)
    assert 0.07 < len(changed) / len(keys) < 0.13


def test_an_arm_failing_past_the_guard_is_taken_out_until_the_plan_changes(tmp_path):
    tripped = []

    class Observer:
        def observe_rollout_request(self, model: str, arm: str, ok: bool) -> None:
            pass

        def observe_rollout_shadow(self, model: str, event: str, count: int) -> None:
            pass

        def observe_rollout_trip(self, model: str, what: str) -> None:
            tripped.append((model, what))

    rollouts = Rollouts(observer=Observer())
    rollouts.apply(plans(tmp_path, CANARY))
    model = rollouts.get("m")
    stable, canary = model.arms
    model.record(canary, ok=False)
    model.record(canary, ok=False)
    model.record(canary, ok=True)
    assert not canary.tripped  # 3 requests, fewer than min_requests
    model.record(canary, ok=False)
    assert canary.tripped and tripped == [("m", "arm")]
    assert {model.choose(f"k{n}").target for n in range(200)} == {stable.target}
    for _ in range(10):
        model.record(stable, ok=False)
    assert not stable.tripped  # the first arm is never taken out
    status = model.status(lambda target: target.version or 7)
    assert status["guard"]["tripped"]
    assert "version 2 failed 3 of 4 requests" in status["guard"]["reason"]
    assert status["arms"][1] == {"label": "", "version": 2, "weight": 0.0,
                                  "configured_weight": 20.0, "tripped": True,
                                  "requests": 4, "errors": 3}

    rollouts.apply(plans(tmp_path, CANARY))
    assert rollouts.get("m") is model  # an unchanged plan keeps its state
    rollouts.apply(plans(tmp_path, CANARY.replace("weight: 20", "weight: 21")))
    assert not rollouts.get("m").arms[1].tripped


def test_the_shadow_stops_when_it_mismatches_too_often(tmp_path):
    _, model = rollout_of(tmp_path)
    for mismatch in (True, False, True, True):
        model.record_comparison(Comparison(mismatch, 0.5 if mismatch else 0.0, None))
    assert model.shadow.tripped
    assert not any(model.wants_shadow() for _ in range(100))
    status = model.status(lambda target: None)["shadow"]
    assert (status["compared"], status["mismatches"], status["max_abs_diff"],
            status["fraction"]) == (4, 3, 0.5, 0.0)


def test_compare_outputs():
    same = {"y": np.array([[1.0, 2.0]], np.float32)}
    assert compare_outputs(same, same, 1e-6) == Comparison(False, 0.0, True)
    near = {"y": np.array([[1.0, 2.5]], np.float32)}
    assert compare_outputs(same, near, 1e-6) == Comparison(True, 0.5, True)
    assert compare_outputs(same, near, 0.5).mismatch is False
    flipped = {"y": np.array([[3.0, 2.0]], np.float32)}
    assert compare_outputs(same, flipped, 1e-6).argmax_agrees is False
    assert compare_outputs(same, {"y": np.array([1.0, 2.0], np.float32)}, 1).mismatch
    assert compare_outputs(same, {"y": same["y"].astype(np.float64)}, 1).max_abs_diff == np.inf
    assert compare_outputs(same, {"z": same["y"]}, 1).mismatch  # nothing in common
    nan = {"y": np.array([np.nan, 1.0])}
    assert compare_outputs(nan, nan, 0).mismatch is False
    assert compare_outputs(nan, {"y": np.array([0.0, 1.0])}, 1e9).max_abs_diff == np.inf
    words = {"w": np.array([b"a", b"b"], dtype=object)}
    assert not compare_outputs(words, words, 0).mismatch
    assert compare_outputs(words, {"w": np.array([b"a", b"c"], dtype=object)}, 0).mismatch
    ints = {"i": np.array([1, 5], np.int64)}
    assert compare_outputs(ints, {"i": np.array([1, 2], np.int64)}, 0).max_abs_diff == 3


def test_the_shadow_runner_is_bounded_and_sheds_past_its_time_budget():
    release, started = threading.Event(), threading.Event()
    ran, dropped = [], []
    now = [0.0]
    runner = ShadowRunner(capacity=2, clock=lambda: now[0])
    budget = ShadowBudget(0.1, clock=lambda: now[0])
    try:
        def blocking() -> None:
            started.set()
            release.wait(10)
            now[0] += 1.0  # a 1 s job: 0.05 s saved up + 0.1 s earned meanwhile, overspent

        assert runner.submit(blocking, lambda: dropped.append("blocking"), budget)
        assert started.wait(10)
        assert runner.submit(lambda: ran.append(1), lambda: dropped.append(1), budget)
        assert runner.submit(lambda: ran.append(2), lambda: dropped.append(2), budget)
        assert not runner.submit(lambda: ran.append(3), lambda: dropped.append(3),
                                 budget)  # full
        release.set()
        assert wait_until(lambda: len(dropped) == 3)  # the queued two, shed when their turn came
        assert not runner.submit(lambda: ran.append(4), lambda: dropped.append(4), budget)
        now[0] += 10.0  # the debt is paid off after 8.5 s of budget
        assert runner.submit(lambda: ran.append(5), lambda: dropped.append(5), budget)
        assert wait_until(lambda: ran == [5])
    finally:
        runner.stop(timeout=10)
    assert sorted(map(str, dropped)) == ["1", "2", "3", "4"]

