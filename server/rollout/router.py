"""Where a prediction request goes: the version its ModelSpec names, or, for a request that
names none, the arm its model's rollout picks (state.py); and the shadow copy sent after it.

A routed request counts for its arm when it ends; it failed, for the guard, only when the
failure was its version's doing (verdict.py). A mirrored copy runs on the shadow runner within
its deadline, bypasses admission (it holds no caller's slot) and the split (its ModelSpec names
the shadow's version or label).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from pyserving.server import request_context
from pyserving.server.apis import model_pb2
from pyserving.server.errors import ServingError
from pyserving.server.manager import ModelManager
from pyserving.server.rollout.plan import Target
from pyserving.server.rollout.shadow import ShadowRunner, compare_outputs
from pyserving.server.rollout.state import ArmState, ModelRollout, Rollouts
from pyserving.server.rollout.verdict import counts_against_version
from pyserving.server.servable import Servable, acquire

log = logging.getLogger(__name__)

SHADOW_JOIN_SECONDS = 5.0  # how long stop() waits for a shadow request the manager cancelled

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
            # The arm's version is not loaded (NOT_FOUND): that is the arm's failure.
            route.rollout.record(route.arm, ok=False, failed=True)
            raise

    def finish(self, route: Route, error: BaseException | None) -> None:
        """A routed request ended with ``error`` (None: it succeeded)."""
        route.rollout.record(route.arm, ok=error is None,
                             failed=counts_against_version(error))

    def mirror(self, route: Route, primary: Callable[[], Outputs],
               shadow: Callable[[model_pb2.ModelSpec], Outputs]) -> None:
        """Send a route's copy to its model's shadow when ``route.mirror``: ``shadow(spec)``
        runs it for the shadow's ModelSpec, and its outputs are compared with ``primary()``'s."""
        rollout = route.rollout
        plan = rollout.plan.shadow
        if not route.mirror or plan is None:
            return
        spec = target_spec(rollout.plan.model_name, plan.target)
        # The primary's deadline, but at most the shadow's timeout from now: a hung shadow
        # version then holds the shadow thread, and its lease, only that long.
        deadline = time.monotonic() + plan.timeout_seconds
        primary_deadline = request_context.current.get().deadline
        if primary_deadline is not None:
            deadline = min(deadline, primary_deadline)
        runner = self._runner()
        trace = request_context.current.get().trace
        if trace is not None:  # --enable_tracing: the copy is a span linked to this request
            shadow = trace.shadowed(shadow)

        def run() -> None:
            rollout.count_shadow(mirrored=1)
            token = request_context.current.set(
                request_context.RequestContext(deadline, runner.is_active))
            try:
                theirs = shadow(spec)
            except ServingError as error:
                log.debug("Shadow request to %s failed: %s", plan.target.describe(), error)
                rollout.count_shadow(errors=1)
                return
            finally:
                request_context.current.reset(token)
            rollout.record_comparison(compare_outputs(primary(), theirs, plan.max_abs_diff))

        runner.submit(run, on_drop=lambda: rollout.count_shadow(dropped=1),
                      budget=rollout.shadow_budget)

    def _runner(self) -> ShadowRunner:
        with self._lock:
            if self._shadows is None:  # started by the first mirrored request
                self._shadows = ShadowRunner()
            return self._shadows

    def stop(self, wait: bool = True) -> None:
        """Drop queued shadow requests and take no more; with ``wait``, also wait (a bounded
        time) for the running one, whose request counts as cancelled from now on."""
        with self._lock:
            shadows = self._shadows
            if wait:
                self._shadows = None
        if shadows is None:
            return
        shadows.close()
        if wait:
            shadows.stop(timeout=SHADOW_JOIN_SECONDS)


def target_spec(model_name: str, target: Target) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=model_name)
    if target.label:
        spec.version_label = target.label
    else:
        spec.version.value = target.version or 0
    return spec
