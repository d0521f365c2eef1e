"""The models batching_throughput.py serves, their requests, and the in-process compute limit.

- ``tiny``: TF Serving's half_plus_two (the test suite's export of it), x=[[2.0]]: the
  TensorFlow call costs microseconds, so the server's per-request cost is all there is.
- ``mlp``: built here with TensorFlow, 4 Dense layers of 1024 units (ReLU, then linear),
  seeded weights; one request is one row of 1024 floats. At batch 1 each layer is a
  matrix-vector product, 2 MFLOP for 4 MiB of weights read (memory-bound); a batch shares
  that read among its rows (a matrix-matrix product).

Requests are built with ``tf.make_tensor_proto`` (tensor_content), as TF Serving's clients do.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

TESTS = Path(__file__).resolve().parent.parent / "tests"
MLP_WIDTH = 1024
MLP_LAYERS = 4
MLP_SEED = 20261125
WORKLOADS = ("tiny", "mlp")


@dataclass(frozen=True)
class BatchedConfig:
    """How the batched pyserving server runs: its BatchingParameters and two server flags."""

    max_batch_size: int
    batch_timeout_micros: int
    num_batch_threads: int
    max_enqueued_batches: int = 100
    grpc_threads: int = 64  # --grpc_max_threads: bounds the requests that reach the batcher
    inter_op: int = 0  # --tensorflow_inter_op_parallelism
    intra_op: int = 0  # --tensorflow_intra_op_parallelism

    def parameters_text(self) -> str:
        return "".join(f"{name} {{ value: {getattr(self, name)} }}\n" for name in
                       ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches",
                        "num_batch_threads"))

    def describe(self) -> str:
        return (f"max_batch_size={self.max_batch_size}, "
                f"batch_timeout_micros={self.batch_timeout_micros}, "
                f"num_batch_threads={self.num_batch_threads}, "
                f"max_enqueued_batches={self.max_enqueued_batches}; "
                f"--grpc_max_threads={self.grpc_threads}, "
                f"--tensorflow_inter_op_parallelism={self.inter_op}, "
                f"--tensorflow_intra_op_parallelism={self.intra_op}")

    def with_overrides(self, text: str) -> BatchedConfig:
        """``key=value,...`` over these values (keys: this class's field names)."""
        names = {spec.name for spec in fields(self)}
        changes = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, _, value = item.partition("=")
            if key.strip() not in names:
                raise ValueError(f"unknown batching setting {key!r}; use {', '.join(names)}")
            changes[key.strip()] = int(value)
        return replace(self, **changes)


# The batched server's settings per model (chosen with --also-batched; see bench/README.md).
DEFAULT_BATCHING = {
    "tiny": BatchedConfig(max_batch_size=32, batch_timeout_micros=1000, num_batch_threads=1,
                          grpc_threads=64, inter_op=-1),
    "mlp": BatchedConfig(max_batch_size=32, batch_timeout_micros=2000, num_batch_threads=1,
                         grpc_threads=64, inter_op=0),
}


@dataclass(frozen=True)
class Workload:
    name: str  # "tiny" or "mlp"
    model_name: str
    description: str
    base_path: str
    row: np.ndarray  # one request's input, shape [1, ...]
    request: bytes  # the serialised PredictRequest every client sends


def export_tf_serving_half_plus_two(base: Path) -> Path:
    """TF Serving's TF1 half_plus_two test model, exported by the test suite's exporter, as
    version 123 under ``base``; returns ``base``."""
    sys.path.insert(0, str(TESTS))
    try:
        from testdata_models import VERSION, export_tf1_half_plus_two
    finally:
        sys.path.remove(str(TESTS))
    export_tf1_half_plus_two(base / VERSION)
    return base


def prepare(name: str, workdir: Path) -> Workload:
    """The model of workload ``name`` in ``workdir`` and its request."""
    import tensorflow as tf

    from pyserving.server.apis import predict_pb2

    if name == "tiny":
        model_name, row = "half_plus_two", np.array([[2.0]], dtype=np.float32)
        description = "half_plus_two (TF Serving's test model), x=[[2.0]]"
        base = export_tf_serving_half_plus_two(workdir / model_name)
    elif name == "mlp":
        model_name = "mlp"
        row = np.random.default_rng(MLP_SEED + 1).standard_normal(
            (1, MLP_WIDTH)).astype(np.float32)
        description = (f"MLP, {MLP_LAYERS} Dense layers of {MLP_WIDTH} (float32), "
                       f"one row of {MLP_WIDTH} floats per request")
        base = workdir / model_name
        build_mlp(base / "1")
    else:
        raise ValueError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(row))
    return Workload(name, model_name, description, str(base), row,
                    request.SerializeToString())


