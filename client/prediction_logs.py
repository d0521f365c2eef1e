"""PredictionLog files (request logs and TF Serving warmup files) without TensorFlow: read,
shown as JSON, filtered into warmup files, and turned into requests to replay with the
answers they got.

A record holds one of ``predict_log``, ``classify_log``, ``regress_log`` or
``multi_inference_log`` (tensorflow_serving/apis/prediction_log.proto), each a request and,
in a request log, the response it got.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import json_format
from google.protobuf.message import DecodeError

from pyserving.client.apis import prediction_log_pb2
from pyserving.client.results import (
    classifications_of,
    multi_inference_results,
    outputs_of,
    regressions_of,
)
from pyserving.client.tfrecord import TFRecordError, read_records, write_records

PredictionLog = prediction_log_pb2.PredictionLog
KINDS = ("predict_log", "classify_log", "regress_log", "multi_inference_log")
MAX_WARMUP_RECORDS = 1000  # what TF Serving's saved_model_warmup_util.cc reads at most


class LogFileError(ValueError):
    """A file that is not a TFRecord file of PredictionLogs."""


def read_logs(paths: Iterable[str | Path]) -> Iterator[PredictionLog]:
    """The PredictionLogs of the files, in order."""
    for path in paths:
        try:
            for number, record in enumerate(read_records(path)):
                try:
                    yield PredictionLog.FromString(record)
                except DecodeError:
                    raise LogFileError(f"{path}: record {number} is not a PredictionLog") \
                        from None
        except TFRecordError as error:
            raise LogFileError(f"not a TFRecord file of PredictionLogs: {error}") from None


def as_json(record: PredictionLog) -> dict[str, Any]:
    """The record as protobuf's JSON mapping (field names as in the .proto)."""
    return json_format.MessageToDict(record, preserving_proto_field_name=True)


def model_and_signature(record: PredictionLog) -> tuple[str, str]:
    """The model and signature a record names: its log_metadata's, else its request's."""
    spec = record.log_metadata.model_spec
    if spec.name:
        return spec.name, spec.signature_name
    kind = record.WhichOneof("log_type")
    if kind is None:
        return "", ""
    request = getattr(record, kind).request
    if kind == "multi_inference_log":
        spec = request.tasks[0].model_spec if request.tasks else spec
    else:
        spec = request.model_spec
    return spec.name, spec.signature_name


def selected(records: Iterable[PredictionLog], model: str | None = None,
             signature: str | None = None) -> Iterator[PredictionLog]:
    """The records with a request, of ``model`` and ``signature`` when given."""
    for record in records:
        if record.WhichOneof("log_type") is None:
            continue
        name, signature_name = model_and_signature(record)
        if model is not None and name != model:
            continue
        if signature is not None and (signature_name or "serving_default") != signature:
            continue
        yield record


def warmup_record(record: PredictionLog) -> PredictionLog:
    """The record as a warmup file holds it: the request alone, naming no version (warmup
    runs on the version being loaded, whichever the log was answered by)."""
    kind = record.WhichOneof("log_type")
    assert kind is not None
    warmup = PredictionLog()
    entry = getattr(warmup, kind)
    entry.request.CopyFrom(getattr(record, kind).request)
    for spec in _specs(kind, entry.request):
        spec.ClearField("version_choice")
    return warmup


def write_warmup(records: Iterable[PredictionLog], output: str | Path,
                 max_records: int = MAX_WARMUP_RECORDS) -> int:
    """Write at most ``max_records`` records as a tf_serving_warmup_requests file."""
    chosen: list[bytes] = []
    for record in records:
        if len(chosen) == max_records:
            break
        chosen.append(warmup_record(record).SerializeToString())
    return write_records(output, chosen)


def retargeted(record: PredictionLog, version: int | None = None,
               label: str | None = None) -> Any:
    """A copy of the record's request, sent to ``version`` or ``label`` when one is given."""
    kind = record.WhichOneof("log_type")
    assert kind is not None
    request = type(getattr(record, kind).request)()
    request.CopyFrom(getattr(record, kind).request)
    if version is not None or label is not None:
        for spec in _specs(kind, request):
            if version is not None:
                spec.version.value = version
            else:
                spec.version_label = label
    return request


def _specs(kind: str, request: Any) -> list[Any]:
    if kind == "multi_inference_log":
        return [task.model_spec for task in request.tasks]
    return [request.model_spec]


def answer_arrays(kind: str, response: Any) -> dict[str, np.ndarray]:
    """A response as named arrays to compare: a Predict's outputs, a Classify's
    ``scores`` and ``classes``, a Regress's ``value``; a MultiInference's by signature."""
    if kind == "predict_log":
        return outputs_of(response)
    if kind == "classify_log":
        found = classifications_of(response.result)
        return {"scores": found.scores, "classes": found.labels.astype(str)}
    if kind == "regress_log":
        return {"value": regressions_of(response.result)}
    arrays: dict[str, np.ndarray] = {}
    for name, result in multi_inference_results(response).items():
        if isinstance(result, np.ndarray):
            arrays[f"{name}/value"] = result
        else:
            arrays[f"{name}/scores"] = result.scores
            arrays[f"{name}/classes"] = result.labels.astype(str)
    return arrays
