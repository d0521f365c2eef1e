"""Applies ModelServerConfigs: at start-up, from ReloadConfig requests and from a polled
--model_config_file, with TF Serving's checks and its "block until new models load" rule."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

import grpc

from pyserving.server import config as model_config
from pyserving.server.errors import ServingError, failed_precondition, unimplemented
from pyserving.server.manager import ModelManager, VersionState, VersionStatus
from pyserving.server.remote_storage import RemoteStorage, is_remote, require_cloud_extra
from pyserving.server.request_log import RequestLog
from pyserving.server.source import FileSystemSource

log = logging.getLogger(__name__)

_STOP_WAIT_SECONDS = 1.0
AppliedObserver = Callable[[model_config.ModelServerConfig], None]


class ModelConfigurator:
    """The current model list, and the one way to change it."""

    def __init__(self, manager: ModelManager, source: FileSystemSource,
                 request_log: RequestLog | None = None) -> None:
        self._manager = manager
        self._request_log = request_log
        self._source = source
        self._lock = threading.Lock()
        self._config: model_config.ModelServerConfig | None = None  # the models served
        self._accepted: model_config.ModelServerConfig | None = None  # last validated list
        self._file_poller: threading.Thread | None = None
        self._stop = threading.Event()
        self.file_polls = 0  # reads of the watched config file done (tests wait on it)

    @property
    def watching_file(self) -> bool:
        """Whether a thread re-reads the config file (--model_config_file_poll_wait_seconds
        > 0)."""
        return self._file_poller is not None

    @property
    def config(self) -> model_config.ModelServerConfig | None:
        return self._config

    def apply(self, config: model_config.ModelServerConfig,
              on_applied: AppliedObserver | None = None) -> None:
        """Validate, move labels, add and remove models; returns once each new model has a
        version that loaded (or failed), waiting without timeout for models with no version
        yet. Raises ServingError on an invalid config; as in TF Serving, a config refused after
        its label check has already moved the labels and become the one later platform checks
        compare against. ``on_applied`` hears of success before the next config is applied."""
        with self._lock:
            self._apply(config)
            if on_applied is not None:
                on_applied(config)

    def _apply(self, config: model_config.ModelServerConfig) -> None:
        """ServerCore::ReloadConfig: its checks in its order, then the models."""
        kind = config.WhichOneof("config")
        if kind is None and self._config is None:
            log.info("Taking no action for empty config.")
            return
        if kind != "model_config_list":
            if self._config is None:
                # TF Serving aborts (LOG(FATAL)) on a custom model config.
                raise unimplemented("ModelServer does not yet support custom model config.")
            raise failed_precondition("Cannot transition to requested config. It is only "
                                      "legal to transition from one ModelConfigList to "
                                      "another.")
        model_config.validate_model_config_list(config)
        for model in config.model_config_list.config:
            if is_remote(model.base_path):
                require_cloud_extra(model.base_path)  # fails now, not at every poll
        # pyserving's own check (TF Serving refuses any logging_config): before the config
        # is accepted, so a bad one changes nothing.
        logging = None if self._request_log is None else self._request_log.settings(config)
        if self._accepted is not None:
            model_config.validate_no_platform_changes(self._accepted, config)
        # From here on TF Serving holds the new config as its own even if a later check fails.
        self._accepted = config
        models = list(config.model_config_list.config)
        labels = {model.name: dict(model.version_labels) for model in models}
        # Labels are checked and set before the config's versions load, as ServerCore does.
        self._manager.check_labels(labels)
        self._manager.set_labels(labels)
        log.info("Adding/updating models.")
        for model in models:
            log.info(" (Re-)adding model: %s", model.name)
        model_config.validate_platforms(config)
        previous = self._config
        first = previous is None
        old_names = set() if previous is None else \
            {m.name for m in previous.model_config_list.config}
        new_names = [model.name for model in models if model.name not in old_names]
        mark = self._manager.change_count()
        self._source.set_models(models)
        self._config = config
        if logging is not None and self._request_log is not None:
            self._request_log.configure(logging)  # no model reloads for it
        # TF Serving's source finds new models at its next scan; scanning now is sooner.
        self._source.poll(None if first else new_names)
        reached = self._manager.wait_for_latest(new_names, mark)
        error = unavailable_error(reached, "servable(s)" if first else "model(s)")
        if error is not None:
            raise error
        log.info("Finished adding/updating models")

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

    def watch_file(self, path: str, poll_seconds: float) -> None:
        """Re-read ``path`` every ``poll_seconds`` and apply it when it changed."""
        if poll_seconds <= 0 or self._file_poller is not None:
            return

        storage = RemoteStorage()  # a file in a bucket: one client for every re-read

        def run() -> None:
            while not self._stop.wait(poll_seconds):
                self._reload_file(path, storage)
                self.file_polls += 1

        self._file_poller = threading.Thread(target=run, name="config-poll", daemon=True)
        self._file_poller.start()

    def _reload_file(self, path: str, storage: RemoteStorage) -> None:
        try:
            config = model_config.read_model_config_file(path, storage)
        except ServingError as error:
            log.error("Failed to read ModelServerConfig file: %s", error.message)
            return
        if self._stop.is_set():  # the read outlasted shutdown's wait for it
            return
        try:
            self.apply(config)
        except ServingError as error:
            log.error("PollFilesystemAndReloadConfig failed to ReloadConfig: %s", error.message)

    def stop(self) -> None:
        """Stop polling the config file; a read of it still hanging (a bucket that does not
        answer) is not waited for beyond a moment: it applies nothing any more."""
        self._stop.set()
        if self._file_poller is not None:
            self._file_poller.join(_STOP_WAIT_SECONDS)
            self._file_poller = None


def unavailable_error(reached: Mapping[str, VersionStatus], noun: str) -> ServingError | None:
    """TF Serving's error for awaited models whose newest settled version is not AVAILABLE:
    "servable(s)" at start-up (ConnectSourcesWithFastInitialLoad), "model(s)" on a reload
    (ServerCore::WaitUntilModelsAvailable); entries in (name, version) order."""
    missing = sorted((name, status.version, status) for name, status in reached.items()
                     if status.state != VersionState.AVAILABLE)
    if not missing:
        return None
    entries = "".join(f"{{{{name: {name} version: {version}}}{_due_to(status)}}}, "
                      for name, version, status in missing)
    return ServingError(grpc.StatusCode.UNKNOWN,
                        f"{len(missing)} {noun} did not become available: {{{entries}}}")


def _due_to(status: VersionStatus) -> str:
    if status.error is None:
        return ""
    return f" due to error: {status.error.code.name}: {status.error.message}"
