"""The model manager: carries out what the version policy decides, and serves the snapshot.

Sources (the file-system poller, config reloads) only tell it each model's aspired versions;
after every change the manager asks its policy (``version_policy.py``, TF Serving's
availability-preserving policy by default) what to do next and does it: loads new versions in
the background (with retries), serves a new version as soon as it is AVAILABLE, and unloads
versions that are no longer aspired once their in-flight requests have finished. Request
threads read an immutable snapshot, replaced whole under the lock. States and events go to
the state monitor (``state_monitor.py``), which waiters and observers read.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc

from pyserving.server.config import VersionDirectory
from pyserving.server.errors import ServingError, failed_precondition, invalid_argument, not_found
from pyserving.server.servable import Servable
from pyserving.server.state_monitor import ModelEvent, ModelObserver, StateMonitor, VersionStatus
from pyserving.server.version_policy import (
    Action,
    ActionKind,
    Policy,
    VersionSnapshot,
    VersionState,
    availability_preserving,
    label_error,
    retry_interval,
)

__all__ = ["LoadPolicy", "Loader", "ModelEvent", "ModelManager", "ModelObserver",
           "VersionState", "VersionStatus"]

log = logging.getLogger(__name__)

Loader = Callable[[str, int, str], Servable]


@dataclass(frozen=True)
class LoadPolicy:
    """How loads are retried: TF Serving's --max_num_load_retries and interval."""

    max_retries: int = 5
    retry_interval_seconds: float = 60.0
    load_threads: int = 1
    unload_threads: int = 1


@dataclass
class _Version:
    path: str
    state: VersionState = VersionState.START
    servable: Servable | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    # A failed version is not retried while it stays aspired; dropping out of the aspired set
    # (and coming back) gives it a new chance, as in TF Serving.
    failed_while_aspired: bool = False


@dataclass(frozen=True)
class _Snapshot:
    servables: Mapping[str, Mapping[int, Servable]]
    labels: Mapping[str, Mapping[str, int]]


