"""Applies ModelServerConfigs: at start-up, from ReloadConfig requests and from a polled
--model_config_file, with TF Serving's checks and its "block until new models load" rule."""

from __future__ import annotations

import logging
import threading
from typing import Callable, Mapping

import grpc

from pyserving.server import config as model_config
from pyserving.server.errors import ServingError
from pyserving.server.manager import ModelManager, VersionState, VersionStatus
from pyserving.server.source import FileSystemSource

log = logging.getLogger(__name__)

AppliedObserver = Callable[[model_config.ModelServerConfig], None]


class ModelConfigurator:
    """The current model list, and the one way to change it."""

    def __init__(self, manager: ModelManager, source: FileSystemSource) -> None:
        self._manager = manager
        self._source = source
        self._lock = threading.Lock()
        self._config: model_config.ModelServerConfig | None = None
        self._file_poller: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def config(self) -> model_config.ModelServerConfig | None:
        return self._config

    def apply(self, config: model_config.ModelServerConfig,
              on_applied: AppliedObserver | None = None) -> None:
        """Validate, move labels, add and remove models; returns once new models are
        AVAILABLE. Raises ServingError (and changes nothing) on an invalid config.
        ``on_applied`` hears of success before the next config can be applied."""
        with self._lock:
            self._apply(config)
            if on_applied is not None:
                on_applied(config)

    def _apply(self, config: model_config.ModelServerConfig) -> None:
        model_config.validate_model_server_config(config)
        if self._config == config:
            return
        models = list(config.model_config_list.config)
        labels = {model.name: dict(model.version_labels) for model in models}
        # Labels are checked and set before the config's versions load, as ServerCore does.
        self._manager.check_labels(labels)
        first = self._config is None
        old_names = set() if first else {m.name for m in self._config.model_config_list.config}
        new_names = [model.name for model in models if model.name not in old_names]
        self._manager.set_labels(labels)
        self._source.set_models(models)
        self._config = config
        failures = self._source.poll(new_names)
        for model in models:
            if model.name in failures:
                raise failures[model.name]
        failed = self._manager.wait_until_settled(new_names)
        for name in new_names:
            if failed.get(name) and first:
                raise failed[name][0].error
        error = self._unavailable_models_error(failed)
        if error is not None:
            raise error
        log.info("model config applied: %s", ", ".join(m.name for m in models) or "no models")

    def follow(self, config: model_config.ModelServerConfig,
               wanted: Callable[[], bool]) -> bool:
        """Apply a config another server has applied, unless ``wanted()`` (asked under the
        lock before each step) says it is stale; returns whether it was applied. Its labels
        may name versions available there but not loaded here yet: those load first, under
        the labels this server serves now, and then the labels move, all at once."""
        with self._lock:
            if not wanted():
                return False
            staged = self._with_current_labels(config)
            self._apply(staged)
        if staged != config:
            names = [model.name for model in config.model_config_list.config]
            self._source.poll(names)  # changed version policies: now, not at the next scan
            self._manager.wait_until_settled(names)
            with self._lock:
                if not wanted():
                    return False
                self._apply(config)
        return True

    def _with_current_labels(self, config: model_config.ModelServerConfig
                             ) -> model_config.ModelServerConfig:
        """``config`` with the current labels whose versions are available instead of its own."""
        current = {} if self._config is None else \
            {m.name: m.version_labels for m in self._config.model_config_list.config}
        staged = model_config.ModelServerConfig()
        staged.CopyFrom(config)
        for model in staged.model_config_list.config:
            available = self._manager.available_versions(model.name)
            model.ClearField("version_labels")
            for label, version in current.get(model.name, {}).items():
                if version in available:
                    model.version_labels[label] = version
        return staged

    def _unavailable_models_error(self, failed: Mapping[str, list[VersionStatus]]
                                  ) -> ServingError | None:
        """ServerCore::WaitUntilModelsAvailable's error for new models none of whose
        versions became AVAILABLE (reported by their newest failed version)."""
        entries = []
        for name in sorted(name for name, versions in failed.items() if versions):
            if any(status.state == VersionState.AVAILABLE
                   for status in self._manager.version_statuses(name)):
                continue
            newest = failed[name][-1]
            entries.append(f"{{{{name: {name} version: {newest.version}}} due to error: "
                           f"{newest.error.code.name}: {newest.error.message}}}, ")
        if not entries:
            return None
        return ServingError(grpc.StatusCode.UNKNOWN, f"{len(entries)} model(s) did not become "
                                                     f"available: {{{''.join(entries)}}}")

    def watch_file(self, path: str, poll_seconds: float) -> None:
        """Re-read ``path`` every ``poll_seconds`` and apply it when it changed."""
        if poll_seconds <= 0 or self._file_poller is not None:
            return

        def run() -> None:
            while not self._stop.wait(poll_seconds):
                try:
                    self.apply(model_config.read_model_config_file(path))
                except ServingError as error:
                    log.error("model config file %s not applied: %s", path, error)

        self._file_poller = threading.Thread(target=run, name="config-poll", daemon=True)
        self._file_poller.start()

    def stop(self) -> None:
        self._stop.set()
        if self._file_poller is not None:
            self._file_poller.join()
            self._file_poller = None
