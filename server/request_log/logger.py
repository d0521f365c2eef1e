"""The request log as the core sees it: an answer observer (core.py ``Answer``) that the
server adds while some model logs and removes when none does, so a server without
``logging_config`` runs no request-log code per request."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pyserving.server.request_log.records import (
    CLASSIFY,
    MULTI_INFERENCE,
    PREDICT,
    REGRESS,
    ArraysPredict,
)
from pyserving.server.request_log.settings import LogSettings, logging_settings
from pyserving.server.request_log.writer import LogFile, LogObserver, RequestLogWriter

# The core's API names -> PredictionLog's log_type fields.
KINDS = {"Predict": PREDICT, "Classify": CLASSIFY, "Regress": REGRESS,
         "MultiInference": MULTI_INFERENCE}


class ModelRequestLog:
    """One model's sampler: ``offer`` each answered request; a sampled one is queued."""

    __slots__ = ("_random", "_rate", "_writer", "file", "settings")

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
    """Every model's request logging, changed by each applied ModelServerConfig.
    ``on_active(bool)`` hears when the first model starts logging and when the last stops."""

    def __init__(self, observer: LogObserver, *, tags: Sequence[str] = ("serve",),
                 max_file_bytes: int = 128 << 20, queue_size: int = 4096) -> None:
        self.writer = RequestLogWriter(observer, tags=tags, max_file_bytes=max_file_bytes,
                                       queue_size=queue_size)
        self.models: Mapping[str, ModelRequestLog] = {}
        self.on_active: Callable[[bool], None] | None = None

    @staticmethod
    def settings(config: Any) -> dict[str, LogSettings]:
        """The logging a config asks for, checked: raises INVALID_ARGUMENT naming the model."""
        return logging_settings(config)

    def observe(self, answer: Any) -> None:
        """The answer observer: offer an answered request to its model's log, if it logs."""
        logged = self.models.get(answer.model)
        kind = KINDS.get(answer.api)
        if logged is None or kind is None:
            return
        if answer.inputs is not None:  # a Predict its transport decoded (REST): arrays
            logged.offer(kind, ArraysPredict(answer.request, answer.version,
                                             answer.signature_name, answer.inputs,
                                             answer.response), None)
        else:
            logged.offer(kind, answer.request, answer.response)

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
        if bool(old) != bool(models) and self.on_active is not None:
            self.on_active(bool(models))

    def stop(self) -> None:
        if self.models and self.on_active is not None:
            self.on_active(False)
        self.models = {}
        self.writer.stop()
