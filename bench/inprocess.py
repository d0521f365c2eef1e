"""In-process timings, no gRPC: the bare TF call against the serving core's full Predict."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

SPACING_US = 20  # about the Python work a Predict does around its TF call
TF_CALL = "TF call: Servable.run(x=[[2.0]])"
TF_SPACED = f"TF call, {SPACING_US} us of Python between calls"
CORE = "core.predict: decode + run + encode"
DECODE = "  decode request tensors (input_feeds)"
ENCODE = "  encode response (fill_tensor_proto)"
_SPACING = "busy loop alone"

Variants = dict[tuple[str, int], Callable[[], object]]  # (row, inter_op threads) -> call


@dataclass(frozen=True)
class Timing:
    """Per call: wall time and process CPU time (all threads), best block of the run."""

    wall_us: float
    cpu_us: float


@dataclass(frozen=True)
class InProcessReport:
    timings: dict[tuple[str, int], Timing]  # (row, inter_op_threads) -> timing
    request: bytes  # the serialised PredictRequest every measurement sends
    canned_response: bytes  # what pyserving answers to it (the echo servers' response)


def predict_request(model_name: str) -> Any:
    import numpy as np

    from pyserving.client.tensors import make_tensor_proto
    from pyserving.server.apis import predict_pb2, tensor_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.inputs["x"].CopyFrom(
        make_tensor_proto(tensor_pb2.TensorProto, np.array([[2.0]], dtype=np.float32)))
    return request


def start_server(base_path: str, model_name: str, inter_op_threads: int,
                 threads: int | None = None, *, batching_parameters_file: str = "",
                 intra_op_threads: int = 0) -> Any:
    """A started ModelServer on a free loopback port; its ``.core`` is the serving core.
    With ``batching_parameters_file``, batching is on with those parameters."""
    from pyserving.server import ModelServer, ServerOptions

    options = ServerOptions(port=0, model_base_path=base_path, model_name=model_name,
                            tensorflow_inter_op_parallelism=inter_op_threads,
                            tensorflow_intra_op_parallelism=intra_op_threads,
                            enable_batching=bool(batching_parameters_file),
                            batching_parameters_file=batching_parameters_file)
    if threads:
        options = options.replace(grpc_max_threads=threads)
    return ModelServer(options, host="127.0.0.1").start()


def measure_in_process(base_path: str, model_name: str, inter_op_values: list[int],
                       seconds: float, rounds: int = 10) -> InProcessReport:
    """Time each variant in ``rounds`` interleaved blocks; keep each one's fastest block."""
    request = predict_request(model_name)
    servers = {n: start_server(base_path, model_name, n) for n in inter_op_values}
    try:
        with ExitStack() as held:  # servables are counted in while their TF call is timed
            variants: Variants = {}
            for inter_op, server in servers.items():
                servable = held.enter_context(server.core.servable_for(request.model_spec))
                tf_call = _tf_call(servable)
                variants[TF_CALL, inter_op] = tf_call
                variants[TF_SPACED, inter_op] = lambda call=tf_call: (call(), _busy(SPACING_US))
                variants[CORE, inter_op] = lambda core=server.core: core.predict(request)
            variants[DECODE, 0], variants[ENCODE, 0] = _codec_calls(servable, request)
            variants[_SPACING, 0] = lambda: _busy(SPACING_US)
            timings = _time_variants(variants, seconds, rounds)
        canned = servers[inter_op_values[0]].core.predict(request).SerializeToString()
    finally:
        for server in servers.values():
            server.stop(grace=None)
    spacing = timings.pop((_SPACING, 0))
    for inter_op in inter_op_values:  # report the TF call alone: take the busy loop away
        spaced = timings[TF_SPACED, inter_op]
        timings[TF_SPACED, inter_op] = Timing(spaced.wall_us - spacing.wall_us,
                                              spaced.cpu_us - spacing.cpu_us)
    return InProcessReport(timings, request.SerializeToString(), canned)


def _time_variants(variants: Variants, seconds: float,
                   rounds: int) -> dict[tuple[str, int], Timing]:
    for variant in variants.values():
        variant()  # first runs build TF's executors
    block = seconds / rounds / len(variants)
    samples: dict[tuple[str, int], list[Timing]] = defaultdict(list)
    for _ in range(rounds):
        for key, variant in variants.items():
            samples[key].append(_time_block(variant, block))
    return {key: min(values, key=lambda t: t.wall_us) for key, values in samples.items()}


def _busy(microseconds: float) -> None:
    """Keep the calling thread busy, as a server's Python code is between two TF calls."""
    deadline = time.perf_counter() + microseconds * 1e-6
    while time.perf_counter() < deadline:
        pass


def _tf_call(servable: Any) -> Callable[[], object]:
    import numpy as np

    signature = servable.signatures["serving_default"]
    feeds = [(signature.inputs["x"].name, np.array([[2.0]], dtype=np.float32))]
    fetches = [signature.outputs["y"].name]
    return lambda: servable.run(feeds, fetches)


def _codec_calls(servable: Any, request: Any) -> tuple[Callable[[], object],
                                                       Callable[[], object]]:
    from pyserving.client.tensors import fill_tensor_proto
    from pyserving.server.apis import predict_pb2
    from pyserving.server.predict import input_feeds

    signature = servable.signatures["serving_default"]
    output = servable.run(input_feeds(signature, request.inputs, 2**31),
                          [signature.outputs["y"].name])[0]

    def encode() -> object:
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.signature_name = "serving_default"
        response.model_spec.version.value = servable.version
        fill_tensor_proto(response.outputs["y"], output, dtype_enum=signature.outputs["y"].dtype)
        return response

    return (lambda: input_feeds(signature, request.inputs, 2**31)), encode


def _time_block(call: Callable[[], object], seconds: float) -> Timing:
    calls = 0
    cpu_started = time.process_time()
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        for _ in range(20):
            call()
        calls += 20
        now = time.perf_counter()
        if now >= deadline:
            break
    cpu = time.process_time() - cpu_started
    return Timing((now - started) / calls * 1e6, cpu / calls * 1e6)
