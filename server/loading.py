"""What loading one version means for this server: the manager's load callback.

A version in object storage is copied into the local cache first (and its copy deleted when
its load fails or it unloads); then the SavedModel loads, the batcher prepares its queues and
warmup replays its records. A failure after the SavedModel loaded retires it again, so a
failed load leaves nothing behind.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from pyserving.server.apis import config_pb2
from pyserving.server.batching.batcher import Batcher
from pyserving.server.errors import ServingError
from pyserving.server.remote_storage import VersionCache, is_remote
from pyserving.server.saved_model import SavedModelLoadObserver, load_servable
from pyserving.server.servable import Servable
from pyserving.server.warmup import Warmup


class VersionLoader:
    """``loader(name, version, path) -> Servable``, as ``ModelManager`` calls it. The server
    sets ``batcher``, ``warmup`` and ``on_saved_model_load`` once it made them, before any
    load (they are made after the manager, which they observe)."""

    def __init__(self, tags: Sequence[str], session_config: config_pb2.ConfigProto,
                 cache: VersionCache) -> None:
        self._tags = tags
        self._session_config = session_config
        self._cache = cache
        self.batcher: Batcher | None = None
        self.warmup: Warmup | None = None
        self.on_saved_model_load: SavedModelLoadObserver | None = None

    def __call__(self, name: str, version: int, path: str) -> Servable:
        if not is_remote(path):
            return self._load_local(name, version, path)
        try:
            local = self._cache.fetch(name, version, path)
        except BaseException:
            self._cache.note_failure(path)
            raise
        try:
            servable = self._load_local(name, version, local)
        except BaseException:
            self._cache.evict(name, version)
            self._cache.note_failure(path)
            raise
        servable.after_close(functools.partial(self._cache.evict, name, version))
        return servable

    def _load_local(self, name: str, version: int, path: str) -> Servable:
        servable = load_servable(name, version, path, self._tags, self._session_config,
                                 self.on_saved_model_load)
        try:
            if self.batcher is not None:
                self.batcher.prepare(servable)
            if self.warmup is not None:
                self.warmup.run(servable)
        except ServingError:
            servable.retire()
            raise
        return servable
