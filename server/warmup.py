"""Model warmup: replay assets.extra/tf_serving_warmup_requests before a version serves.

Follows TF Serving's saved_model_warmup_util.cc: a TFRecord file of PredictionLogs, at most
1000 records, each replayed ``iterations`` times; a file that is not TFRecord fails the load
with DATA_LOSS. Its observer gets what TF Serving's model_warmup_* metrics record.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from pyserving.server.apis import prediction_log_pb2
from pyserving.server.errors import ServingError, invalid_argument, unavailable
from pyserving.server.example_inference import ExampleInference
from pyserving.server.predict import Predictor
from pyserving.server.servable import Servable

log = logging.getLogger(__name__)

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_RECORDS = 1000
STOPPED = "Warmup stopped early: the server is shutting down"


def _replayers(predictor: Predictor, inference: ExampleInference
               ) -> dict[str, Callable[[Servable, Any], Any]]:
    return {
        "predict_log": lambda servable, log_entry: predictor.predict(servable,
                                                                     log_entry.request),
        "classify_log": lambda servable, log_entry: inference.classify(servable,
                                                                       log_entry.request),
        "regress_log": lambda servable, log_entry: inference.regress(servable,
                                                                     log_entry.request),
        "multi_inference_log": lambda servable, log_entry: inference.multi_inference(
            servable, log_entry.request),
    }


# What a finished replay tells its observer: (model path, status, seconds, records read).
WarmupObserver = Callable[[str, str, float, int], None]
# The records of a TFRecord file; a read error is a ServingError (saved_model.tfrecords).
RecordReader = Callable[[str], Iterable[bytes]]


class Warmup:
    """Replays a version's warmup requests through the same code that serves requests."""

    def __init__(self, predictor: Predictor, inference: ExampleInference,
                 read_records: RecordReader, iterations: int = 1,
                 observer: WarmupObserver | None = None) -> None:
        self._replay = _replayers(predictor, inference)
        self._read_records = read_records
        self._iterations = max(iterations, 1)
        self._observer = observer
        self._stopping = threading.Event()

    def stop(self) -> None:
        """Shutdown began: a replay in progress ends after its current request, failing its
        version's load with UNAVAILABLE, and no new one starts."""
        self._stopping.set()

    def run(self, servable: Servable) -> int:
        """Replay the warmup file if the version has one; returns the records replayed."""
        started = time.monotonic()
        path = os.path.join(servable.path, WARMUP_FILE)
        if not os.path.exists(path):
            log.info("No warmup data file found at %s", path)
            return 0
        log.info("Starting to read warmup data for model at %s", path)
        records = iter(self._read_records(path))
        count = 0
        while True:
            try:
                record = next(records)
            except StopIteration:
                break
            except ServingError as failure:
                self._observe(servable, f"{failure.code.name}: {failure.message}", started,
                              count)
                if failure.code == grpc.StatusCode.DATA_LOSS:
                    raise ServingError(failure.code, f"{failure.message}. Please verify your "
                                       "warmup data is in TFRecord format.") from None
                raise
            self._replay_record(servable, record, path)
            count += 1
            if count > MAX_RECORDS:
                raise invalid_argument("Number of warmup records exceeds the maximum "
                                       f"({MAX_RECORDS}) at {path}")
        self._observe(servable, "OK", started, count)
        log.info("Finished reading warmup data for model at %s. Number of warmup records read: "
                 "%d. Elapsed time (microseconds): %d.", path, count,
                 (time.monotonic() - started) * 1e6)
        return count

    def _observe(self, servable: Servable, status: str, started: float, count: int) -> None:
        """saved_model_warmup_util.cc records its metrics only once the file has been read to
        its end or to a read error; a failing record returns before that."""
        if self._observer is not None:
            self._observer(servable.path, status, time.monotonic() - started, count)

    def _replay_record(self, servable: Servable, record: bytes, path: str) -> None:
        try:
            entry = prediction_log_pb2.PredictionLog.FromString(record)
        except DecodeError:
            # TF Serving pastes the raw record bytes into the message.
            text = record.decode("utf-8", "replace")
            raise invalid_argument(f"Failed to parse warmup record: {text} from "
                                   f"{path}") from None
        kind = entry.WhichOneof("log_type")
        if kind is None:
            return  # a record without a request is skipped, as in TF Serving
        replay = self._replay.get(kind)
        if replay is None:
            raise ServingError(grpc.StatusCode.UNIMPLEMENTED, "Unsupported log_type for "
                               f"warmup: {entry.DESCRIPTOR.fields_by_name[kind].number}")
        for _ in range(self._iterations):
            if self._stopping.is_set():
                raise unavailable(f"{STOPPED} (model at {path})")
            replay(servable, getattr(entry, kind))
