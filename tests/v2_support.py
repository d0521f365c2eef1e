"""Helpers of the V2 (Open Inference Protocol) tests: the test model, raw HTTP, gRPC stubs."""

from __future__ import annotations

import json
import struct
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

# V2 datatype -> numpy dtype of the test model's identity signatures (one per datatype).
V2_DTYPES = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
    "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
    "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
    "BYTES": np.object_,
}


def export_v2_model(base: Path, versions: tuple[int, ...] = (1,)) -> str:
    """A SavedModel whose serving_default maps a [-1, 3] float x and an int64 [-1] k to
    doubled = 2x (float [-1, 3]), total = sum(x) + version (float [-1]) and k_out = k + 1;
    ``identity_<V2 datatype>`` returns its x of any shape; ``identity_BF16`` too."""
    import tensorflow as tf

    for version in versions:
        module = tf.Module()
        signatures = {}

        def serving(x: Any, k: Any, version: int = version) -> dict[str, Any]:
            return {"doubled": x * 2.0,
                    "total": tf.reduce_sum(x, axis=1) + float(version),
                    "k_out": k + 1}

        signatures["serving_default"] = tf.function(serving, input_signature=[
            tf.TensorSpec([None, 3], tf.float32, name="x"),
            tf.TensorSpec([None], tf.int64, name="k")]).get_concrete_function()
        for name, dtype in [*V2_DTYPES.items(), ("BF16", None)]:
            tf_dtype = tf.string if name == "BYTES" else tf.bfloat16 if name == "BF16" else \
                tf.as_dtype(dtype)
            signatures[f"identity_{name}"] = tf.function(
                lambda x: {"y": tf.identity(x)},
                input_signature=[tf.TensorSpec(None, tf_dtype, name="x")]
            ).get_concrete_function()
        tf.saved_model.save(module, str(base / str(version)), signatures=signatures)
    return str(base)


def sample(datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Values that exercise a datatype's range (extremes, negatives, non-ASCII bytes)."""
    count = int(np.prod(shape)) if shape else 1
    if datatype == "BYTES":
        values = [f"é{i}".encode() + bytes([0, 255]) for i in range(count)]
        array = np.empty(count, dtype=object)
        array[:] = values
        return array.reshape(shape)
    if datatype == "BOOL":
        return (np.arange(count) % 2 == 0).reshape(shape)
    if datatype == "BF16":
        import ml_dtypes
        return (np.arange(count, dtype=np.float32) - 1.5).astype(ml_dtypes.bfloat16).reshape(
            shape)
    dtype = np.dtype(V2_DTYPES[datatype])
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = [info.min, info.max, 0, 1][:count] + list(range(2, count - 2))
        return np.array(values[:count], dtype=dtype).reshape(shape)
    return (np.arange(count, dtype=np.float64) * -1.25 + 0.5).astype(dtype).reshape(shape)


def raw(array: np.ndarray, datatype: str) -> bytes:
    """The binary extension's bytes of a tensor (what tritonclient sends)."""
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(item)) + item for item in array.ravel())
    return np.ascontiguousarray(array).tobytes()


def http(method: str, url: str, body: bytes | None = None,
         headers: dict[str, str] | None = None, timeout: float = 30.0
         ) -> tuple[int, bytes, dict[str, str]]:
    """(status, body, headers) of one HTTP request, error statuses included."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


def infer_json(port: int, model: str, body: dict[str, Any], version: str = ""
               ) -> tuple[int, dict[str, Any]]:
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    status, payload, _ = http("POST", f"http://127.0.0.1:{port}{path}", json.dumps(body).encode())
    return status, json.loads(payload) if payload else {}


def infer_binary(port: int, model: str, document: dict[str, Any], chunks: list[bytes]
                 ) -> tuple[int, dict[str, Any], bytes]:
    """A request with binary tensors; the answer's JSON and its binary tail."""
    header = json.dumps(document).encode()
    status, payload, headers = http(
        "POST", f"http://127.0.0.1:{port}/v2/models/{model}/infer",
        header + b"".join(chunks), {"Inference-Header-Content-Length": str(len(header))})
    length = int(headers.get("Inference-Header-Content-Length", len(payload)))
    return status, json.loads(payload[:length]), payload[length:]


def export_rows_model(base: Path) -> str:
    """Version 1 of a model whose serving_default maps x [n, 2] (FP32) to y = 10x and, per row,
    the rows of the TensorFlow call that ran it ("batch") and that call's number ("call");
    ``nap`` answers y = 2x after sleeping max(x) seconds."""
    import tensorflow as tf
    from tensorflow.python.data.experimental.ops import testing as tf_data_testing

    class Rows(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.calls = tf.Variable(0, dtype=tf.int64)

        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32)])
        def rows(self, x: Any) -> dict[str, Any]:
            rows = tf.shape(x)[0]
            return {"y": x * 10.0, "batch": tf.fill([rows], rows),
                    "call": tf.fill([rows], self.calls.assign_add(1))}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def nap(self, x: Any) -> dict[str, Any]:
            micros = tf.cast(tf.reduce_max(x) * 5e5, tf.int64)
            slept = tf.data.Dataset.from_tensors(x).apply(tf_data_testing.sleep(micros))
            return {"y": slept.get_single_element() * 2.0}

    module = Rows()
    tf.saved_model.save(module, str(base / "1"),
                        signatures={"serving_default": module.rows, "nap": module.nap})
    return str(base)
