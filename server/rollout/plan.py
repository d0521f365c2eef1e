"""``--rollout_config_file``: the text-format ``pyserving.RolloutConfig`` (protos/pyserving/
rollout.proto), read and checked into plain, immutable plans.

A file that does not parse or breaks a rule is refused with INVALID_ARGUMENT naming the field
(``rollouts[0].split[1].weight: ...``); the caller keeps the rollouts in force before it.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

from pyserving.client.protos.pyserving import rollout_pb2
from pyserving.server.config import parse_proto_text_file
from pyserving.server.errors import ServingError, invalid_argument

log = logging.getLogger(__name__)

DEFAULT_MAX_ABS_DIFF = 1e-6
DEFAULT_SHADOW_BUDGET = 0.1  # seconds of shadow work per second of wall time
DEFAULT_SHADOW_TIMEOUT = 5.0  # seconds a shadow request may run after it was mirrored


@dataclass(frozen=True)
class Target:
    """A version of a model named by label or by number (exactly one is set)."""

    label: str = ""
    version: int | None = None

    def describe(self) -> str:
        return f"label {self.label!r}" if self.label else f"version {self.version}"


@dataclass(frozen=True)
class ArmPlan:
    target: Target
    weight: float


@dataclass(frozen=True)
class ShadowPlan:
    target: Target
    fraction: float
    max_abs_diff: float
    budget: float = DEFAULT_SHADOW_BUDGET
    timeout_seconds: float = DEFAULT_SHADOW_TIMEOUT


@dataclass(frozen=True)
class GuardPlan:
    max_error_rate: float | None  # None: arms are not guarded
    min_requests: int
    max_mismatch_rate: float | None  # None: the shadow is not guarded


@dataclass(frozen=True)
class RolloutPlan:
    """One model's rollout, as the file states it."""

    model_name: str
    arms: tuple[ArmPlan, ...]
    sticky_metadata_key: str
    shadow: ShadowPlan | None
    guard: GuardPlan


def read_rollout_config(path: str) -> dict[str, RolloutPlan]:
    """The plans of a rollout file, by model name; raises ServingError if it is invalid."""
    return rollout_plans(parse_proto_text_file(path, rollout_pb2.RolloutConfig()))


def rollout_plans(config: rollout_pb2.RolloutConfig) -> dict[str, RolloutPlan]:
    """Check a RolloutConfig and turn it into plans, by model name."""
    plans: dict[str, RolloutPlan] = {}
    for index, rollout in enumerate(config.rollouts):
        plan = _plan(rollout, f"rollouts[{index}]")
        if plan.model_name in plans:
            raise _invalid(f"rollouts[{index}].model_name",
                           f"model {plan.model_name!r} has a rollout already")
        plans[plan.model_name] = plan
    return plans


def _plan(rollout: rollout_pb2.ModelRollout, where: str) -> RolloutPlan:
    if not rollout.model_name:
        raise _invalid(f"{where}.model_name", "required")
    if not rollout.split:
        raise _invalid(f"{where}.split", "at least one arm is required")
    arms = []
    for index, arm in enumerate(rollout.split):
        field = f"{where}.split[{index}]"
        weight = arm.weight
        if not math.isfinite(weight) or weight < 0:
            raise _invalid(f"{field}.weight", f"must be a finite number >= 0, got {weight}")
        arms.append(ArmPlan(_target(arm, field), weight))
    if not any(arm.weight > 0 for arm in arms):
        raise _invalid(f"{where}.split", "at least one arm needs a weight above 0")
    targets = [arm.target for arm in arms]
    for index, target in enumerate(targets):
        if target in targets[:index]:
            raise _invalid(f"{where}.split[{index}]", f"{target.describe()} is already an arm")
    return RolloutPlan(rollout.model_name, tuple(arms), rollout.sticky_metadata_key,
                       _shadow(rollout, where), _guard(rollout, where))


