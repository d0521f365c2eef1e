"""The request-log writer: one thread that builds PredictionLog records and appends them to
TFRecord files, so a sampled request only pays for one append to a bounded queue (a deque the
writer drains every ``poll_seconds``: no lock and no thread wake-up per request).

Per model, records go to ``<filename_prefix>-<UTC time>-<pid>-<n>.tfrecord`` (the pid keeps
``--workers`` processes apart). A file is closed and a new one opened before it would pass
``max_file_bytes``. Files are flushed to the OS at least every ``flush_seconds`` and when the
writer stops, after every queued record is written: a clean shutdown loses nothing, a crash
at most the last second.

Nothing here fails a request. A full queue drops the record (``queue_full``); a file that
cannot be opened, written or flushed (full disk, folder gone) drops the records it held
(``write_error``); a file deleted while open is noticed at the next flush and its records
count as lost (``file_deleted``). Each is logged, at most every ``LOG_EVERY_SECONDS`` per model
and reason, and counted; the next record tries a new file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import IO, Any, Protocol

from pyserving.client.tfrecord import frame
from pyserving.server.request_log.records import prediction_log
from pyserving.server.request_log.settings import LogSettings

log = logging.getLogger(__name__)

QUEUE_FULL, WRITE_ERROR, FILE_DELETED, SHUTDOWN = ("queue_full", "write_error", "file_deleted",
                                                   "shutdown")
LOG_EVERY_SECONDS = 10.0
_RETIRE = object()  # a control item: close a retired model's file


class LogObserver(Protocol):
    """Where the writer's counts go (ServerMetrics)."""

    def observe_request_log_written(self, model: str, records: int, size: int) -> None: ...

    def observe_request_log_dropped(self, model: str, reason: str, records: int) -> None: ...


def open_log_file(path: str) -> IO[bytes]:
    return open(path, "xb")  # never appends to (or replaces) another process's file


class LogFile:
    """The file one model's records go to now; used only on the writer's thread."""

    def __init__(self, settings: LogSettings) -> None:
        self.settings = settings
        self.handle: IO[bytes] | None = None
        self.path = ""
        self.size = 0  # bytes in the current file
        self.records = 0  # records in the current file
        self.unflushed_records = 0
        self.unflushed_bytes = 0
        self.sequence = 0


