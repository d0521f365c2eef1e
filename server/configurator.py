"""Applies ModelServerConfigs: at start-up, from ReloadConfig requests and from a polled
--model_config_file, with TF Serving's checks and its "block until new models load" rule."""

from __future__ import annotations

import logging
import threading

from pyserving.server import config as model_config
from pyserving.server.errors import ServingError
from pyserving.server.manager import ModelManager
from pyserving.server.source import FileSystemSource

log = logging.getLogger(__name__)


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

    def apply(self, config: model_config.ModelServerConfig) -> None:
        """Validate, move labels, add and remove models; returns once new models are
        AVAILABLE. Raises ServingError (and changes nothing) on an invalid config."""
        with self._lock:
            model_config.validate_model_server_config(config)
            if self._config == config:
                return
            models = list(config.model_config_list.config)
            labels = {model.name: dict(model.version_labels) for model in models}
            # Labels are checked and set before the config's versions load, as ServerCore does.
            self._manager.check_labels(labels)
            old_names = set() if self._config is None else \
                {m.name for m in self._config.model_config_list.config}
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
                if failed.get(name):
                    raise failed[name][0].error
            log.info("model config applied: %s", ", ".join(m.name for m in models) or "no models")

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
