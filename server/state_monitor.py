"""Watching model states: the table waiters read, and the bus that tells observers.

As TF Serving's ``core/servable_state_monitor.h``: the manager publishes each model's aspired
versions and every version's state change here; start-up, ReloadConfig and tests wait on this
table ("until these versions settle"), GetModelStatus reads it, and observers (health,
metrics, the GC policy) hear each model event in order, one at a time, on whichever thread
published it, without any lock held, so they may block on gRPC or freeze the heap without
stalling requests, loads and unloads. A wait returns only once the observers were told of
everything before it, so a caller that saw a model load also sees its metrics and health.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from pyserving.server.errors import ServingError, not_found, unavailable
from pyserving.server.version_policy import VersionState


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

_SETTLED = (VersionState.AVAILABLE, VersionState.END)


@dataclass(frozen=True)
class _Entry:
    status: VersionStatus
    changed: int  # the change count when the state was set


class StateMonitor:
    """Every version's last state, each model's aspired versions, and the observers' queue."""

    def __init__(self, observers: Sequence[ModelObserver] = (), *,
                 lock: threading.Condition | None = None) -> None:
        self._observers = list(observers)
        # The manager shares its lock, so that the aspired set and the states it changes in
        # one step are seen together: a waiter never sees half a reconcile.
        self._lock = lock if lock is not None else threading.Condition()
        self._states: dict[str, dict[int, _Entry]] = {}
        self._aspired: dict[str, frozenset[int]] = {}
        self._changes = 0
        self._events: deque[ModelEvent] = deque()
        self._delivering = False
        self._stopped = False

    # --- what the manager publishes -----------------------------------------------------------

    def aspire(self, name: str, versions: Collection[int]) -> None:
        with self._lock:
            self._aspired[name] = frozenset(versions)
            self._lock.notify_all()

    def record(self, name: str, version: int, state: VersionState,
               error: ServingError | None = None) -> None:
        with self._lock:
            self._changes += 1
            self._states.setdefault(name, {})[version] = _Entry(
                VersionStatus(version, state, error), self._changes)
            self._lock.notify_all()

    def publish(self, event: ModelEvent) -> None:
        """Queue an event for the observers; ``deliver()`` (without the manager's lock) tells
        them."""
        with self._lock:
            self._events.append(event)

    def deliver(self) -> None:
        """Tell the observers the queued events, in order, one thread at a time; a thread that
        finds another delivering leaves its events to it."""
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

    # --- reading ------------------------------------------------------------------------------

    def model_names(self) -> list[str]:
        with self._lock:
            return sorted(self._aspired)

    def version_statuses(self, name: str, version: int | None = None) -> list[VersionStatus]:
        """States of a model's versions, newest first, as GetModelStatus reports them."""
        with self._lock:
            states = {n: entry.status for n, entry in self._states.get(name, {}).items()}
        if version is not None:
            if version not in states:
                raise not_found(f"Could not find version {version} of model {name}")
            return [states[version]]
        if not states:
            raise not_found(f"Could not find any versions of model {name}")
        return [states[v] for v in sorted(states, reverse=True)]

    def change_count(self) -> int:
        """A mark for ``wait_for_latest``: state changes after it count."""
        with self._lock:
            return self._changes

    # --- waiting (the lock is held in the conditions) -----------------------------------------

    def _observers_told(self) -> bool:
        return not self._events and not self._delivering

    def _settled(self, name: str) -> bool:
        """Every aspired version of ``name`` is AVAILABLE or END."""
        states = self._states.get(name, {})
        return all(number in states and states[number].status.state in _SETTLED
                   for number in self._aspired.get(name, ()))

    def wait_until_settled(self, names: Sequence[str], timeout: float | None = None
                           ) -> dict[str, list[VersionStatus]]:
        """Block until every aspired version of ``names`` is AVAILABLE or END; returns the
        failed versions (END with an error) per model."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while not (self._observers_told() and all(map(self._settled, names))):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._lock.wait(remaining)
            return {name: [entry.status for n, entry in sorted(self._states.get(name, {}).items())
                           if entry.status.error is not None
                           and n in self._aspired.get(name, ())]
                    for name in names}

    def _latest(self, names: Sequence[str], after: int) -> dict[str, VersionStatus] | None:
        if not self._observers_told() or not all(map(self._settled, names)):
            return None
        found = {}
        for name in names:
            for _, entry in sorted(self._states.get(name, {}).items(), reverse=True):
                if entry.changed > after and entry.status.state in _SETTLED:
                    found[name] = entry.status
                    break
            else:
                return None
        return found

    def wait_for_latest(self, names: Sequence[str], after: int) -> dict[str, VersionStatus]:
        """Block until each model has a version that became AVAILABLE or END after the mark
        ``after`` and its other aspired versions are settled too; returns, per model, the
        newest such version (what TF Serving's wait for ServableRequest::Latest reports; it
        returns at the first such version, this waits for the model's other versions as well,
        so a reply never races their loads). Waits with no timeout, as TF Serving does; raises
        UNAVAILABLE if the server stops meanwhile."""
        with self._lock:
            while (found := self._latest(names, after)) is None:
                if self._stopped:
                    raise unavailable("Server is shutting down; stopped waiting for models "
                                      f"{', '.join(names)} to become available")
                self._lock.wait()
            return found

    def stop_waiting(self) -> None:
        """End every ``wait_for_latest`` (server shutdown)."""
        with self._lock:
            self._stopped = True
            self._lock.notify_all()
