"""Rollout experiments: which version answers a request that names no version and no label.

Each model with a plan (plan.py) splits such requests between its arms by weight: at
random, or, with a sticky key, by weighted rendezvous hashing of the key's value, so a key keeps
its arm while the weights stay and a weight change moves only the keys it must. The guard
judges versions, not clients: an arm's errors are only the failures that are its version's
doing (verdict.py), and an arm (not the first) whose error rate exceeds the first (stable)
arm's over the same period by ``max_error_rate``, once it has ``min_requests`` requests, is
taken out of the split until the plan changes; a fault that hits every arm alike trips
nothing. A shadow whose mismatch rate reaches ``max_mismatch_rate`` stops. Counts are this
process's own (with ``--workers`` each worker guards on its own traffic); the metrics add them
up over workers.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pyserving.server.rollout.plan import ArmPlan, RolloutPlan, Target
from pyserving.server.rollout.shadow_budget import ShadowBudget

log = logging.getLogger(__name__)

_HASH_SCALE = float(2**64)
_RATE_TOLERANCE = 1e-9  # 3/10 - 1/10 is 0.19999999999999998


class RolloutObserver(Protocol):
    """Hears every count a rollout makes (the metrics add them up over --workers)."""

    def observe_rollout_request(self, model: str, arm: str, ok: bool) -> None: ...

    def observe_rollout_shadow(self, model: str, event: str, count: int) -> None: ...

    def observe_rollout_trip(self, model: str, what: str) -> None: ...


class _Unobserved:
    def observe_rollout_request(self, model: str, arm: str, ok: bool) -> None:
        pass

    def observe_rollout_shadow(self, model: str, event: str, count: int) -> None:
        pass

    def observe_rollout_trip(self, model: str, what: str) -> None:
        pass


@dataclass
class ArmState:
    """One arm of a split and what it has answered."""

    plan: ArmPlan
    requests: int = 0
    errors: int = 0
    tripped: bool = False

    @property
    def target(self) -> Target:
        return self.plan.target

    @property
    def weight(self) -> float:
        return 0.0 if self.tripped else self.plan.weight

    @property
    def name(self) -> str:
        """``label:<label>`` or ``version:<number>``: its name in hashes and metrics."""
        target = self.plan.target
        return f"label:{target.label}" if target.label else f"version:{target.version}"


@dataclass
class ShadowState:
    """What the shadow of a model has seen."""

    mirrored: int = 0
    compared: int = 0
    dropped: int = 0
    mismatches: int = 0
    errors: int = 0
    max_abs_diff: float = 0.0
    argmax_compared: int = 0
    argmax_agreed: int = 0
    tripped: bool = False


@dataclass(frozen=True)
class Comparison:
    """A primary answer against its shadow's: ``max_abs_diff`` over the numeric outputs present
    in both (inf when shapes or dtypes differ), argmax agreement of 2-D float outputs (None
    when there is none)."""

    mismatch: bool
    max_abs_diff: float
    argmax_agrees: bool | None


class ModelRollout:
    """The live state of one model's plan: the arms, the shadow and the guard."""

    def __init__(self, plan: RolloutPlan, observer: RolloutObserver) -> None:
        self.plan = plan
        self.arms = [ArmState(arm) for arm in plan.arms]
        self._keys = {id(arm): arm.name.encode() for arm in self.arms}
        self.shadow = ShadowState()
        self.shadow_budget = ShadowBudget(plan.shadow.budget if plan.shadow else 0.0)
        self.reasons: list[str] = []
        self._observer = observer
        self._lock = threading.Lock()

    def choose(self, sticky_value: str | None) -> ArmState:
        """The arm for a request (``sticky_value``: the request's sticky key, if any)."""
        arms = [arm for arm in self.arms if arm.weight > 0] or self.arms[:1]
        if len(arms) == 1:
            return arms[0]
        if sticky_value is None:
            return random.choices(arms, weights=[arm.weight for arm in arms])[0]
        key = sticky_value.encode("utf-8", "surrogateescape")
        return max(arms, key=lambda arm: _rendezvous_score(key, self._keys[id(arm)],
                                                           arm.weight))

    def record(self, arm: ArmState, ok: bool, failed: bool | None = None) -> None:
        """Count an arm's answer (``failed``: the failure was its version's doing; by default,
        any error) and trip the guard when its error rate exceeds the stable arm's by the
        limit."""
        failed = not ok if failed is None else failed
        guard = self.plan.guard
        self._observer.observe_rollout_request(self.plan.model_name, arm.name, ok)
        with self._lock:
            arm.requests += 1
            arm.errors += failed
            stable = self.arms[0]
            if (arm.tripped or arm is stable or guard.max_error_rate is None
                    or not arm.errors or arm.requests < max(guard.min_requests, 1)):
                return
            excess = arm.errors / arm.requests - (stable.errors / stable.requests
                                                  if stable.requests else 0.0)
            if excess < guard.max_error_rate - _RATE_TOLERANCE:
                return
            arm.tripped = True
            reason = (f"{arm.target.describe()} failed {arm.errors} of {arm.requests} requests"
                      f", {stable.target.describe()} {stable.errors} of {stable.requests}"
                      f" (max_error_rate {guard.max_error_rate:g} above the stable arm's)"
                      ": taken out of the split")
        self._trip(reason, "arm")

    def wants_shadow(self) -> bool:
        shadow = self.plan.shadow
        return (shadow is not None and not self.shadow.tripped and shadow.fraction > 0
                and (shadow.fraction >= 1 or random.random() < shadow.fraction))

    def count_shadow(self, *, mirrored: int = 0, dropped: int = 0, errors: int = 0) -> None:
        with self._lock:
            self.shadow.mirrored += mirrored
            self.shadow.dropped += dropped
            self.shadow.errors += errors
        for event, count in (("mirrored", mirrored), ("dropped", dropped), ("errors", errors)):
            if count:
                self._observer.observe_rollout_shadow(self.plan.model_name, event, count)

    def record_comparison(self, comparison: Comparison) -> None:
        """Count a compared pair and stop shadowing when the mismatch rate reaches the limit."""
        guard, shadow = self.plan.guard, self.shadow
        self._observer.observe_rollout_shadow(self.plan.model_name, "compared", 1)
        if comparison.mismatch:
            self._observer.observe_rollout_shadow(self.plan.model_name, "mismatches", 1)
        with self._lock:
            shadow.compared += 1
            shadow.mismatches += comparison.mismatch
            if not math.isnan(comparison.max_abs_diff):
                shadow.max_abs_diff = max(shadow.max_abs_diff, comparison.max_abs_diff)
            if comparison.argmax_agrees is not None:
                shadow.argmax_compared += 1
                shadow.argmax_agreed += comparison.argmax_agrees
            limit = guard.max_mismatch_rate
            if shadow.tripped or not _reached(shadow.mismatches, shadow.compared, limit,
                                              guard.min_requests):
                return
            shadow.tripped = True
            reason = (f"shadow mismatched {shadow.mismatches} of {shadow.compared} compared "
                      f"answers (max_mismatch_rate {limit:g}): shadowing stopped")
        self._trip(reason, "shadow")

    def _trip(self, reason: str, what: str) -> None:
        """A guard tripped: shown in the status until the plan changes, logged, counted."""
        with self._lock:
            self.reasons.append(reason)
        log.warning("Rollout of model %s: %s", self.plan.model_name, reason)
        self._observer.observe_rollout_trip(self.plan.model_name, what)

    def status(self, version_of: Callable[[Target], int | None]) -> dict[str, Any]:
        """The status JSON document of ``GET /v1/models/{m}/rollout``; ``version_of`` resolves
        a target to the version it names now (None when it names none)."""
        with self._lock:
            arms = [{"label": arm.target.label, "version": version_of(arm.target),
                     "weight": arm.weight, "configured_weight": arm.plan.weight,
                     "tripped": arm.tripped, "requests": arm.requests, "errors": arm.errors}
                    for arm in self.arms]
            document: dict[str, Any] = {
                "model_name": self.plan.model_name, "arms": arms,
                "sticky_metadata_key": self.plan.sticky_metadata_key,
                "guard": {"tripped": bool(self.reasons), "reason": "; ".join(self.reasons)}}
            shadow, plan = self.shadow, self.plan.shadow
            if plan is not None:
                document["shadow"] = {
                    "label": plan.target.label, "version": version_of(plan.target),
                    "fraction": 0.0 if shadow.tripped else plan.fraction,
                    "mirrored": shadow.mirrored, "compared": shadow.compared,
                    "dropped": shadow.dropped, "mismatches": shadow.mismatches,
                    "errors": shadow.errors, "max_abs_diff": shadow.max_abs_diff,
                    "argmax_agreement": (shadow.argmax_agreed / shadow.argmax_compared
                                         if shadow.argmax_compared else None),
                    "tripped": shadow.tripped}
        return document


