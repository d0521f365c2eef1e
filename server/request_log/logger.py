"""The request log as the core sees it: ``models`` maps each logging model to its sampler,
empty when no model logs (the core then does nothing more per request)."""

from __future__ import annotations

import random
from typing import Any, Mapping, Sequence

from pyserving.server.request_log.settings import LogSettings, logging_settings
from pyserving.server.request_log.writer import LogFile, LogObserver, RequestLogWriter


class ModelRequestLog:
    """One model's sampler: ``offer`` each answered request; a sampled one is queued."""

    __slots__ = ("settings", "file", "_writer", "_rate", "_random")

    def __init__(self, settings: LogSettings, writer: RequestLogWriter) -> None:
        self.settings = settings
        self.file = LogFile(settings)
        self._writer = writer
        self._rate = settings.sampling_rate
        self._random = random.random

    def offer(self, kind: str, request: Any, response: Any) -> None:
        if self._rate < 1.0 and self._random() >= self._rate:
            return
        self._writer.submit(self.file, kind, request, response)


class RequestLog:
    """Every model's request logging, changed by each applied ModelServerConfig."""

    def __init__(self, observer: LogObserver, *, tags: Sequence[str] = ("serve",),
                 max_file_bytes: int = 128 << 20, queue_size: int = 4096) -> None:
        self.writer = RequestLogWriter(observer, tags=tags, max_file_bytes=max_file_bytes,
                                       queue_size=queue_size)
        self.models: Mapping[str, ModelRequestLog] = {}

    @classmethod
    def disabled(cls) -> "RequestLog":
        """A request log no config has configured (no model logs, no thread)."""
        return cls(_NoObserver())

    @staticmethod
    def settings(config: Any) -> dict[str, LogSettings]:
        """The logging a config asks for, checked: raises INVALID_ARGUMENT naming the model."""
        return logging_settings(config)

    def configure(self, settings: Mapping[str, LogSettings]) -> None:
        """Apply checked settings: a model whose settings did not change keeps its file; a
        changed or removed one has its file closed after its queued records."""
        old = self.models
        models: dict[str, ModelRequestLog] = {}
        for name, wanted in settings.items():
            if wanted.sampling_rate <= 0.0:
                continue
            current = old.get(name)
            models[name] = current if current is not None and current.settings == wanted \
                else ModelRequestLog(wanted, self.writer)
        self.models = models  # one reference swap: requests see the old or the new map
        for name, current in old.items():
            if models.get(name) is not current:
                self.writer.retire(current.file)

    def stop(self) -> None:
        self.models = {}
        self.writer.stop()


class _NoObserver:
    def observe_request_log_written(self, model: str, records: int, size: int) -> None:
        pass

    def observe_request_log_dropped(self, model: str, reason: str, records: int) -> None:
        pass