class RequestLogWriter:
    """Queue in, TFRecord files out, on its own thread (started on the first record)."""

    def __init__(self, observer: LogObserver, *, tags: Sequence[str] = ("serve",),
                 max_file_bytes: int = 128 << 20, queue_size: int = 4096,
                 flush_seconds: float = 1.0, poll_seconds: float = 0.05,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time,
                 open_file: Callable[[str], IO[bytes]] = open_log_file) -> None:
        self._observer = observer
        self._tags = tuple(tags)
        self._max_file_bytes = max(max_file_bytes, 1)
        # A deque, not a queue.Queue: append and popleft need no lock and wake no thread, so
        # a sampled request pays ~0.3 us; the writer drains it every ``poll_seconds``.
        self._pending: deque[tuple[Any, ...]] = deque()
        self._capacity = max(queue_size, 1)
        self._flush_seconds = flush_seconds
        self._poll_seconds = poll_seconds
        self._clock = clock
        self._wall_clock = wall_clock
        self._open_file = open_file
        self._files: set[LogFile] = set()
        self._last_logged: dict[tuple[str, str], float] = {}
        self._suppressed: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._accepting = True
        self._stopping = threading.Event()

    def submit(self, file: LogFile, kind: str, request: Any, response: Any) -> None:
        """Queue one answered request (called on the request's thread; never blocks). The
        length check and the append are not one atomic step: under a race the queue may
        pass its bound by the number of request threads, which is still a bound."""
        if self._thread is None:
            self._start()
        if not self._accepting:
            self._observer.observe_request_log_dropped(file.settings.model, SHUTDOWN, 1)
        elif len(self._pending) >= self._capacity:
            self._observer.observe_request_log_dropped(file.settings.model, QUEUE_FULL, 1)
        else:
            self._pending.append((file, kind, request, response, self._wall_clock()))

    def retire(self, file: LogFile) -> None:
        """Close ``file`` once the records queued before now are written to it; never waits
        (a config reload must not hang on a stuck disk)."""
        if self._thread is not None:
            self._pending.append((_RETIRE, file))

    def _start(self) -> None:
        with self._lock:
            if self._thread is None and self._accepting:
                self._thread = threading.Thread(target=self._run, name="request-log",
                                                daemon=True)
                self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Write every queued record, flush and close the files, end the thread (waiting at
        most ``timeout`` seconds for a writer stuck on its disk)."""
        with self._lock:
            self._accepting = False
            thread = self._thread
        if thread is None:
            return
        self._stopping.set()
        thread.join(timeout)
        if thread.is_alive():
            log.error("request log writer did not finish within %g s; %d record(s) left "
                      "unwritten", timeout, len(self._pending))

    def _run(self) -> None:
        next_flush = self._clock() + self._flush_seconds
        while True:
            stopping = self._stopping.wait(self._poll_seconds)
            self._drain()
            if stopping:
                break
            if self._clock() >= next_flush:
                self.flush_all()
                next_flush = self._clock() + self._flush_seconds
        for file in list(self._files):  # stopping: every answered request is written
            self._close(file)

    def _drain(self) -> None:
        while True:
            try:
                item = self._pending.popleft()
            except IndexError:
                return
            self._handle(item)

    def _handle(self, item: tuple[Any, ...]) -> None:
        if item[0] is _RETIRE:
            self._close(item[1])
            return
        file, kind, request, response, timestamp = item
        settings = file.settings
        try:
            record = frame(prediction_log(kind, request, response, model=settings.model,
                                          sampling_config=settings.sampling_config,
                                          tags=self._tags, timestamp=timestamp))
        except Exception:  # a bug: that record is lost, serving and logging go on
            log.exception("building a request log record for model %s failed", settings.model)
            self._drop(file, WRITE_ERROR, 1, "building a record failed")
            return
        self.write(file, record)

    def write(self, file: LogFile, record: bytes) -> None:
        """Append one framed record to the model's file, rotating it first if full."""
        if file.handle is not None and file.size and \
                file.size + len(record) > self._max_file_bytes:
            self._close(file)
        if file.handle is None and not self._open(file):
            self._drop(file, WRITE_ERROR, 1, f"cannot open a log file: {file.path}")
            return
        assert file.handle is not None
        try:
            file.handle.write(record)
        except OSError as error:
            self._fail(file, 1, error)
            return
        file.size += len(record)
        file.records += 1
        file.unflushed_records += 1
        file.unflushed_bytes += len(record)

    def _open(self, file: LogFile) -> bool:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._wall_clock()))
        for _ in range(100):
            file.sequence += 1
            file.path = f"{file.settings.filename_prefix}-{stamp}-{os.getpid()}-" \
                        f"{file.sequence:05d}.tfrecord"
            try:
                file.handle = self._open_file(file.path)
            except FileExistsError:
                continue
            except OSError as error:
                self._log(file, WRITE_ERROR, f"cannot open {file.path}: {error}")
                return False
            file.size = file.records = 0
            self._files.add(file)
            return True
        return False

    def flush_all(self) -> None:
        for file in list(self._files):
            self._flush(file)

    def _flush(self, file: LogFile) -> None:
        if file.handle is None:
            return
        try:
            file.handle.flush()
            deleted = _is_deleted(file.handle)
        except OSError as error:
            self._fail(file, 0, error)
            return
        if file.unflushed_records:
            self._observer.observe_request_log_written(file.settings.model,
                                                       file.unflushed_records,
                                                       file.unflushed_bytes)
        file.unflushed_records = file.unflushed_bytes = 0
        if deleted:
            self._drop(file, FILE_DELETED, file.records, f"{file.path} was deleted while open")
            self._discard(file)

    def _close(self, file: LogFile) -> None:
        self._flush(file)
        self._discard(file)

    def _discard(self, file: LogFile) -> None:
        handle, file.handle = file.handle, None
        self._files.discard(file)
        if handle is not None:
            with contextlib.suppress(OSError):
                handle.close()

    def _fail(self, file: LogFile, more: int, error: OSError) -> None:
        """A write or flush failed: the records not yet on disk are lost."""
        lost = file.unflushed_records + more
        file.unflushed_records = file.unflushed_bytes = 0
        self._discard(file)
        self._drop(file, WRITE_ERROR, lost, f"writing {file.path} failed: {error}")

    def _drop(self, file: LogFile, reason: str, records: int, why: str) -> None:
        if records:
            self._observer.observe_request_log_dropped(file.settings.model, reason, records)
        self._log(file, reason, why, records)

    def _log(self, file: LogFile, reason: str, why: str, records: int = 0) -> None:
        key = (file.settings.model, reason)
        now = self._clock()
        last = self._last_logged.get(key)
        if last is not None and now - last < LOG_EVERY_SECONDS:
            self._suppressed[key] = self._suppressed.get(key, 0) + records
            return
        self._last_logged[key] = now
        earlier = self._suppressed.pop(key, 0)
        log.error("request log of model %s: %s; %d record(s) dropped (%s)%s",
                  file.settings.model, why, records, reason,
                  f", {earlier} more since the last message" if earlier else "")


def _is_deleted(handle: IO[bytes]) -> bool:
    """Whether the open file has no name left (its folder or itself was removed)."""
    try:
        return os.fstat(handle.fileno()).st_nlink == 0
    except (AttributeError, ValueError, OSError):
        return False
