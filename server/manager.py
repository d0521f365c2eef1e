"""The model manager: which versions of which models are loaded, their states and labels.

Sources (the file-system poller, config reloads) only tell it each model's aspired versions;
the manager loads new ones in the background (with retries), serves a new version as soon as
it is AVAILABLE, and unloads versions that are no longer aspired once another aspired version
is available (TF Serving's availability-preserving policy) and their in-flight requests have
finished. Request threads read an immutable snapshot, replaced whole under the lock.
Observers hear each model event in order, after the lock is released (they may read state,
block on gRPC or freeze the heap without stalling requests, loads and unloads).
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import grpc

from pyserving.server.config import VersionDirectory
from pyserving.server.errors import (
    ServingError,
    failed_precondition,
    invalid_argument,
    not_found,
    unavailable,
)
from pyserving.server.servable import Servable

log = logging.getLogger(__name__)

Loader = Callable[[str, int, str], Servable]


class VersionState(enum.IntEnum):
    """ModelVersionStatus.State values."""

    UNKNOWN = 0
    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50


@dataclass(frozen=True)
class VersionStatus:
    version: int
    state: VersionState
    error: ServingError | None = None


@dataclass(frozen=True)
class ModelEvent:
    """What observers hear: a version loaded, failed a load attempt, was unloaded, or
    replaced ``previous_version`` as the model's latest ("swap")."""

    kind: str  # "load" | "load_failure" | "unload" | "swap"
    model: str
    version: int
    path: str
    seconds: float = 0.0
    error: ServingError | None = None
    previous_version: int | None = None


ModelObserver = Callable[[ModelEvent], None]


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
    error: ServingError | None = None
    servable: Servable | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    # A failed version is not retried while it stays aspired; dropping out of the aspired set
    # (and coming back) gives it a new chance, as in TF Serving.
    failed_while_aspired: bool = False
    changed: int = 0  # the manager's change count when the state was last set


@dataclass(frozen=True)
class _Snapshot:
    servables: Mapping[str, Mapping[int, Servable]]
    labels: Mapping[str, Mapping[str, int]]


