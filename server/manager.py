"""The model manager: which versions of which models are loaded, their states and labels.

Request threads only read an immutable snapshot (``_serving``), replaced whole under a lock
when something changes, so resolving a ModelSpec takes no lock on the hot path.
"""

from __future__ import annotations

import enum
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Mapping

from pyserving.server import config as model_config
from pyserving.server.errors import (
    ServingError,
    failed_precondition,
    invalid_argument,
    not_found,
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
class _Snapshot:
    servables: Mapping[str, Mapping[int, Servable]]
    labels: Mapping[str, Mapping[str, int]]


class ModelManager:
    """Owns every loaded Servable; the only place model state changes."""

    def __init__(self, loader: Loader, *, load_threads: int = 1,
                 allow_labels_for_unavailable: bool = False) -> None:
        self._loader = loader
        self._load_threads = max(load_threads, 1)
        self._allow_labels_for_unavailable = allow_labels_for_unavailable
        self._lock = threading.Lock()
        self._serving = _Snapshot({}, {})
        self._states: dict[str, dict[int, VersionStatus]] = {}

    def load_config(self, config: model_config.ModelServerConfig) -> None:
        """Load every aspired version of every model in ``config``; raise on the first failure."""
        model_config.validate_model_server_config(config)
        # Like ServerCore::ReloadConfig, labels are checked before this config's versions load,
        # so at start-up they need --allow_version_labels_for_unavailable_models.
        labels = {model.name: dict(model.version_labels)
                  for model in config.model_config_list.config}
        self._check_labels(labels)
        plan: list[tuple[model_config.ModelConfig, model_config.VersionDirectory]] = []
        for model in config.model_config_list.config:
            versions = model_config.aspired_versions(model, model_config.scan_versions(model))
            if not versions:
                raise not_found(model_config.no_versions_message(model))
            for version in versions:
                plan.append((model, version))
                self._set_state(model.name, version.version, VersionState.START)
        with ThreadPoolExecutor(self._load_threads, thread_name_prefix="load") as pool:
            results = list(pool.map(lambda item: self._load(*item), plan))
        failures = [error for error in results if error is not None]
        if failures:
            raise failures[0]
        with self._lock:
            self._serving = _Snapshot(self._serving.servables, labels)

    def _load(self, model: model_config.ModelConfig,
              version: model_config.VersionDirectory) -> ServingError | None:
        self._set_state(model.name, version.version, VersionState.LOADING)
        try:
            servable = self._loader(model.name, version.version, version.path)
        except ServingError as error:
            log.error("loading servable %s version %d failed: %s", model.name,
                      version.version, error)
            self._set_state(model.name, version.version, VersionState.END, error)
            return error
        with self._lock:
            servables = {name: dict(versions)
                         for name, versions in self._serving.servables.items()}
            servables.setdefault(model.name, {})[version.version] = servable
            self._serving = _Snapshot(servables, self._serving.labels)
        self._set_state(model.name, version.version, VersionState.AVAILABLE)
        return None

    def _check_labels(self, labels: Mapping[str, Mapping[str, int]]) -> None:
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

    def _set_state(self, name: str, version: int, state: VersionState,
                   error: ServingError | None = None) -> None:
        with self._lock:
            self._states.setdefault(name, {})[version] = VersionStatus(version, state, error)

    def resolve(self, name: str, version: int | None = None,
                label: str | None = None) -> Servable:
        """The servable a ModelSpec names: a version, a label's version, or the latest."""
        if not name:
            raise invalid_argument("ModelSpec has no name specified.")
        snapshot = self._serving
        if label is not None:
            version = snapshot.labels.get(name, {}).get(label)
            if version is None:
                raise invalid_argument(f"Unrecognized servable version label: {label}")
        versions = snapshot.servables.get(name)
        if version is None:
            if versions:
                return versions[max(versions)]
            raise not_found(f"Servable not found for request: Latest({name})")
        servable = versions.get(version) if versions else None
        if servable is None:
            raise not_found(f"Servable not found for request: Specific({name}, {version})")
        return servable

    def version_statuses(self, name: str, version: int | None = None) -> list[VersionStatus]:
        """States of a model's versions, newest first, as GetModelStatus reports them."""
        with self._lock:
            states = dict(self._states.get(name, {}))
        if version is not None:
            if version not in states:
                raise not_found(f"Could not find version {version} of model {name}")
            return [states[version]]
        if not states:
            raise not_found(f"Could not find any versions of model {name}")
        return [states[v] for v in sorted(states, reverse=True)]

    def servables(self) -> list[Servable]:
        return [s for versions in self._serving.servables.values() for s in versions.values()]

    def close(self) -> None:
        """Unload everything (server shutdown)."""
        with self._lock:
            snapshot = self._serving
            self._serving = _Snapshot({}, {})
        for name, versions in snapshot.servables.items():
            for version, servable in versions.items():
                self._set_state(name, version, VersionState.UNLOADING)
                servable.close()
                self._set_state(name, version, VersionState.END)