def build_mlp(path: Path) -> None:
    """A SavedModel: serving_default(x: float32[None, 1024]) -> {"y": float32[None, 1024]}."""
    import tensorflow as tf

    rng = np.random.default_rng(MLP_SEED)
    scale = 1.0 / np.sqrt(MLP_WIDTH)  # keeps activations of order 1 through the layers

    class Mlp(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.kernels = [tf.Variable(rng.standard_normal((MLP_WIDTH, MLP_WIDTH)) * scale,
                                        dtype=tf.float32) for _ in range(MLP_LAYERS)]
            self.biases = [tf.Variable(np.zeros(MLP_WIDTH), dtype=tf.float32)
                           for _ in range(MLP_LAYERS)]

        @tf.function(input_signature=[tf.TensorSpec([None, MLP_WIDTH], tf.float32, name="x")])
        def serve(self, x: Any) -> dict[str, Any]:
            for index, (kernel, bias) in enumerate(zip(self.kernels, self.biases, strict=False)):
                x = tf.matmul(x, kernel) + bias
                if index < MLP_LAYERS - 1:
                    x = tf.nn.relu(x)
            return {"y": x}

    module = Mlp()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


@dataclass(frozen=True)
class Reference:
    """What the in-process server answers: the echo servers' canned response and the output
    every server's answer is checked against."""

    canned_response: bytes
    output: np.ndarray


class InProcessModel:
    """The workload's model in a ModelServer of this process (no traffic on its port), for
    the reference answer and the compute limit: the bare TensorFlow call on a batch."""

    def __init__(self, workload: Workload, inter_op: int, intra_op: int = 0) -> None:
        import inprocess

        from pyserving.server.apis import predict_pb2

        self.workload = workload
        self._server = inprocess.start_server(workload.base_path, workload.model_name, inter_op,
                                              intra_op_threads=intra_op)
        self._request = predict_pb2.PredictRequest.FromString(workload.request)

    def reference(self) -> Reference:
        response = self._server.core.predict(self._request)
        return Reference(response.SerializeToString(), decode_output(response))

    def servable(self) -> Any:
        """The model's Servable, counted in: use it as ``with model.servable() as servable``."""
        return self._server.core.servable_for(self._request.model_spec)

    def rows_per_second(self, batch_size: int, seconds: float, blocks: int = 3) -> float:
        """Rows per second of back-to-back Servable.run calls on ``batch_size`` rows (the
        fastest of ``blocks`` blocks: other processes only ever slow a block down)."""
        batch = np.repeat(self.workload.row, batch_size, axis=0)
        with self.servable() as servable:
            signature = servable.signatures["serving_default"]
            feeds = [(signature.inputs["x"].name, batch)]
            fetches = [signature.outputs["y"].name]
            for _ in range(3):
                servable.run(feeds, fetches)
            rates = []
            for _ in range(blocks):
                calls = 0
                started = time.perf_counter()
                while True:
                    servable.run(feeds, fetches)
                    calls += 1
                    elapsed = time.perf_counter() - started
                    if elapsed >= seconds / blocks:
                        break
                rates.append(calls * batch_size / elapsed)
            return max(rates)

    def stop(self) -> None:
        self._server.stop(grace=None)


def decode_output(response: Any) -> np.ndarray:
    from pyserving.client.tensors import ndarray_from_tensor_proto

    return ndarray_from_tensor_proto(response.outputs["y"])


def response_checker(reference: Reference) -> Any:
    """check(label, response bytes): raise unless the answer is the reference output."""
    from pyserving.server.apis import predict_pb2

    def check(label: str, response: bytes) -> None:
        output = decode_output(predict_pb2.PredictResponse.FromString(response))
        if output.shape != reference.output.shape or not np.allclose(
                output, reference.output, rtol=1e-4, atol=1e-4):
            raise RuntimeError(f"{label} answered y of shape {output.shape} that differs from "
                               f"the in-process answer")

    return check
