"""The file-system source: polls each model's base path, applies its version policy and tells
a callback which versions should be served, as TF Serving's FileSystemStoragePathSource
(sources/storage_path/file_system_storage_path_source.cc) tells its AspiredVersionsCallback
(core/source.h). The source does not know the manager; the server connects the two.

A model in a bucket is listed on a thread of its own, without the source's lock, at most once at
a time: a bucket that hangs delays only its own model's next poll, never a config reload, the
other models' polls or shutdown."""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import wait as wait_for_all

from pyserving.server.config import ModelConfig, VersionDirectory
from pyserving.server.errors import ServingError, invalid_argument, io_error
from pyserving.server.remote_storage import RemoteStorage, is_remote

log = logging.getLogger(__name__)

_VERSION_DIR = re.compile(r"^\d+$")

# Told a model's aspired versions (all of them, each time; empty: unload the model).
AspiredVersionsCallback = Callable[[str, list[VersionDirectory]], None]


class FileSystemSource:
    """Scans base paths on demand (``poll``) and every ``poll_seconds`` once started; a
    negative ``poll_seconds`` disables scanning altogether, as in TF Serving. Base paths in
    object storage (s3://, gs://) are listed through ``remote``; ``on_listed`` hears each
    bucket model's aspired versions before the callback does, without the source's lock."""

    def __init__(self, poll_seconds: float, remote: RemoteStorage | None = None, *,
                 on_listed: AspiredVersionsCallback | None = None) -> None:
        self._aspire: AspiredVersionsCallback = lambda name, versions: None
        self._on_listed = on_listed  # hears a bucket model's versions first, without the lock
        self._poll_seconds = poll_seconds
        self._remote = remote if remote is not None else RemoteStorage()
        self._models: dict[str, ModelConfig] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # bucket model name -> (the config listed, done when its listing ends)
        self._listings: dict[str, tuple[ModelConfig, Future]] = {}
        # Scans finished (reported or failed): what tests wait on to see "another poll
        # happened, and still nothing changed" without sleeping through poll periods.
        self.polls = 0

    def set_aspired_versions_callback(self, callback: AspiredVersionsCallback) -> None:
        """Where aspired versions go from now on (core/source.h SetAspiredVersionsCallback)."""
        with self._lock:
            self._aspire = callback

    def set_models(self, models: list[ModelConfig]) -> None:
        """Replace the watched models; models no longer listed are unloaded."""
        # Under the lock: a scan in progress must not re-aspire a model removed here.
        with self._lock:
            removed = set(self._models) - {model.name for model in models}
            self._models = {model.name: model for model in models}
            for name in sorted(removed):
                log.info("model %s is no longer in the config: unloading it", name)
                self._aspire(name, [])

    def poll(self, names: list[str] | None = None, wait: bool = True) -> None:
        """Scan now and report aspired versions (a model without versions unloads). A local
        base path that is missing or unreadable fails the local scan: nothing local is
        reported, so what is loaded stays (TF Serving's PollFileSystemAndInvokeCallback); a
        bucket that cannot be listed leaves only its own model as it is. With ``wait``,
        returns once the buckets are listed too."""
        if self._poll_seconds < 0:
            return
        with self._lock:
            models = [model for model in self._models.values()
                      if names is None or model.name in names]
        listings = [self._list_remote(model) for model in models if is_remote(model.base_path)]
        aspired = []
        for model in models:
            if is_remote(model.base_path):
                continue
            try:
                aspired.append((model, aspired_versions(model, self._remote)))
            except ServingError as error:
                _log_access_error(error)
                aspired = []
                break
        self._report(aspired)
        self.polls += 1
        if wait:
            wait_for_all(listings)

    def _report(self, aspired: list[tuple[ModelConfig, list[VersionDirectory]]]) -> None:
        """Tell the callback, for the models still configured as they were listed: a scan
        must not re-aspire a model set_models removed or changed meanwhile."""
        with self._lock:
            for model, versions in aspired:
                if self._models.get(model.name) == model and not self._stop.is_set():
                    self._aspire(model.name, versions)

    def _list_remote(self, model: ModelConfig) -> Future:
        """List a bucket model on its own thread, unless a listing of it is under way."""
        with self._lock:
            running = self._listings.get(model.name)
            if running is not None and running[0] == model and not running[1].done():
                return running[1]
            done: Future = Future()
            self._listings[model.name] = (model, done)
        threading.Thread(target=self._scan_remote, args=(model, done),
                         name=f"list-{model.name}", daemon=True).start()
        return done

    def _scan_remote(self, model: ModelConfig, done: Future) -> None:
        try:
            versions = aspired_versions(model, self._remote)
            if self._on_listed is not None:
                self._on_listed(model.name, versions)
            self._report([(model, versions)])
        except ServingError as error:
            _log_access_error(error)
        finally:
            done.set_result(None)

    def start(self) -> None:
        """Poll every ``poll_seconds`` in the background (not at all when it is <= 0)."""
        if self._poll_seconds <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="fs-poll", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._poll_seconds):
            self.poll(wait=False)

    def stop(self) -> None:
        """Stop polling; a bucket listing under way is left to end on its own (its daemon
        thread reports nothing any more)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


def _log_access_error(error: ServingError) -> None:
    log.error("FileSystemStoragePathSource encountered a filesystem access error: %s",
              error.message)


def base_path_missing(model: ModelConfig, status: str | None = None) -> ServingError:
    status = status or f"NOT_FOUND: {model.base_path} not found"
    return invalid_argument(f"Could not find base path {model.base_path} for servable "
                            f"{model.name} with error {status}")


def aspired_versions(model: ModelConfig, remote: RemoteStorage) -> list[VersionDirectory]:
    """The versions the model's policy picks under its base path, local or in a bucket, as
    FileSystemStoragePathSource's PollFileSystemForServable finds them (and logs what it
    logs); raises ServingError if the base path is missing or cannot be listed."""
    if is_remote(model.base_path):
        try:
            found = [VersionDirectory(version, url)
                     for version, url in remote.version_directories(model.base_path)]
        except ServingError as error:
            raise base_path_missing(model, str(error)) from None
    else:
        if not os.access(model.base_path, os.F_OK):
            raise base_path_missing(model)
        if model.model_version_policy.WhichOneof("policy_choice") == "specific":
            fast = _specific_versions_present(model)
            if fast is not None:
                return fast
        found = _local_version_directories(model.base_path)
    aspired = _apply_policy(model, sorted(found, key=lambda v: v.version))
    if not aspired:
        log.warning("No versions of servable %s found under base path %s. Did you forget to "
                    "name your leaf directory as a number (eg. '/1/')?", model.name,
                    model.base_path)
    return aspired


def _local_version_directories(base: str) -> list[VersionDirectory]:
    try:
        names = os.listdir(base)
    except OSError as error:
        raise io_error(base, error.errno or 0) from None
    return [VersionDirectory(int(name), os.path.join(base, name)) for name in names
            if _VERSION_DIR.match(name) and os.path.isdir(os.path.join(base, name))]


def _specific_versions_present(model: ModelConfig) -> list[VersionDirectory] | None:
    """AspireSpecificVersionsFastPath: every requested ``<base>/<version>`` exists (or none
    was requested); None sends the caller to a directory listing."""
    versions = list(model.model_version_policy.specific.versions)
    if not versions:
        log.warning("No specific versions requested for servable %s.", model.name)
        return []
    paths = [os.path.join(model.base_path, str(version)) for version in versions]
    if not all(os.access(path, os.F_OK) for path in paths):
        return None
    return [VersionDirectory(version, path) for version, path in zip(versions, paths, strict=False)]


def _apply_policy(model: ModelConfig, available: list[VersionDirectory]
                  ) -> list[VersionDirectory]:
    """The model's version policy (latest 1 by default) over the versions on disk."""
    policy = model.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return list(available)
    if choice == "specific":
        wanted = set(policy.specific.versions)
        aspired = [v for v in available if v.version in wanted]
        for version in sorted(wanted - {v.version for v in aspired}):
            log.warning("Version %d of servable %s, which was requested to be served as a "
                        "'specific' version in the servable's version policy, was not found in "
                        "the file system", version, model.name)
        return aspired
    count = policy.latest.num_versions if choice == "latest" else 1
    return available[-max(count, 1):] if available else []