def _shadow(rollout: rollout_pb2.ModelRollout, where: str) -> ShadowPlan | None:
    if not rollout.HasField("shadow"):
        return None
    shadow, field = rollout.shadow, f"{where}.shadow"
    if not 0 <= shadow.fraction <= 1:
        raise _invalid(f"{field}.fraction", f"must be in [0, 1], got {shadow.fraction}")
    max_abs_diff = (shadow.max_abs_diff if shadow.HasField("max_abs_diff")
                    else DEFAULT_MAX_ABS_DIFF)
    if not max_abs_diff >= 0:
        raise _invalid(f"{field}.max_abs_diff", f"must be >= 0, got {max_abs_diff}")
    budget = shadow.budget if shadow.HasField("budget") else DEFAULT_SHADOW_BUDGET
    if not 0 < budget <= 1:
        raise _invalid(f"{field}.budget", f"must be in (0, 1], got {budget}")
    timeout = (shadow.timeout_seconds if shadow.HasField("timeout_seconds")
               else DEFAULT_SHADOW_TIMEOUT)
    if not (math.isfinite(timeout) and timeout > 0):
        raise _invalid(f"{field}.timeout_seconds", f"must be a finite number > 0, got {timeout}")
    return ShadowPlan(_target(shadow, field), shadow.fraction, max_abs_diff, budget, timeout)


def _guard(rollout: rollout_pb2.ModelRollout, where: str) -> GuardPlan:
    guard, field = rollout.guard, f"{where}.guard"
    if not rollout.HasField("guard"):
        return GuardPlan(None, 0, None)
    max_error_rate = guard.max_error_rate or None
    if max_error_rate is not None and not 0 < max_error_rate <= 1:
        raise _invalid(f"{field}.max_error_rate", f"must be in (0, 1], got {max_error_rate}")
    max_mismatch_rate = (guard.max_mismatch_rate if guard.HasField("max_mismatch_rate")
                         else None)
    if max_mismatch_rate is not None and not 0 < max_mismatch_rate <= 1:
        raise _invalid(f"{field}.max_mismatch_rate",
                       f"must be in (0, 1], got {max_mismatch_rate}")
    if max_mismatch_rate is not None and not rollout.HasField("shadow"):
        raise _invalid(f"{field}.max_mismatch_rate", "needs a shadow to guard")
    return GuardPlan(max_error_rate, guard.min_requests, max_mismatch_rate)


def _target(message: rollout_pb2.Arm | rollout_pb2.Shadow, field: str) -> Target:
    choice = message.WhichOneof("target")
    if choice == "label":
        if not message.label:
            raise _invalid(f"{field}.label", "must not be empty")
        return Target(label=message.label)
    if choice == "version":
        if message.version <= 0:
            raise _invalid(f"{field}.version", f"must be positive, got {message.version}")
        return Target(version=message.version)
    raise _invalid(field, "needs a label or a version")


def _invalid(field: str, reason: str) -> Exception:
    return invalid_argument(f"Invalid rollout config: {field}: {reason}")


class RolloutFileWatcher:
    """Reads the rollout file now (an invalid file is an error) and, with ``poll_seconds``
    above 0, again every ``poll_seconds``: each valid read is handed to ``apply``; an invalid
    one is logged and the rollouts in force stay."""

    def __init__(self, path: str, poll_seconds: float,
                 apply: Callable[[dict[str, RolloutPlan]], None]) -> None:
        self._path = path
        self._poll_seconds = poll_seconds
        self._apply = apply
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._apply(read_rollout_config(self._path))
        if self._poll_seconds > 0:
            self._thread = threading.Thread(target=self._poll, name="rollout-poll", daemon=True)
            self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self._poll_seconds):
            try:
                plans = read_rollout_config(self._path)
            except ServingError as error:
                log.error("Rollout config %s refused, the rollouts in force stay: %s",
                          self._path, error.message)
                continue
            self._apply(plans)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
