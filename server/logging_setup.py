"""The server's log lines (``cli.py`` sets them up): text, or with ``--log_format=json`` one JSON
object per line (python-json-logger). A line logged while a request is served names it: its
request ID and, with ``--enable_tracing``, its trace and span IDs (``request_id=... trace_id=...``
in text; ``request_id``, ``trace_id``, ``span_id`` keys in JSON). The fields are read from the
request context when a line is written, so requests pay nothing for them."""

from __future__ import annotations

import logging
import sys
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from pyserving.server import request_context

LOG_FORMATS = ("text", "json")
_DATE = "%Y-%m-%d %H:%M:%S"


def request_fields() -> dict[str, str]:
    """The IDs of the request being served in this thread or task ({} outside one)."""
    context = request_context.current.get()
    if not context.request_id:
        return {}
    fields = {"request_id": context.request_id}
    trace = context.trace
    if trace is not None:
        span = trace.span_context
        fields["trace_id"] = format(span.trace_id, "032x")
        fields["span_id"] = format(span.span_id, "016x")
    return fields


class _TextRequestFields(logging.Filter):
    """Sets ``record.request``: " request_id=... trace_id=..." or ""."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = request_fields()
        fields.pop("span_id", None)
        record.request = "".join(f" {key}={value}" for key, value in fields.items())
        return True


class _JsonRequestFields(logging.Filter):
    """Adds the request's IDs as attributes, which the JSON formatter writes as keys."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in request_fields().items():
            setattr(record, key, value)
        return True


def log_handler(log_format: str = "text", tag: str = "", stream: Any = None
                ) -> logging.Handler:
    """A stderr handler writing ``log_format`` lines; ``tag`` (e.g. "worker 1") names the
    process: a prefix in text, a ``worker`` key in JSON."""
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            static_fields={"worker": tag} if tag else None, datefmt=None))
        handler.addFilter(_JsonRequestFields())
    elif log_format == "text":
        prefix = f"{tag} " if tag else ""
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s.%(msecs)03d %(levelname)s {prefix}%(name)s]%(request)s %(message)s",
            datefmt=_DATE))
        handler.addFilter(_TextRequestFields())
    else:
        raise ValueError(f"--log_format must be one of {', '.join(LOG_FORMATS)}: {log_format}")
    return handler


def configure(log_format: str = "text", tag: str = "") -> None:
    """Send the process's log records (INFO and up) to stderr in ``log_format``."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(log_handler(log_format, tag))
    root.setLevel(logging.INFO)
