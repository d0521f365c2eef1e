"""The Open Inference Protocol (KServe V2) against TF Serving's API on the same pyserving
process: latency of a 1000x100 float32 infer, and 1-row requests/s at 32 clients.

    .venv/bin/python bench/v2_protocol.py [--seconds S] [--repeats N]

Targets (issue #23): V2 REST with binary tensors <= 1.5x TF Serving gRPC Predict; V2 gRPC
(raw_input_contents) <= 1.1x TF Serving gRPC; 1-row requests/s at 32 clients, V2 REST (JSON)
>= 0.9x TF Serving REST. The server runs in its own process (bench/rest_vs_grpc.py's); every
client decodes its answer to numpy. Ratios are measured in this one run.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import multiprocessing
import os
import time
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import orjson
from rest_vs_grpc import CONCURRENCY, _cpu_seconds, _grpc_load, _median_seconds, _rest_load, _serve

HEADER = "Inference-Header-Content-Length"


class V2Case:
    """One request as V2 JSON, V2 binary and V2 gRPC, and as TF Serving's PredictRequest."""

    def __init__(self, values: np.ndarray) -> None:
        from pyserving.client.protos.inference import grpc_service_pb2 as pb
        from pyserving.client.tensors import make_tensor_proto
        from pyserving.server.apis import predict_pb2, tensor_pb2

        shape = list(values.shape)
        self.json = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": shape,
                                              "data": values.ravel().tolist()}]})
        header = orjson.dumps({
            "parameters": {"binary_data_output": True},
            "inputs": [{"name": "x", "datatype": "FP32", "shape": shape,
                        "parameters": {"binary_data_size": values.nbytes}}]})
        self.binary = header + values.tobytes()
        self.binary_headers = {HEADER: str(len(header))}
        self.v2 = pb.ModelInferRequest(model_name="m")
        self.v2.inputs.add(name="x", datatype="FP32", shape=shape)
        self.v2.raw_input_contents.append(values.tobytes())
        self.predict = predict_pb2.PredictRequest()
        self.predict.model_spec.name = "m"
        self.predict.inputs["x"].CopyFrom(make_tensor_proto(tensor_pb2.TensorProto, values))
        self.rest = orjson.dumps({"instances": values.tolist()})


def _decode_binary(payload: bytes, length: int) -> np.ndarray:
    answer = orjson.loads(payload[:length])
    return np.frombuffer(payload[length:], "<f4").reshape(answer["outputs"][0]["shape"])


def latency(grpc_target: str, rest_port: int, repeats: int) -> dict[str, float]:
    from pyserving.client.protos.inference import grpc_service_pb2_grpc
    from pyserving.client.tensors import ndarray_from_tensor_proto
    from pyserving.server.apis import prediction_service_pb2_grpc

    case = V2Case(np.random.default_rng(0).random((1000, 100), np.float32))
    connection = http.client.HTTPConnection("127.0.0.1", rest_port)

    def post(path: str, body: bytes, headers: dict[str, str]) -> http.client.HTTPResponse:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        assert response.status == 200, response.read()
        return response

    def v2_binary() -> np.ndarray:
        response = post("/v2/models/m/infer", case.binary, case.binary_headers)
        return _decode_binary(response.read(), int(response.headers[HEADER]))

    def v2_json() -> Any:
        answer = orjson.loads(post("/v2/models/m/infer", case.json, {}).read())
        return np.asarray(answer["outputs"][0]["data"], np.float32)

    def tf_rest() -> Any:
        return np.asarray(orjson.loads(post("/v1/models/m:predict", case.rest, {}).read())
                          ["predictions"], np.float32)

    results: dict[str, float] = {}
    with grpc.insecure_channel(grpc_target) as channel:
        predict = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict
        infer = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer

        def tf_grpc() -> np.ndarray:
            return ndarray_from_tensor_proto(predict(case.predict, 60).outputs["y"])

        def v2_grpc() -> np.ndarray:
            return np.frombuffer(infer(case.v2, 60).raw_output_contents[0], "<f4")

        calls: list[tuple[str, Callable[[], Any]]] = [
            ("TF Serving gRPC Predict", tf_grpc), ("V2 gRPC (raw contents)", v2_grpc),
            ("V2 REST binary", v2_binary), ("V2 REST JSON", v2_json),
            ("TF Serving REST JSON", tf_rest)]
        print(f"{'1000x100 float32, median':28} {'ms':>8} {'/ TF gRPC':>10}")
        for name, call in calls:
            results[name] = _median_seconds(call, repeats)
            print(f"{name:28} {results[name] * 1e3:8.2f} "
                  f"{results[name] / results['TF Serving gRPC Predict']:9.2f}x")
    connection.close()
    return results


