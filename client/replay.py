"""Recorded requests to replay: an .npz split into batches, JSON lines (one object of named
inputs per line), or a TFRecord file of PredictionLogs (a TF Serving warmup file or a
pyserving request log)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pyserving.client import tensors
from pyserving.client.array_files import inputs_from_json, load_npz
from pyserving.client.bulk import count_batches, count_rows
from pyserving.client.prediction_logs import LogFileError, read_logs


class ReplayError(ValueError):
    """The file holds no requests this tool can replay."""


@dataclass(frozen=True)
class ReplayRequest:
    inputs: dict[str, np.ndarray]
    signature: str | None = None  # a warmup record's own signature
    output_filter: tuple[str, ...] = ()


def load_requests(path: str | Path, *, batch_size: int = 32) -> list[ReplayRequest]:
    """The requests of a file, chosen by its suffix: .npz, .jsonl/.ndjson, .json (an object
    or a list of them); anything else is read as a TFRecord file of PredictionLogs."""
    path = Path(path)
    if path.suffix == ".npz":
        return _npz_requests(path, batch_size)
    if path.suffix in (".jsonl", ".ndjson"):
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        return [_json_request(json.loads(line), f"{path}:{n}") for n, line in
                enumerate(lines, 1)]
    if path.suffix == ".json":
        value = json.loads(path.read_text())
        values = value if isinstance(value, list) else [value]
        return [_json_request(item, str(path)) for item in values]
    return _warmup_requests(path)


def _npz_requests(path: Path, batch_size: int) -> list[ReplayRequest]:
    arrays = load_npz(path)
    rows = count_rows(arrays)
    return [ReplayRequest({name: np.asarray(a[i * batch_size:(i + 1) * batch_size])
                           for name, a in arrays.items()})
            for i in range(count_batches(rows, batch_size))]


def _json_request(value: object, where: str) -> ReplayRequest:
    try:
        inputs = inputs_from_json(value)
    except ValueError as error:
        raise ReplayError(f"{where}: {error}") from None
    return ReplayRequest({name: tensors.as_tensor_array(v) for name, v in inputs.items()})


def _warmup_requests(path: Path) -> list[ReplayRequest]:
    """The Predict requests of a TFRecord file of PredictionLogs (a warmup file or a
    request log), read without TensorFlow."""
    requests = []
    try:
        for log in read_logs([path]):
            if log.WhichOneof("log_type") != "predict_log":
                continue  # classify, regress and multi-inference records are not compared
            request = log.predict_log.request
            requests.append(ReplayRequest(
                {name: tensors.ndarray_from_tensor_proto(proto)
                 for name, proto in request.inputs.items()},
                request.model_spec.signature_name or None, tuple(request.output_filter)))
    except LogFileError as error:
        raise ReplayError(str(error)) from None
    if not requests:
        raise ReplayError(f"{path}: no predict requests in this PredictionLog file")
    return requests
