"""What a 100% shadow costs the primary path: requests/s and p99 latency of Predict with a
rollout that mirrors every request to another version, against the same rollout without a
shadow, at 8 and 32 clients, in one run.

    .venv/bin/python bench/rollout_shadow.py [--seconds S]

The model is an MLP (2 Dense layers of 512, one 512-float row per request) with two identical
versions; each server runs in its own process, the grpc.aio clients in this one. The shadow
runner sheds mirrored requests while the server is busy, so at saturation most are dropped
(counted); the table shows how many were compared and dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import socket
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import numpy as np

WIDTH = 512
ROLLOUT = ('rollouts {{ model_name: "mlp" split {{ version: 1 weight: 1 }} {shadow} }}')
SHADOW = "shadow { version: 2 fraction: 1.0 }"


def _build(base: Path) -> None:
    import tensorflow as tf

    rng = np.random.default_rng(7)
    weights = [tf.constant(rng.standard_normal((WIDTH, WIDTH)).astype(np.float32) / 20)
               for _ in range(2)]

    class Mlp(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, WIDTH], tf.float32, name="x")])
        def serve(self, x: tf.Tensor) -> dict:
            for weight in weights:
                x = tf.nn.relu(x @ weight)
            return {"y": x}

    for version in (1, 2):
        module = Mlp()
        tf.saved_model.save(module, str(base / str(version)),
                            signatures={"serving_default": module.serve})


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _serve(conn: Any, base: str, shadow: bool) -> None:
    from pyserving.server import ModelServer, ServerOptions

    with tempfile.TemporaryDirectory() as scratch:
        rollout = Path(scratch) / "rollout.txt"
        rollout.write_text(ROLLOUT.format(shadow=SHADOW if shadow else ""))
        config = Path(scratch) / "models.config"
        config.write_text(f'model_config_list {{ config {{ name: "mlp" base_path: "{base}" '
                          'model_platform: "tensorflow" model_version_policy { all {} } } }')
        server = ModelServer(ServerOptions(
            port=0, rest_api_port=_free_port(), model_config_file=str(config),
            rollout_config_file=str(rollout), rollout_config_poll_wait_seconds=0),
            host="127.0.0.1").start()
        conn.send((server.grpc_target, server.rest_port))
        conn.recv()
        server.stop(grace=None)


def _request() -> bytes:
    from pyserving.client.apis import predict_pb2
    from pyserving.client.tensors import fill_tensor_proto

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "mlp"
    row = np.random.default_rng(8).standard_normal((1, WIDTH)).astype(np.float32)
    fill_tensor_proto(request.inputs["x"], row, as_content=True)
    return request.SerializeToString()


async def _load(target: str, body: bytes, clients: int, seconds: float) -> list[float]:
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary("/tensorflow.serving.PredictionService/Predict",
                                   request_serializer=None, response_deserializer=None)
        for _ in range(20):  # warm-up
            await call(body)
        end = time.perf_counter() + seconds

        async def client() -> None:
            while (started := time.perf_counter()) < end:
                await call(body)
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(client() for _ in range(clients)))
    return latencies


def _status(rest_port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}/v1/models/mlp/rollout") as answer:
        return json.loads(answer.read())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per cell")
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    body = _request()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch) / "mlp"
        builder = context.Process(target=_build, args=(base,))
        builder.start()
        builder.join()
        for clients in (8, 32):
            for shadow in (False, True):
                ours, theirs = context.Pipe()
                server = context.Process(target=_serve, args=(theirs, str(base), shadow))
                server.start()
                target, rest_port = ours.recv()
                latencies = asyncio.run(_load(target, body, clients, args.seconds))
                status = _status(rest_port).get("shadow", {})
                ours.send("stop")
                server.join()
                rows.append((clients, shadow, len(latencies) / args.seconds,
                             float(np.percentile(latencies, 99)) * 1e3, status))
    print(f"{'clients':>7} {'shadow':>6} {'req/s':>8} {'p99 ms':>7} {'vs none':>7} "
          f"{'compared':>8} {'dropped':>8}")
    for clients, shadow, rate, p99, status in rows:
        baseline = next(row[2] for row in rows if row[0] == clients and not row[1])
        print(f"{clients:>7} {'100%' if shadow else 'none':>6} {rate:>8.0f} {p99:>7.1f} "
              f"{rate / baseline:>6.2f}x {status.get('compared', '-'):>8} "
              f"{status.get('dropped', '-'):>8}")


if __name__ == "__main__":
    main()