async def _v2_rest_load(port: int, body: bytes, seconds: float) -> int:
    import aiohttp

    done = 0
    stop = time.monotonic() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as http:
        async def client() -> None:
            nonlocal done
            while time.monotonic() < stop:
                async with http.post(f"http://127.0.0.1:{port}/v2/models/m/infer",
                                     data=body) as response:
                    orjson.loads(await response.read())
                    assert response.status == 200
                done += 1

        await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
    return done


async def _v2_grpc_load(target: str, request: Any, seconds: float) -> int:
    from pyserving.client.protos.inference import grpc_service_pb2_grpc

    done = 0
    stop = time.monotonic() + seconds
    async with grpc.aio.insecure_channel(target) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)

        async def client() -> None:
            nonlocal done
            while time.monotonic() < stop:
                await stub.ModelInfer(request, timeout=60)
                done += 1

        await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
    return done


def throughput(pid: int, grpc_target: str, rest_port: int, seconds: float) -> dict[str, float]:
    case = V2Case(np.random.default_rng(1).random((1, 100), np.float32))
    print(f"\n{CONCURRENCY} concurrent 1-row clients, {seconds:g} s each:")
    print(f"{'':18} {'req/s':>8} {'server CPU us/req':>18}")
    rates = {}
    loads: list[tuple[str, Callable[[float], Any]]] = [
        ("TF Serving REST", lambda span: _rest_load(rest_port, case.rest, span)),
        ("V2 REST JSON", lambda span: _v2_rest_load(rest_port, case.json, span)),
        ("TF Serving gRPC", lambda span: _grpc_load(grpc_target, case.predict, span)),
        ("V2 gRPC", lambda span: _v2_grpc_load(grpc_target, case.v2, span))]
    for name, load in loads:
        asyncio.run(load(0.5))  # warm up
        server_cpu = _cpu_seconds(pid)
        started = time.monotonic()
        done = asyncio.run(load(seconds))
        rates[name] = done / (time.monotonic() - started)
        print(f"{name:18} {rates[name]:8.0f} {(_cpu_seconds(pid) - server_cpu) / done * 1e6:18.0f}")
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(target=_serve, args=(theirs,), daemon=True)
    process.start()
    pid, grpc_target, rest_port = ours.recv()
    try:
        times = latency(grpc_target, rest_port, args.repeats)
        rates = throughput(pid, grpc_target, rest_port, args.seconds)
    finally:
        ours.send("stop")
        process.join(60)
    base = times["TF Serving gRPC Predict"]
    print("\ntargets (issue #23), this run:")
    for text, value, target, below in [
            ("V2 REST binary / TF Serving gRPC", times["V2 REST binary"] / base, 1.5, True),
            ("V2 gRPC / TF Serving gRPC", times["V2 gRPC (raw contents)"] / base, 1.1, True),
            ("V2 REST req/s / TF Serving REST req/s",
             rates["V2 REST JSON"] / rates["TF Serving REST"], 0.9, False)]:
        met = value <= target if below else value >= target
        print(f"  {text:40} {value:5.2f}x  ({'<=' if below else '>='} {target}: "
              f"{'met' if met else 'NOT met'})")
    print(f"({os.cpu_count()} cores shared by the server, the clients and anything else)")


if __name__ == "__main__":
    main()
