"""The server's state for its status page (rest/status_page.py) and ``GET /status.json``:
models, versions, states and labels, each rollout (arms, weights, counts, shadow, guard),
request and error counts, batch queue depths, and the recent load errors. Read on demand from
the manager, the rollouts, the metrics registry (summed over ``--workers`` processes, as the
metrics page is) and the batcher; nothing here runs per request."""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from pyserving.server.errors import ServingError
from pyserving.server.manager import ModelEvent, ModelManager

_REQUEST_COUNT = ":tensorflow:serving:request_count"
RECENT_ERRORS = 20


class StatusBoard:
    """Collects the status document; observes model events to keep the recent load errors."""

    def __init__(self, manager: ModelManager, *,
                 rollout_status: Callable[[], Mapping[str, dict[str, Any]]] = dict,
                 queue_depths: Callable[[], Mapping[str, int]] = dict,
                 request_counts: Callable[[], Mapping[str, Mapping[str, int]]] = dict,
                 server_info: Mapping[str, Any] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._manager = manager
        self._rollout_status = rollout_status
        self._queue_depths = queue_depths
        self._request_counts = request_counts
        self._info = dict(server_info or {})
        self._clock = clock
        self._started = clock()
        self._lock = threading.Lock()
        self._load_errors: deque[dict[str, Any]] = deque(maxlen=RECENT_ERRORS)

    def observe_model_event(self, event: ModelEvent) -> None:
        """Manager observer: remember failed loads, newest last."""
        if event.kind == "load_failure" and event.error is not None:
            with self._lock:
                self._load_errors.append({
                    "time": self._clock(), "model": event.model, "version": event.version,
                    "error": f"{event.error.code.name}: {event.error.message}"})

    def document(self) -> dict[str, Any]:
        """The status as JSON-ready data."""
        labels = self._manager.labels()
        counts = self._request_counts()
        depths = self._queue_depths()
        models = []
        for name in self._manager.model_names():
            try:
                statuses = self._manager.version_statuses(name)
            except ServingError:  # no version known yet
                statuses = []
            by_status = counts.get(name, {})
            models.append({
                "name": name,
                "versions": [{"version": status.version, "state": status.state.name,
                              "error": None if status.error is None else
                              f"{status.error.code.name}: {status.error.message}"}
                             for status in statuses],
                "labels": dict(sorted(labels.get(name, {}).items())),
                "requests": sum(by_status.values()),
                "errors": sum(n for code, n in by_status.items() if code != "OK"),
                "batch_queue_depth": depths.get(name, 0)})
        with self._lock:
            errors = list(reversed(self._load_errors))
        now = self._clock()
        return {"server": {**self._info, "pid": os.getpid(),
                           "uptime_seconds": round(now - self._started, 1), "time": now},
                "models": models, "rollouts": dict(self._rollout_status()),
                "recent_load_errors": errors}


def request_counts(families: Any) -> dict[str, dict[str, int]]:
    """Requests by model and status from the metrics registry's families (TF Serving's
    request_count, summed over processes by the multiprocess collector)."""
    counts: dict[str, dict[str, int]] = {}
    for family in families:
        if family.name != _REQUEST_COUNT:
            continue
        for sample in family.samples:
            if sample.name != _REQUEST_COUNT:
                continue
            model, status = sample.labels.get("model_name", ""), sample.labels.get("status", "")
            per_model = counts.setdefault(model, {})
            per_model[status] = per_model.get(status, 0) + int(sample.value)
    return counts
