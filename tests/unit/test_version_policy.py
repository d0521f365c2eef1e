"""The version policies as tables, as TF Serving tests them (core/
availability_preserving_policy_test.cc, resource_preserving_policy_test.cc): each row is the
aspired versions, the states of the versions the manager knows, and the actions due."""

from __future__ import annotations

import pytest

from pyserving.server.version_policy import (
    Action,
    ActionKind,
    VersionSnapshot,
    VersionState,
    availability_preserving,
    label_error,
    resource_preserving,
    retry_interval,
)

START, LOADING, AVAILABLE = VersionState.START, VersionState.LOADING, VersionState.AVAILABLE
UNLOADING, END = VersionState.UNLOADING, VersionState.END
FAILED = "failed"  # END after a failed load while aspired


def states(**by_version: VersionState | str) -> dict[int, VersionSnapshot]:
    """states(v1=AVAILABLE, v2=FAILED) -> {1: ..., 2: ...}"""
    return {int(name[1:]): (VersionSnapshot(END, failed_while_aspired=True) if state == FAILED
                            else VersionSnapshot(state))  # type: ignore[arg-type]
            for name, state in by_version.items()}


def load(version: int) -> Action:
    return Action(ActionKind.LOAD, version)


def unload(version: int) -> Action:
    return Action(ActionKind.UNLOAD, version)


def cancel(version: int) -> Action:
    return Action(ActionKind.CANCEL, version)


AVAILABILITY_PRESERVING = [
    # (what happens, aspired, known states, actions)
    ("a new model loads", {1}, {}, [load(1)]),
    ("new versions load at once, newest first", {1, 2, 3}, {}, [load(3), load(2), load(1)]),
    ("a settled model needs nothing", {2}, states(v2=AVAILABLE), []),
    ("a loading version is left to load", {2}, states(v2=LOADING), []),
    ("the old version serves until the new one is available", {2},
     states(v1=AVAILABLE, v2=LOADING), []),
    ("the old version unloads once the new one is available", {2},
     states(v1=AVAILABLE, v2=AVAILABLE), [unload(1)]),
    ("a new version loads while the old serves", {2}, states(v1=AVAILABLE), [load(2)]),
    ("a version that failed while aspired is not retried", {2}, states(v1=AVAILABLE,
                                                                       v2=FAILED), []),
    ("a failed version keeps the old one serving", {2}, states(v1=AVAILABLE, v2=FAILED), []),
    ("a cancelled or unloaded version aspired again loads again", {1}, states(v1=END),
     [load(1)]),
    ("no aspired version: everything unloads", set(), states(v1=AVAILABLE, v2=AVAILABLE),
     [unload(1), unload(2)]),
    ("no aspired version: pending loads are cancelled", set(), states(v1=START, v2=LOADING),
     [cancel(1), cancel(2)]),
    ("a version no longer aspired stops loading", {1}, states(v1=AVAILABLE, v2=LOADING),
     [cancel(2)]),
    ("unloading and ended versions need nothing", {3}, states(v1=UNLOADING, v2=END,
                                                            v3=AVAILABLE), []),
    ("any available aspired version lets the unaspired ones go", {2, 3},
     states(v1=AVAILABLE, v2=AVAILABLE, v3=LOADING), [unload(1)]),
]

RESOURCE_PRESERVING = [
    ("a new model loads", {1}, {}, [load(1)]),
    ("the old version unloads before the new one loads", {2}, states(v1=AVAILABLE),
     [unload(1)]),
    ("nothing loads while the old version unloads", {2}, states(v1=UNLOADING), []),
    ("nothing loads while an unaspired version still loads", {2}, states(v1=LOADING),
     [cancel(1)]),
    ("the new version loads once the old one ended", {2}, states(v1=END), [load(2)]),
    ("a version that failed while aspired is not retried", {2}, states(v1=END, v2=FAILED), []),
    ("no aspired version: everything unloads", set(), states(v1=AVAILABLE), [unload(1)]),
    ("a settled model needs nothing", {2}, states(v1=END, v2=AVAILABLE), []),
]


def _ids(table: list[tuple]) -> list[str]:
    return [row[0] for row in table]


@pytest.mark.parametrize("what, aspired, known, expected", AVAILABILITY_PRESERVING,
                         ids=_ids(AVAILABILITY_PRESERVING))
def test_availability_preserving(what, aspired, known, expected):
    assert availability_preserving(aspired, known) == expected


@pytest.mark.parametrize("what, aspired, known, expected", RESOURCE_PRESERVING,
                         ids=_ids(RESOURCE_PRESERVING))
def test_resource_preserving(what, aspired, known, expected):
    assert resource_preserving(aspired, known) == expected


@pytest.mark.parametrize("policy", [availability_preserving, resource_preserving])
def test_a_policy_is_idempotent_once_its_actions_are_marked(policy):
    """Calling again before anything changed gives the same answer; once the manager marks
    each action (a load makes START, an unload UNLOADING) the same actions are not due twice."""
    aspired, known = {3}, states(v1=AVAILABLE, v2=LOADING)
    assert policy(aspired, known) == policy(aspired, known)
    marked = {**known}
    for action in policy(aspired, known):
        marked[action.version] = VersionSnapshot(
            {ActionKind.LOAD: START, ActionKind.UNLOAD: UNLOADING,
             ActionKind.CANCEL: known.get(action.version, VersionSnapshot(START)).state
             }[action.kind])
    assert all(action.kind is ActionKind.CANCEL for action in policy(aspired, marked))


@pytest.mark.parametrize("attempt, max_retries, expected", [
    (0, 0, None),  # --max_num_load_retries=0: one attempt
    (0, 2, 0.5), (1, 2, 0.5), (2, 2, None),
])
def test_retry_interval(attempt, max_retries, expected):
    assert retry_interval(attempt, max_retries, 0.5) == expected


NOT_AVAILABLE = ("Request to assign label to version 3 of model m, which is not currently "
                 "available for inference")


@pytest.mark.parametrize("labels, current, available, allow, expected", [
    ({"stable": 1}, {}, {1}, False, None),
    ({"stable": 3}, {}, {1}, False, NOT_AVAILABLE),
    ({"canary": 3}, {}, {1}, True, None),  # a new label may name a loading version
    ({"stable": 3}, {"stable": 3}, set(), True, None),  # so may one that keeps its version
    ({"stable": 3}, {"stable": 1}, {1}, True, NOT_AVAILABLE),  # moving one may not
    ({"stable": 1, "canary": 3}, {}, {1}, False, NOT_AVAILABLE),
])
def test_label_error(labels, current, available, allow, expected):
    assert label_error("m", labels, current, available, allow) == expected