def _reached(bad: int, total: int, limit: float | None, minimum: int) -> bool:
    """Whether ``bad`` of ``total`` reaches the rate ``limit`` over at least ``minimum``."""
    return limit is not None and total >= max(minimum, 1) and bad >= limit * total


def _rendezvous_score(key: bytes, arm_key: bytes, weight: float) -> float:
    """Weighted rendezvous (highest random weight) hashing: -w / ln(u), u uniform in (0, 1)
    from a hash of key and arm; the arm of highest score wins."""
    digest = hashlib.blake2b(key + b"\0" + arm_key, digest_size=8).digest()
    uniform = (int.from_bytes(digest, "big") + 0.5) / _HASH_SCALE
    return -weight / math.log(uniform)


@dataclass
class Rollouts:
    """Every model's rollout; ``apply`` swaps in a new file's plans, keeping the live state
    (counts, tripped guards) of the models whose plan is unchanged."""

    observer: RolloutObserver = field(default_factory=_Unobserved)
    # model name -> rollout, swapped whole by apply(); the core reads it per request
    models: dict[str, ModelRollout] = field(default_factory=dict)

    def apply(self, plans: dict[str, RolloutPlan]) -> None:
        models = {}
        for name, plan in plans.items():
            current = self.models.get(name)
            models[name] = (current if current is not None and current.plan == plan
                            else ModelRollout(plan, self.observer))
        self.models = models  # one reference swap: requests see the old or the new set

    def get(self, model_name: str) -> ModelRollout | None:
        return self.models.get(model_name)

    def items(self) -> list[tuple[str, ModelRollout]]:
        return sorted(self.models.items())

    def __bool__(self) -> bool:
        return bool(self.models)
