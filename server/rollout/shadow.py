"""Shadow traffic: a copy of a request sent to another version after the caller has its answer,
and the two answers compared.

The work is bounded so the primary path keeps its throughput: one background thread, a small
queue and a time budget per model (the rollout's ``shadow.budget``: seconds of shadow work per
second of wall time, 0.1 by default, with a little saved up while idle). A request is dropped
(and counted) when the queue is full or the budget is spent, checked when it is offered and
again when its turn comes: a lightly loaded server mirrors every request, a saturated one
spends about a tenth of a core on its shadows. Each shadow request has a deadline (the
primary's, at most ``shadow.timeout_seconds`` after it was mirrored), so a hung shadow
version holds the thread and its lease only that long. Measured (bench/rollout_shadow.py):
a 100% shadow keeps 0.90-0.92x of the primary requests/s at 8 and 32 clients; a budget that
let shadows run whenever fewer requests were in flight kept only 0.74x.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from pyserving.client.tensors import ndarray_from_tensor_proto
from pyserving.server.rollout.shadow_budget import ShadowBudget
from pyserving.server.rollout.state import Comparison

log = logging.getLogger(__name__)

DEFAULT_CAPACITY = 16
_Job = tuple[Callable[[], None], Callable[[], None], ShadowBudget]


class ShadowRunner:
    """Runs submitted jobs one at a time on a daemon thread, in submission order, each within
    its model's budget."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._jobs: queue.Queue[_Job | None] = queue.Queue(capacity)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pyserving-shadow", daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], None], on_drop: Callable[[], None],
               budget: ShadowBudget) -> bool:
        """Queue ``job``; when it is dropped instead (now or later), ``on_drop`` runs once."""
        if self._closed.is_set() or budget.spent():
            on_drop()
            return False
        try:
            self._jobs.put_nowait((job, on_drop, budget))
        except queue.Full:
            on_drop()
            return False
        return True

    def is_active(self) -> bool:
        """False once closed: a running job's request counts as cancelled (the batcher drops
        it, TensorFlow does not start it)."""
        return not self._closed.is_set()

    def close(self) -> None:
        """Drop what is queued and take no more; the running job sees ``is_active`` False."""
        self._closed.set()
        while True:
            try:
                item = self._jobs.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[1]()
        with contextlib.suppress(queue.Full):  # a submit raced the drain; the thread ends
            self._jobs.put_nowait(None)           # at the next item

    def stop(self, timeout: float | None = None) -> None:
        """``close``, then wait (at most ``timeout`` seconds) for the running job to return."""
        self.close()
        self._thread.join(timeout)

    def _run(self) -> None:
        while (item := self._jobs.get()) is not None:
            job, on_drop, budget = item
            if self._closed.is_set() or budget.spent():
                on_drop()
                continue
            started = self._clock()
            try:
                job()
            except Exception:  # a job reports its own errors; this keeps the thread alive
                log.exception("Shadow request failed unexpectedly")
            budget.spend(self._clock() - started)


def compare_outputs(primary: Mapping[str, np.ndarray], shadow: Mapping[str, np.ndarray],
                    max_abs_diff: float) -> Comparison:
    """Compare the outputs present in both answers. A pair is a mismatch when an output's shape
    or dtype differ, a value differs by more than ``max_abs_diff`` (a NaN against a number, or
    unequal strings, count as infinitely far), or no output is present in both."""
    common = sorted(set(primary) & set(shadow))
    worst, agreements = 0.0, []
    for name in common:
        ours, theirs = primary[name], shadow[name]
        if ours.shape != theirs.shape or ours.dtype != theirs.dtype:
            worst = float("inf")
            continue
        worst = max(worst, _max_abs_diff(ours, theirs))
        if ours.ndim == 2 and ours.size and np.issubdtype(ours.dtype, np.floating):
            agreements.append(bool(np.array_equal(ours.argmax(axis=1), theirs.argmax(axis=1))))
    return Comparison(mismatch=not common or worst > max_abs_diff, max_abs_diff=worst,
                      argmax_agrees=all(agreements) if agreements else None)


def _max_abs_diff(ours: np.ndarray, theirs: np.ndarray) -> float:
    if ours.size == 0:
        return 0.0
    if not (np.issubdtype(ours.dtype, np.number) or ours.dtype == np.bool_):
        return 0.0 if np.array_equal(ours, theirs) else float("inf")
    if ours.dtype == np.bool_ or np.issubdtype(ours.dtype, np.integer):
        wide = np.int64 if ours.dtype != np.uint64 else np.float64
        return float(np.abs(ours.astype(wide) - theirs.astype(wide)).max())
    both_nan = np.isnan(ours) & np.isnan(theirs)
    with np.errstate(invalid="ignore", over="ignore"):
        difference = np.abs(ours.astype(np.complex128 if np.iscomplexobj(ours) else np.float64)
                            - theirs.astype(np.complex128 if np.iscomplexobj(ours)
                                            else np.float64))
    difference = np.where(both_nan | (ours == theirs), 0.0, difference)
    difference = np.where(np.isnan(difference), np.inf, difference)
    return float(difference.max())


def response_outputs(response: Any) -> dict[str, np.ndarray]:
    """The named arrays of a Predict, Classify or Regress response, to compare."""
    if hasattr(response, "outputs"):
        return {name: ndarray_from_tensor_proto(tensor)
                for name, tensor in response.outputs.items()}
    if response.DESCRIPTOR.name == "ClassificationResponse":
        rows = response.result.classifications
        return {"scores": np.array([[cls.score for cls in row.classes] for row in rows],
                                   dtype=np.float32),
                "classes": np.array([[cls.label for cls in row.classes] for row in rows],
                                    dtype=object)}
    return {"outputs": np.array([row.value for row in response.result.regressions],
                                dtype=np.float32)}