class ModelManager:
    """Owns every loaded Servable; the only place model state changes."""

    def __init__(self, loader: Loader, policy: LoadPolicy = LoadPolicy(), *,
                 allow_labels_for_unavailable: bool = False,
                 observers: Sequence[ModelObserver] = ()) -> None:
        self._loader = loader
        self._observers = list(observers)
        self._policy = policy
        self._allow_labels_for_unavailable = allow_labels_for_unavailable
        self._lock = threading.Condition()
        self._serving = _Snapshot({}, {})
        self._versions: dict[str, dict[int, _Version]] = {}
        self._aspired: dict[str, dict[int, str]] = {}
        self._closed = False
        self._waits_cancelled = False
        self._changes = 0
        self._events: deque[ModelEvent] = deque()  # for observers, in order (under the lock)
        self._delivering = False
        self._load_pool = ThreadPoolExecutor(max(policy.load_threads, 1), "load")
        self._unload_pool = ThreadPoolExecutor(max(policy.unload_threads, 1), "unload")

    # --- what sources say ---------------------------------------------------------------------

    def set_aspired_versions(self, name: str, versions: list[VersionDirectory]) -> None:
        """The versions of ``name`` that should be served (empty: unload the model)."""
        with self._lock:
            if self._closed:
                return
            self._aspired[name] = {v.version: v.path for v in versions}
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
        """Schedule the loads and unloads that move ``name`` toward its aspired versions."""
        if self._closed:
            return
        aspired = self._aspired.get(name, {})
        versions = self._versions.setdefault(name, {})
        for number, path in sorted(aspired.items(), reverse=True):  # newest first, as TF
            entry = versions.get(number)
            if entry is None or (entry.state == VersionState.END
                                 and not entry.failed_while_aspired):
                entry = versions[number] = _Version(path)
                self._lock.notify_all()
                self._load_pool.submit(self._load, name, number, entry)
        for number, entry in versions.items():
            if number not in aspired and entry.state in (VersionState.START,
                                                         VersionState.LOADING):
                entry.cancel.set()
        any_aspired_available = any(
            versions[n].state == VersionState.AVAILABLE for n in aspired if n in versions)
        if any_aspired_available or not aspired:
            for number, entry in versions.items():
                if number not in aspired and entry.state == VersionState.AVAILABLE:
                    # Out of the request snapshot at once (TF Serving quiesces it first): a
                    # request after a reload that removed it is NOT_FOUND; in-flight ones drain.
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
            except Exception as unexpected:  # noqa: BLE001 - a loader bug must not wedge state
                error = unexpected if isinstance(unexpected, ServingError) else \
                    ServingError(grpc.StatusCode.UNKNOWN, f"{type(unexpected).__name__}: "
                                                          f"{unexpected}")
                log.error("Loading servable: {name: %s version: %d} failed (attempt %d of %d): %s",
                          name, number, attempt + 1, attempts, error)
                with self._lock:
                    self._events.append(ModelEvent("load_failure", name, number, entry.path,
                                                   time.monotonic() - started, error))
                self._deliver()
                if attempt + 1 < attempts and \
                        not entry.cancel.wait(self._policy.retry_interval_seconds):
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
                self._events.append(ModelEvent("load", name, number, entry.path, seconds))
                if previous and max(previous) < number:
                    self._events.append(ModelEvent("swap", name, number, entry.path,
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
            return
        self._deliver()

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
            self._events.append(ModelEvent("unload", name, number, entry.path, seconds))
        self._deliver()

    def _deliver(self) -> None:
        """Tell the observers the queued events, in order, one thread at a time and without
        the lock; a thread that finds another delivering leaves its events to it. Waiters
        (``wait_until_settled``, ``wait_for_latest``) return only once all are told."""
        while True:
            with self._lock:
                if self._delivering or not self._events:
                    return
                self._delivering = True
                event = self._events.popleft()
            try:
                for observer in self._observers:
                    observer(event)
            finally:
                with self._lock:
                    self._delivering = False
                    self._lock.notify_all()

    def _observers_told(self) -> bool:
        """No event waits for the observers (the lock is held)."""
        return not self._events and not self._delivering

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
        entry.error = error
        self._changes += 1
        entry.changed = self._changes
        self._lock.notify_all()

    # --- waiting and labels -------------------------------------------------------------------

    def wait_until_settled(self, names: list[str], timeout: float | None = None
                           ) -> dict[str, list[VersionStatus]]:
        """Block until every aspired version of ``names`` is AVAILABLE or END; returns the
        failed versions (END with an error) per model."""
        deadline = None if timeout is None else time.monotonic() + timeout

        def settled() -> bool:
            if not self._observers_told():
                return False
            for name in names:
                versions = self._versions.get(name, {})
                for number in self._aspired.get(name, {}):
                    entry = versions.get(number)
                    if entry is None or entry.state not in (VersionState.AVAILABLE,
                                                            VersionState.END):
                        return False
            return True

        with self._lock:
            while not settled():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._lock.wait(remaining)
            return {name: [VersionStatus(n, e.state, e.error)
                           for n, e in sorted(self._versions.get(name, {}).items())
                           if e.error is not None and n in self._aspired.get(name, {})]
                    for name in names}

    def change_count(self) -> int:
        """A mark for ``wait_for_latest``: state changes after it count."""
        with self._lock:
            return self._changes

    def wait_for_latest(self, names: Sequence[str], after: int) -> dict[str, VersionStatus]:
        """Block until each model has a version that became AVAILABLE or END after the mark
        ``after`` and its other aspired versions are settled too; returns, per model, the
        newest such version (what TF Serving's wait for ServableRequest::Latest reports; it
        returns at the first such version, this waits for the model's other versions as well,
        so a reply never races their loads). Waits with no timeout, as TF Serving does; raises
        UNAVAILABLE if the server stops meanwhile."""
        settled = (VersionState.AVAILABLE, VersionState.END)

        def reached() -> dict[str, VersionStatus] | None:
            if not self._observers_told():
                return None
            found = {}
            for name in names:
                versions = self._versions.get(name, {})
                if any(number not in versions or versions[number].state not in settled
                       for number in self._aspired.get(name, {})):
                    return None
                for number, entry in sorted(versions.items(), reverse=True):
                    if entry.changed > after and entry.state in settled:
                        found[name] = VersionStatus(number, entry.state, entry.error)
                        break
                else:
                    return None
            return found

        with self._lock:
            while (found := reached()) is None:
                if self._closed or self._waits_cancelled:
                    raise unavailable("Server is shutting down; stopped waiting for models "
                                      f"{', '.join(names)} to become available")
                self._lock.wait()
            return found

    def stop_waiting(self) -> None:
        """End every ``wait_for_latest`` (server shutdown)."""
        with self._lock:
            self._waits_cancelled = True
            self._lock.notify_all()

    def check_labels(self, labels: Mapping[str, Mapping[str, int]]) -> None:
        """Reject labels on versions that are not available (unless allowed), as TF Serving."""
        current = self._serving.labels
        for name, mapping in labels.items():
            available = self._serving.servables.get(name, {})
            for label, version in mapping.items():
                moved = current.get(name, {}).get(label, version) != version
                if self._allow_labels_for_unavailable and not moved:
                    continue
                if version not in available:
                    raise failed_precondition(
                        f"Request to assign label to version {version} of model {name}, "
                        "which is not currently available for inference")

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

    def version_statuses(self, name: str, version: int | None = None) -> list[VersionStatus]:
        """States of a model's versions, newest first, as GetModelStatus reports them."""
        with self._lock:
            states = {n: VersionStatus(n, e.state, e.error)
                      for n, e in self._versions.get(name, {}).items()}
        if version is not None:
            if version not in states:
                raise not_found(f"Could not find version {version} of model {name}")
            return [states[version]]
        if not states:
            raise not_found(f"Could not find any versions of model {name}")
        return [states[v] for v in sorted(states, reverse=True)]

    def available_versions(self, name: str) -> set[int]:
        """The versions of ``name`` that requests can use now."""
        return set(self._serving.servables.get(name, {}))

    def model_names(self) -> list[str]:
        with self._lock:
            return sorted(self._aspired)

    def close(self, drain_seconds: float | None = None) -> None:
        """Cancel pending loads and unload everything (server shutdown); requests still
        running after ``drain_seconds`` are cancelled (None: wait for them)."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()
            for name, versions in self._versions.items():
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
