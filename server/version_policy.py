"""What the model manager should do next: pure, stateless, idempotent decisions.

As TF Serving's ``core/aspired_version_policy.h`` (``GetNextAction`` is "entirely stateless
and idempotent"), a policy reads a model's aspired versions and the states of the versions the
manager knows and returns the actions that move the model toward its aspired versions; the
manager (``manager.py``) carries them out and calls the policy again after every change. Until
a change, calling it again returns the same actions, so the manager marks each action done
(a load makes a START version, an unload an UNLOADING one) before it lets go of its lock.

Loads and unloads run on pools, so one call returns every action that is due (TF Serving
returns one per call and calls again at once). Label checks and load retries are decided
here as well: nothing in this module holds a lock, a thread or a clock.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass


class VersionState(enum.IntEnum):
    """ModelVersionStatus.State values."""

    UNKNOWN = 0
    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50


@dataclass(frozen=True)
class VersionSnapshot:
    """A version as the policy sees it: its state, and whether it ended in a failed load
    while aspired (such a version is not retried until it leaves the aspired set)."""

    state: VersionState
    failed_while_aspired: bool = False


class ActionKind(enum.Enum):
    LOAD = "load"  # start loading a new (or a cleanly ended) aspired version
    CANCEL = "cancel"  # a version still starting or loading is no longer aspired
    UNLOAD = "unload"  # an available version is no longer aspired


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    version: int


Policy = Callable[[Collection[int], Mapping[int, VersionSnapshot]], list[Action]]

_PENDING = (VersionState.START, VersionState.LOADING)


def _loads(aspired: Collection[int], states: Mapping[int, VersionSnapshot]) -> list[Action]:
    """New aspired versions, newest first as TF Serving loads them; a version that ended
    without a failure (cancelled, unloaded) and is aspired again loads again."""
    return [Action(ActionKind.LOAD, number) for number in sorted(aspired, reverse=True)
            if number not in states
            or (states[number].state == VersionState.END
                and not states[number].failed_while_aspired)]


def _cancels(aspired: Collection[int], states: Mapping[int, VersionSnapshot]) -> list[Action]:
    return [Action(ActionKind.CANCEL, number) for number, snapshot in sorted(states.items())
            if number not in aspired and snapshot.state in _PENDING]


def _unloads(aspired: Collection[int], states: Mapping[int, VersionSnapshot]) -> list[Action]:
    return [Action(ActionKind.UNLOAD, number) for number, snapshot in sorted(states.items())
            if number not in aspired and snapshot.state == VersionState.AVAILABLE]


def availability_preserving(aspired: Collection[int],
                            states: Mapping[int, VersionSnapshot]) -> list[Action]:
    """TF Serving's AvailabilityPreservingPolicy: load new aspired versions at once; unload a
    version that is no longer aspired only once an aspired version is available (or none is
    aspired), so a swap leaves no moment without a version to serve."""
    actions = _loads(aspired, states) + _cancels(aspired, states)
    aspired_available = any(states[n].state == VersionState.AVAILABLE
                            for n in aspired if n in states)
    if aspired_available or not aspired:
        actions += _unloads(aspired, states)
    return actions


def resource_preserving(aspired: Collection[int],
                        states: Mapping[int, VersionSnapshot]) -> list[Action]:
    """TF Serving's ResourcePreservingPolicy: unload versions that are no longer aspired
    first, and load new ones only once no such version holds resources (nothing of them is
    loading, available or unloading): never two generations in memory at once."""
    unloads = _unloads(aspired, states)
    actions = _cancels(aspired, states) + unloads
    unloading = {action.version for action in unloads}
    holding = [number for number, snapshot in states.items()
               if number not in aspired and number not in unloading
               and snapshot.state in (*_PENDING, VersionState.UNLOADING)]
    if not unloads and not holding:
        actions = _loads(aspired, states) + actions
    return actions


def retry_interval(attempt: int, max_retries: int, interval_seconds: float) -> float | None:
    """After failed attempt number ``attempt`` (0-based): the seconds to wait before the next
    one, or None when --max_num_load_retries are used up."""
    return interval_seconds if attempt < max_retries else None


def label_error(name: str, labels: Mapping[str, int], current: Mapping[str, int],
                available: Collection[int], allow_unavailable: bool) -> str | None:
    """Why a model's new labels are refused, or None: as TF Serving, a label may only name
    an available version, unless --allow_version_labels_for_unavailable_models lets a new
    label (or one that keeps its version) name any version."""
    for label, version in labels.items():
        moved = current.get(label, version) != version
        if allow_unavailable and not moved:
            continue
        if version not in available:
            return (f"Request to assign label to version {version} of model {name}, "
                    "which is not currently available for inference")
    return None
