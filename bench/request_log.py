"""What request logging costs: requests/s of Predict on a tiny model (half_plus_two, one float)
at 32 concurrent gRPC clients with ``logging_config`` at sampling_rate 1.0, against the same
server without it, in one run; and the bytes written per logged request.

    .venv/bin/python bench/request_log.py [--seconds S] [--rounds N] [--clients C]

Each server runs in its own (spawned) process, the grpc.aio clients in this one. The rounds
alternate (off, on, off, on, ...) so drift on a shared machine hits both; each is reported as
the median of its rounds. Target: on/off >= 0.9.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import tempfile
from pathlib import Path
from typing import Any

import loadgen
import numpy as np


def _build(base: Path) -> None:
    import tensorflow as tf

    class HalfPlusTwo(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serve(self, x: tf.Tensor) -> dict:
            return {"y": x * 0.5 + 2.0}

    module = HalfPlusTwo()
    tf.saved_model.save(module, str(base / "1"), signatures={"serving_default": module.serve})


def _serve(conn: Any, base: str, logs: str | None) -> None:
    from pyserving.server import ModelServer, ServerOptions

    with tempfile.TemporaryDirectory() as scratch:
        logging = "" if logs is None else (
            f'logging_config {{ log_collector_config {{ type: "tfrecord" filename_prefix: '
            f'"{logs}/tiny" }} sampling_config {{ sampling_rate: 1.0 }} }}')
        config = Path(scratch) / "models.config"
        config.write_text(f'model_config_list {{ config {{ name: "tiny" base_path: "{base}" '
                          f'model_platform: "tensorflow" {logging} }} }}')
        server = ModelServer(ServerOptions(port=0, model_config_file=str(config)),
                             host="127.0.0.1").start()
        conn.send(server.grpc_target)
        conn.recv()
        server.stop(grace=None)
        page = server.metrics.render()[0].decode()
        conn.send({line.split("{")[0]: float(line.rsplit(" ", 1)[1])
                   for line in page.splitlines()
                   if line.startswith("pyserving_request_log_") and "_created" not in line})


def _request() -> bytes:
    from pyserving.client.apis import predict_pb2
    from pyserving.client.tensors import fill_tensor_proto

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "tiny"
    fill_tensor_proto(request.inputs["x"], np.array([2.0], np.float32))
    return request.SerializeToString()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each (alternating)")
    parser.add_argument("--clients", type=int, default=32)
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    body = _request()
    rates: dict[bool, list[float]] = {False: [], True: []}
    per_request: list[float] = []
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch) / "tiny"
        builder = context.Process(target=_build, args=(base,))
        builder.start()
        builder.join()
        for round_number in range(args.rounds):
            for logging in (False, True):
                logs = Path(scratch) / f"logs{round_number}"
                ours, theirs = context.Pipe()
                server = context.Process(target=_serve, args=(
                    theirs, str(base), str(logs) if logging else None))
                server.start()
                target = ours.recv()
                sent = asyncio.run(loadgen.closed_loop(target, body, args.clients, args.seconds)) \
                    + loadgen.WARMUP_CALLS
                ours.send("stop")
                counts = ours.recv()
                server.join()
                rate = (sent - loadgen.WARMUP_CALLS) / args.seconds
                rates[logging].append(rate)
                if logging:
                    written = counts.get("pyserving_request_log_records_total", 0.0)
                    size = sum(path.stat().st_size for path in logs.glob("*.tfrecord"))
                    dropped = counts.get("pyserving_request_log_dropped_total", 0.0)
                    per_request.append(size / max(written, 1))
                    print(f"round {round_number}: logging on {rate:8.0f} req/s, {sent} sent, "
                          f"{written:.0f} records, {dropped:.0f} dropped, "
                          f"{size / max(written, 1):.0f} B/record")
                else:
                    print(f"round {round_number}: logging off {rate:8.0f} req/s")
    best = {logging: statistics.median(values) for logging, values in rates.items()}
    ratio = best[True] / best[False]
    print(f"\n{'logging':>8} {'req/s':>8} {'vs off':>7}")
    print(f"{'off':>8} {best[False]:>8.0f} {1.0:>6.2f}x")
    print(f"{'on (1.0)':>8} {best[True]:>8.0f} {ratio:>6.2f}x   target >= 0.90x: "
          f"{'met' if ratio >= 0.9 else 'NOT met'}")
    print(f"bytes written per request: {per_request[-1]:.0f}")


if __name__ == "__main__":
    main()
