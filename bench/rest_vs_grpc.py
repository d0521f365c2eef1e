"""REST against gRPC on the same pyserving process: latency of large and small predicts, and
requests/s at 32 concurrent clients, with the CPU each request costs server and client.

    .venv/bin/python bench/rest_vs_grpc.py [--seconds S] [--repeats N]

The server (one ModelServer, gRPC and REST ports) runs in its own process; the clients run
here, in another. Latency cells are sequential calls on one keep-alive connection, median of
--repeats, each decoding its answer (orjson for REST; the stub's protobuf for gRPC). The
throughput cells keep 32 requests in flight (aiohttp / grpc.aio on one event loop) for
--seconds each and read the server's and the client's CPU time from /proc. Ratios are REST
over gRPC, measured in this one run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import http.client
import multiprocessing
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import orjson

CONCURRENCY = 32
_TICKS = os.sysconf("SC_CLK_TCK")


def _build_model(base: Path) -> None:
    import tensorflow as tf

    class Model(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 100], tf.float32, name="x")])
        def wide(self, x: tf.Tensor) -> dict:
            return {"y": x * 2.0}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def strings(self, text: tf.Tensor) -> dict:
            return {"text_bytes": tf.identity(text)}

    module = Model()
    tf.saved_model.save(module, str(base / "1"),
                        signatures={"serving_default": module.wide, "strings": module.strings})


def _serve(conn: Any) -> None:
    from pyserving.server import ModelServer, ServerOptions

    with tempfile.TemporaryDirectory() as scratch:
        _build_model(Path(scratch) / "m")
        server = ModelServer(ServerOptions(port=0, rest_api_port=_free_port(), model_name="m",
                                           model_base_path=str(Path(scratch) / "m")),
                             host="127.0.0.1").start()
        conn.send((os.getpid(), server.grpc_target, server.rest_port))
        conn.recv()  # until told to stop
        server.stop(grace=None)


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime


class Case:
    """One request, as a REST body and as a PredictRequest."""

    def __init__(self, name: str, signature: str, values: np.ndarray) -> None:
        from pyserving.client.tensors import make_tensor_proto
        from pyserving.server.apis import predict_pb2, tensor_pb2

        self.name = name
        alias = "x" if signature == "serving_default" else "text"
        rows = values.tolist() if values.dtype != object else \
            [{"b64": base64.b64encode(raw).decode()} for raw in values]
        self.body = orjson.dumps({"signature_name": signature, "instances": rows})
        self.request = predict_pb2.PredictRequest()
        self.request.model_spec.name = "m"
        self.request.model_spec.signature_name = signature
        self.request.inputs[alias].CopyFrom(make_tensor_proto(tensor_pb2.TensorProto, values))


def _cases() -> list[Case]:
    rng = np.random.default_rng(0)
    strings = np.empty(1000, dtype=object)
    strings[:] = [rng.bytes(48) for _ in range(1000)]
    return [Case("1000x100 float32", "serving_default", rng.random((1000, 100), np.float32)),
            Case("1x100 float32", "serving_default", rng.random((1, 100), np.float32)),
            Case("1000 x 48-byte b64 strings", "strings", strings)]


def _median_seconds(call: Callable[[], Any], repeats: int) -> float:
    call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def latency(grpc_target: str, rest_port: int, repeats: int) -> None:
    from pyserving.server.apis import prediction_service_pb2_grpc

    connection = http.client.HTTPConnection("127.0.0.1", rest_port)
    with grpc.insecure_channel(grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        print(f"{'latency (median)':32} {'REST ms':>9} {'gRPC ms':>9} {'REST/gRPC':>10}")
        for case in _cases():
            def rest(case: Case = case) -> Any:
                connection.request("POST", "/v1/models/m:predict", body=case.body)
                response = connection.getresponse()
                assert response.status == 200
                return orjson.loads(response.read())

            rest_s = _median_seconds(rest, repeats)
            grpc_s = _median_seconds(lambda case=case: stub.Predict(case.request, 60), repeats)
            print(f"{case.name:32} {rest_s * 1e3:9.2f} {grpc_s * 1e3:9.2f} "
                  f"{rest_s / grpc_s:9.2f}x")
    connection.close()


async def _rest_load(port: int, body: bytes, seconds: float) -> int:
    import aiohttp

    done = 0
    stop = time.monotonic() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as http:
        async def client() -> None:
            nonlocal done
            while time.monotonic() < stop:
                async with http.post(f"http://127.0.0.1:{port}/v1/models/m:predict",
                                     data=body) as response:
                    orjson.loads(await response.read())
                    assert response.status == 200
                done += 1

        await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
    return done


async def _grpc_load(target: str, request: Any, seconds: float) -> int:
    from pyserving.server.apis import prediction_service_pb2_grpc

    done = 0
    stop = time.monotonic() + seconds
    async with grpc.aio.insecure_channel(target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

        async def client() -> None:
            nonlocal done
            while time.monotonic() < stop:
                await stub.Predict(request, timeout=60)
                done += 1

        await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
    return done


def throughput(pid: int, grpc_target: str, rest_port: int, seconds: float) -> None:
    case = _cases()[1]  # one row
    print(f"\n{CONCURRENCY} concurrent 1-row clients, {seconds:g} s each:")
    print(f"{'':6} {'req/s':>8} {'server CPU us/req':>18} {'client CPU us/req':>18}")
    rates = {}
    for name, load in [("REST", lambda span: _rest_load(rest_port, case.body, span)),
                       ("gRPC", lambda span: _grpc_load(grpc_target, case.request, span))]:
        asyncio.run(load(0.5))  # warm up
        server_cpu, client_cpu = _cpu_seconds(pid), time.process_time()
        started = time.monotonic()
        done = asyncio.run(load(seconds))
        elapsed = time.monotonic() - started
        server_cpu, client_cpu = _cpu_seconds(pid) - server_cpu, time.process_time() - client_cpu
        rates[name] = done / elapsed
        print(f"{name:6} {rates[name]:8.0f} {server_cpu / done * 1e6:18.0f} "
              f"{client_cpu / done * 1e6:18.0f}")
    print(f"REST/gRPC requests/s: {rates['REST'] / rates['gRPC']:.2f}x "
          f"({os.cpu_count()} cores shared by server and clients)")


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
        latency(grpc_target, rest_port, args.repeats)
        throughput(pid, grpc_target, rest_port, args.seconds)
    finally:
        ours.send("stop")
        process.join(60)


if __name__ == "__main__":
    main()
