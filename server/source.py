"""The file-system source: polls each model's base path and tells the manager which versions
should be served, as TF Serving's FileSystemStoragePathSource does."""

from __future__ import annotations

import logging
import threading

from pyserving.server import config as model_config
from pyserving.server.errors import ServingError, not_found, unavailable
from pyserving.server.manager import ModelManager

log = logging.getLogger(__name__)


class FileSystemSource:
    """Scans base paths on demand (``poll``) and every ``poll_seconds`` once started."""

    def __init__(self, manager: ModelManager, poll_seconds: float) -> None:
        self._manager = manager
        self._poll_seconds = poll_seconds
        self._models: dict[str, model_config.ModelConfig] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def set_models(self, models: list[model_config.ModelConfig]) -> None:
        """Replace the watched models; models no longer listed are unloaded."""
        with self._lock:
            removed = set(self._models) - {model.name for model in models}
            self._models = {model.name: model for model in models}
        for name in sorted(removed):
            log.info("model %s is no longer in the config: unloading it", name)
            self._manager.set_aspired_versions(name, [])

    def poll(self, names: list[str] | None = None) -> dict[str, ServingError]:
        """Scan now and report aspired versions; returns the models whose base path is
        missing (nothing reported: what is loaded stays) or holds no version (all unload)."""
        with self._lock:
            models = [m for n, m in self._models.items() if names is None or n in names]
        failures = {}
        for model in models:
            try:
                found = model_config.scan_versions(model)
            except (ServingError, OSError) as error:
                # A base path that vanished keeps what is loaded (TF Serving emits nothing).
                failures[model.name] = error if isinstance(error, ServingError) else \
                    unavailable(str(error))
                log.warning("%s", failures[model.name].message)
                continue
            aspired = model_config.aspired_versions(model, found)
            if not aspired:
                failures[model.name] = not_found(model_config.no_versions_message(model))
                log.warning("%s", failures[model.name].message)
            self._manager.set_aspired_versions(model.name, aspired)
        return failures

    def start(self) -> None:
        """Poll every ``poll_seconds`` in the background (not at all when it is <= 0)."""
        if self._poll_seconds <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="fs-poll", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._poll_seconds):
            self.poll()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

