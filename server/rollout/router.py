"""Where a prediction request goes: the version its ModelSpec names, or, for a request that
names none, the arm its model's rollout picks (state.py); and the shadow copy sent after it.

A routed request counts for its arm when it ends (any error, admission included, is a failed
request). A mirrored copy runs on the shadow runner, bypasses admission (it holds no caller's
slot) and the split (its ModelSpec names the shadow's version or label).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from pyserving.server import request_context
from pyserving.server.apis import model_pb2
from pyserving.server.errors import ServingError
from pyserving.server.manager import ModelManager
from pyserving.server.rollout.plan import Target
from pyserving.server.rollout.shadow import ShadowRunner, compare_outputs
from pyserving.server.rollout.state import ArmState, ModelRollout, Rollouts
from pyserving.server.servable import Servable, acquire

log = logging.getLogger(__name__)

Outputs = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Route:
    """A request the split sent to ``arm`` of ``rollout``."""

    rollout: ModelRollout
    arm: ArmState
    mirror: bool = False  # its answer goes to the shadow too


class Router:
    """Resolves ModelSpecs to servables through the manager and the rollouts; mirrors routed
    requests to their model's shadow."""

    def __init__(self, manager: ModelManager, rollouts: Rollouts | None = None) -> None:
        self.manager = manager
        self.rollouts = rollouts if rollouts is not None else Rollouts()
        self._lock = threading.Lock()
        self._shadows: ShadowRunner | None = None

    def servable_for(self, spec: model_pb2.ModelSpec) -> Servable:
        """The servable the spec names, counted in: use it as ``with ... as servable``."""
        return acquire(self.manager, spec)

    def route(self, spec: model_pb2.ModelSpec,
              rollout: ModelRollout) -> tuple[Servable, Route]:
        """The servable ``rollout`` picks for a request naming no version, and its route:
        the arm, and whether its answer is mirrored to the shadow (decided here, once)."""
        key = rollout.plan.sticky_metadata_key
        arm = rollout.choose(request_context.current.get().header(key.lower()) if key else None)
        shadow = rollout.plan.shadow
        route = Route(rollout, arm, shadow is not None and arm.target != shadow.target
                      and rollout.wants_shadow())
        try:
            return self.servable_for(target_spec(spec.name, arm.target)), route
        except BaseException:
            self.finish(route, ok=False)
            raise

    def finish(self, route: Route, ok: bool) -> None:
        """A routed request ended."""
        route.rollout.record(route.arm, ok)

    def mirror(self, route: Route, primary: Callable[[], Outputs],
               shadow: Callable[[model_pb2.ModelSpec], Outputs]) -> None:
        """Send a route's copy to its model's shadow when ``route.mirror``: ``shadow(spec)``
        runs it for the shadow's ModelSpec, and its outputs are compared with ``primary()``'s."""
        rollout = route.rollout
        plan = rollout.plan.shadow
        if not route.mirror or plan is None:
            return
        spec = target_spec(rollout.plan.model_name, plan.target)

        def run() -> None:
            rollout.count_shadow(mirrored=1)
            try:
                theirs = shadow(spec)
            except ServingError as error:
                log.debug("Shadow request to %s failed: %s", plan.target.describe(), error)
                rollout.count_shadow(errors=1)
                return
            rollout.record_comparison(compare_outputs(primary(), theirs, plan.max_abs_diff))

        self._runner().submit(run, on_drop=lambda: rollout.count_shadow(dropped=1))

    def _runner(self) -> ShadowRunner:
        with self._lock:
            if self._shadows is None:  # started by the first mirrored request
                self._shadows = ShadowRunner()
            return self._shadows

    def stop(self) -> None:
        """Drop queued shadow requests and end the shadow thread."""
        with self._lock:
            shadows, self._shadows = self._shadows, None
        if shadows is not None:
            shadows.stop(timeout=30)


def target_spec(model_name: str, target: Target) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=model_name)
    if target.label:
        spec.version_label = target.label
    else:
        spec.version.value = target.version or 0
    return spec
