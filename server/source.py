"""The file-system source: polls each model's base path and tells the manager which versions
should be served, as TF Serving's FileSystemStoragePathSource does."""

from __future__ import annotations

import logging
import threading

from pyserving.server import config as model_config
from pyserving.server.errors import ServingError
from pyserving.server.manager import ModelManager

log = logging.getLogger(__name__)


class FileSystemSource:
    """Scans base paths on demand (``poll``) and every ``poll_seconds`` once started; a
    negative ``poll_seconds`` disables scanning altogether, as in TF Serving."""

    def __init__(self, manager: ModelManager, poll_seconds: float) -> None:
        self._manager = manager
        self._poll_seconds = poll_seconds
        self._models: dict[str, model_config.ModelConfig] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def set_models(self, models: list[model_config.ModelConfig]) -> None:
        """Replace the watched models; models no longer listed are unloaded."""
        # Under the lock: a scan in progress must not re-aspire a model removed here.
        with self._lock:
            removed = set(self._models) - {model.name for model in models}
            self._models = {model.name: model for model in models}
            for name in sorted(removed):
                log.info("model %s is no longer in the config: unloading it", name)
                self._manager.set_aspired_versions(name, [])

    def poll(self, names: list[str] | None = None) -> None:
        """Scan now and report aspired versions (a model without versions unloads). A base
        path that is missing or unreadable fails the whole scan: nothing is reported, so what
        is loaded stays (TF Serving's PollFileSystemAndInvokeCallback)."""
        if self._poll_seconds < 0:
            return
        with self._lock:
            aspired = {}
            for model in self._models.values():
                if names is not None and model.name not in names:
                    continue
                try:
                    aspired[model.name] = model_config.versions_on_disk(model)
                except ServingError as error:
                    log.error("FileSystemStoragePathSource encountered a filesystem access "
                              "error: %s", error.message)
                    return
            for name, versions in aspired.items():
                self._manager.set_aspired_versions(name, versions)

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