class ModelManager:
    """Owns every loaded Servable; the only place model state changes."""

    def __init__(self, loader: Loader, policy: LoadPolicy = LoadPolicy(), *,
                 allow_labels_for_unavailable: bool = False,
                 observers: Sequence[ModelObserver] = (),
                 version_policy: Policy = availability_preserving) -> None:
        self._loader = loader
        self._policy = policy
        self._next_actions = version_policy
        self._allow_labels_for_unavailable = allow_labels_for_unavailable
        self._lock = threading.Condition()
        self.monitor = StateMonitor(observers, lock=self._lock)
        self._serving = _Snapshot({}, {})
        self._versions: dict[str, dict[int, _Version]] = {}
        self._aspired: dict[str, dict[int, str]] = {}
        self._closed = False
        self._load_pool = ThreadPoolExecutor(max(policy.load_threads, 1), "load")
        self._unload_pool = ThreadPoolExecutor(max(policy.unload_threads, 1), "unload")

    # --- what sources say ---------------------------------------------------------------------

    def set_aspired_versions(self, name: str, versions: list[VersionDirectory]) -> None:
        """The versions of ``name`` that should be served (empty: unload the model)."""
        with self._lock:
            if self._closed:
                return
            self._aspired[name] = {v.version: v.path for v in versions}
            self.monitor.aspire(name, self._aspired[name])
            for number, entry in self._versions.get(name, {}).items():
                if number not in self._aspired[name]:
                    entry.failed_while_aspired = False
            self._reconcile(name)

    def retry_failed(self, name: str, number: int) -> None:
        """Let a version whose load failed while aspired load again (its files changed): the
        next ``set_aspired_versions`` naming it loads it."""
        with self._lock:
            entry = self._versions.get(name, {}).get(number)
            if entry is not None and entry.state == VersionState.END:
                entry.failed_while_aspired = False

    def _reconcile(self, name: str) -> None:
        """Carry out what the version policy says ``name`` needs now (the lock is held)."""
        if self._closed:
            return
        versions = self._versions.setdefault(name, {})
        states = {number: VersionSnapshot(entry.state, entry.failed_while_aspired)
                  for number, entry in versions.items()}
        for action in self._next_actions(self._aspired.get(name, {}).keys(), states):
            self._apply(name, action)

    def _apply(self, name: str, action: Action) -> None:
        number = action.version
        if action.kind is ActionKind.LOAD:
            entry = self._versions[name][number] = _Version(self._aspired[name][number])
            self.monitor.record(name, number, VersionState.START)
            self._load_pool.submit(self._load, name, number, entry)
        elif action.kind is ActionKind.CANCEL:
            self._versions[name][number].cancel.set()
        else:
            entry = self._versions[name][number]
            # Out of the request snapshot at once (TF Serving quiesces it first): a request
            # after a reload that removed it is NOT_FOUND; in-flight ones drain.
            self._publish(name, number, None)
            self._set_state(name, number, entry, VersionState.UNLOADING)
            self._unload_pool.submit(self._unload, name, number, entry)

    # --- loading and unloading ----------------------------------------------------------------

    def _load(self, name: str, number: int, entry: _Version) -> None:
        attempts = self._policy.max_retries + 1
        for attempt in range(attempts):
            with self._lock:
                if entry.cancel.is_set() or self._closed:
                    self._set_state(name, number, entry, VersionState.END)
                    self._reconcile(name)  # it may have become aspired again meanwhile
                    return
                self._set_state(name, number, entry, VersionState.LOADING)
            started = time.monotonic()
            try:
                servable = self._loader(name, number, entry.path)
            except Exception as unexpected:
                error = unexpected if isinstance(unexpected, ServingError) else \
                    ServingError(grpc.StatusCode.UNKNOWN, f"{type(unexpected).__name__}: "
                                                          f"{unexpected}")
                log.error("Loading servable: {name: %s version: %d} failed (attempt %d of %d): %s",
                          name, number, attempt + 1, attempts, error)
                self.monitor.publish(ModelEvent("load_failure", name, number, entry.path,
                                                time.monotonic() - started, error))
                self.monitor.deliver()
                wait = retry_interval(attempt, self._policy.max_retries,
                                      self._policy.retry_interval_seconds)
                if wait is not None and not entry.cancel.wait(wait):
                    continue
                with self._lock:
                    # A load cancelled because the version left the aspired set is not a
                    # failure of an aspired version: if it comes back, it loads again.
                    entry.failed_while_aspired = not entry.cancel.is_set()
                    self._set_state(name, number, entry, VersionState.END, error)
                    self._reconcile(name)
                return
            self._loaded(name, number, entry, servable, started)
            return

    def _loaded(self, name: str, number: int, entry: _Version, servable: Servable,
                started: float) -> None:
        """Serve a version that loaded, unless it was cancelled meanwhile; then tell the
        observers (after the lock)."""
        with self._lock:
            cancelled = entry.cancel.is_set() or self._closed
            if not cancelled:
                entry.servable = servable
                previous = self._serving.servables.get(name, {})
                self._publish(name, number, servable)
                self._set_state(name, number, entry, VersionState.AVAILABLE)
                seconds = time.monotonic() - started
                log.info("Successfully loaded servable version {name: %s version: %d} in "
                         "%.0f ms", name, number, seconds * 1000)
                # Queued before _reconcile schedules unloads: observers hear load, swap,
                # unload.
                self.monitor.publish(ModelEvent("load", name, number, entry.path, seconds))
                if previous and max(previous) < number:
                    self.monitor.publish(ModelEvent("swap", name, number, entry.path,
                                                    previous_version=max(previous)))
                self._reconcile(name)
        if cancelled:
            # Retired outside the lock: closing it deletes a bucket version's local copy,
            # which must not stall GetModelStatus or a reload. It stays LOADING meanwhile, so
            # no new load of it starts (and copies) before this copy is gone.
            servable.retire()
            with self._lock:
                self._set_state(name, number, entry, VersionState.END)
                self._reconcile(name)
        self.monitor.deliver()

    def _unload(self, name: str, number: int, entry: _Version,
                drain_seconds: float | None = None) -> None:
        started = time.monotonic()
        with self._lock:
            self._publish(name, number, None)
        if entry.servable is not None:
            entry.servable.retire(drain_seconds)
            entry.servable = None
        seconds = time.monotonic() - started
        log.info("Unloaded servable version {name: %s version: %d} in %.0f ms", name, number,
                 seconds * 1000)
        with self._lock:
            self._set_state(name, number, entry, VersionState.END)
            self.monitor.publish(ModelEvent("unload", name, number, entry.path, seconds))
            # A policy may wait for this (resource preserving loads only now), and the
            # version may have become aspired again meanwhile.
            self._reconcile(name)
        self.monitor.deliver()

    def _publish(self, name: str, number: int, servable: Servable | None) -> None:
        """Swap the request snapshot: add (or, with None, remove) one servable. Holds the lock."""
        servables = {model: dict(versions) for model, versions in self._serving.servables.items()}
        if servable is None:
            servables.get(name, {}).pop(number, None)
        else:
            servables.setdefault(name, {})[number] = servable
        self._serving = _Snapshot(servables, self._serving.labels)

    def _set_state(self, name: str, number: int, entry: _Version, state: VersionState,
                   error: ServingError | None = None) -> None:
        entry.state = state
        self.monitor.record(name, number, state, error)

    # --- waiting (the state monitor answers) --------------------------------------------------

    def wait_until_settled(self, names: list[str], timeout: float | None = None
                           ) -> dict[str, list[VersionStatus]]:
        """Block until every aspired version of ``names`` is AVAILABLE or END; returns the
        failed versions (END with an error) per model."""
        return self.monitor.wait_until_settled(names, timeout)

    def change_count(self) -> int:
        """A mark for ``wait_for_latest``: state changes after it count."""
        return self.monitor.change_count()

    def wait_for_latest(self, names: Sequence[str], after: int) -> dict[str, VersionStatus]:
        """See ``StateMonitor.wait_for_latest``."""
        return self.monitor.wait_for_latest(names, after)

    def stop_waiting(self) -> None:
        """End every ``wait_for_latest`` (server shutdown)."""
        self.monitor.stop_waiting()

    def version_statuses(self, name: str, version: int | None = None) -> list[VersionStatus]:
        """States of a model's versions, newest first, as GetModelStatus reports them."""
        return self.monitor.version_statuses(name, version)

    def model_names(self) -> list[str]:
        return self.monitor.model_names()

    # --- labels -------------------------------------------------------------------------------

    def check_labels(self, labels: Mapping[str, Mapping[str, int]]) -> None:
        """Reject labels on versions that are not available (unless allowed), as TF Serving."""
        serving = self._serving
        for name, mapping in labels.items():
            error = label_error(name, mapping, serving.labels.get(name, {}),
                                serving.servables.get(name, {}).keys(),
                                self._allow_labels_for_unavailable)
            if error is not None:
                raise failed_precondition(error)

    def set_labels(self, labels: Mapping[str, Mapping[str, int]]) -> None:
        """Replace every label at once: a request sees the old or the new map, never a mix."""
        with self._lock:
            frozen = {name: dict(mapping) for name, mapping in labels.items() if mapping}
            self._serving = _Snapshot(self._serving.servables, frozen)

    # --- requests -----------------------------------------------------------------------------

    def acquire(self, name: str, version: int | None = None,
                label: str | None = None) -> Servable:
        """The servable a ModelSpec names (a version, a label's version, or the latest),
        counted in; the caller must ``release()`` it (or use it as a context manager)."""
        if not name:
            raise invalid_argument("ModelSpec has no name specified.")
        while True:
            snapshot = self._serving
            wanted = version
            if label is not None:
                wanted = snapshot.labels.get(name, {}).get(label)
                if wanted is None:
                    raise invalid_argument(f"Unrecognized servable version label: {label}")
            versions = snapshot.servables.get(name)
            servable: Servable | None
            if wanted is None:
                if not versions:
                    raise not_found(f"Servable not found for request: Latest({name})")
                servable = versions[max(versions)]
            else:
                servable = versions.get(wanted) if versions else None
                if servable is None:
                    raise not_found(f"Servable not found for request: Specific({name}, {wanted})")
            if servable.try_acquire():
                return servable
            # Lost a race with an unload that already replaced the snapshot: look again.

    def available_versions(self, name: str) -> set[int]:
        """The versions of ``name`` that requests can use now."""
        return set(self._serving.servables.get(name, {}))

    def labels(self) -> Mapping[str, Mapping[str, int]]:
        """Each model's version labels now (label -> version)."""
        return self._serving.labels

    def close(self, drain_seconds: float | None = None) -> None:
        """Cancel pending loads and unload everything (server shutdown); requests still
        running after ``drain_seconds`` are cancelled (None: wait for them)."""
        with self._lock:
            self._closed = True
            self.monitor.stop_waiting()
            for versions in self._versions.values():
                for entry in versions.values():
                    entry.cancel.set()
        self._load_pool.shutdown(wait=True)
        with self._lock:
            for name, versions in self._versions.items():
                for number, entry in versions.items():
                    if entry.state == VersionState.AVAILABLE:
                        self._set_state(name, number, entry, VersionState.UNLOADING)
                        self._unload_pool.submit(self._unload, name, number, entry,
                                                 drain_seconds)
        self._unload_pool.shutdown(wait=True)
