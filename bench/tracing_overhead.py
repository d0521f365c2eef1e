"""What tracing costs a Predict: requests/s of one server with OpenTelemetry not installed
(its imports blocked: a build without the ``tracing`` extra), with it installed but
``--enable_tracing`` off, on with every request sampled and exported over OTLP/gRPC to a
collector that discards them, and on with every request sampled but no exporter (what making
the spans costs alone); ratios against the first, measured in the same run.

    .venv/bin/python bench/tracing_overhead.py [--seconds S] [--rounds N] [--clients C]
                                               [--model tiny|mlp]

Each server runs in its own process, the sink collector in another, the grpc.aio clients in
this one. The configurations are measured in turn, in a shuffled order, for ``--rounds``
rounds and each keeps its best round (the machine's noise only ever slows a round down). It
also times what every request pays with tracing off: taking or making its request ID.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import sys
import tempfile
import time
import timeit
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workloads

# "no extra, again" is a second, identical server: how far apart two identical servers measure
# on this machine (the noise floor of every other ratio).
CONFIGS = ("no extra", "no extra, again", "tracing off", "tracing on, all sampled",
           "tracing on, not exported")


def _sink(conn: Any) -> None:
    """An OTLP trace collector that counts spans and keeps nothing."""
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    class Sink(trace_service_pb2_grpc.TraceServiceServicer):
        spans = 0

        def Export(self, request: Any, context: Any) -> Any:
            Sink.spans += sum(len(scope.spans) for resource in request.resource_spans
                              for scope in resource.scope_spans)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Sink(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    conn.send(port)
    conn.recv()
    conn.send(Sink.spans)
    server.stop(None)


def _serve(conn: Any, config: str, base: str, model_name: str, sink_port: int) -> None:
    if config.startswith("no extra"):
        for name in ("opentelemetry", "opentelemetry.sdk", "opentelemetry.trace"):
            sys.modules[name] = None  # type: ignore[assignment]  # ImportError from now on
    else:
        os.environ.update({
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{sink_port}",
            "OTEL_EXPORTER_OTLP_INSECURE": "true", "OTEL_TRACES_SAMPLER": "always_on",
            "OTEL_TRACES_EXPORTER": "none" if config.endswith("not exported") else "otlp"})
    from pyserving.server import ModelServer, ServerOptions

    server = ModelServer(ServerOptions(
        port=0, model_name=model_name, model_base_path=base,
        enable_tracing=config.startswith("tracing on")), host="127.0.0.1").start()
    conn.send(server.grpc_target)
    conn.recv()
    server.stop(grace=None)
    conn.send("stopped")


async def _load(target: str, body: bytes, clients: int, seconds: float) -> int:
    done = 0
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary("/tensorflow.serving.PredictionService/Predict",
                                   request_serializer=None, response_deserializer=None)
        for _ in range(50):  # warm-up
            await call(body)
        end = time.perf_counter() + seconds

        async def client() -> None:
            nonlocal done
            while time.perf_counter() < end:
                await call(body)
                done += 1

        await asyncio.gather(*(client() for _ in range(clients)))
    return done


def _request_id_cost() -> tuple[float, float]:
    """Microseconds to take a caller's x-request-id and to make a new one."""
    from pyserving.server.request_id import request_id

    given = {"x-request-id": "3f2a9c01-b7e4-4c5e-9d1a-5b8e0f6a7c21"}.get
    number = 200_000
    taken = min(timeit.repeat(lambda: request_id(given), number=number, repeat=5))
    made = min(timeit.repeat(lambda: request_id(lambda name: None), number=number, repeat=5))
    return taken / number * 1e6, made / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per round and config")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--model", choices=workloads.WORKLOADS, default="tiny")
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as scratch:
        workload = workloads.prepare(args.model, Path(scratch))
        sink_conn, theirs = context.Pipe()
        sink = context.Process(target=_sink, args=(theirs,))
        sink.start()
        sink_port = sink_conn.recv()
        servers = {}
        for config in CONFIGS:
            ours, theirs = context.Pipe()
            process = context.Process(target=_serve, args=(
                theirs, config, workload.base_path, workload.model_name, sink_port))
            process.start()
            servers[config] = (ours, process, ours.recv())
        try:
            order, shuffler = list(servers), random.Random(7)
            for _ in range(args.rounds):
                shuffler.shuffle(order)  # no configuration always goes first
                for config in order:
                    target = servers[config][2]
                    done = asyncio.run(_load(target, workload.request, args.clients,
                                             args.seconds))
                    best[config] = max(best.get(config, 0.0), done / args.seconds)
        finally:
            for ours, process, _ in servers.values():
                ours.send("stop")
                ours.recv()
                process.join()
            sink_conn.send("stop")
            spans = sink_conn.recv()
            sink.join()
    print(f"{workload.description}; {args.clients} clients, best of {args.rounds} rounds "
          f"of {args.seconds:g} s")
    print(f"{'server':<26} {'req/s':>8} {'vs no extra':>11}")
    for config in CONFIGS:
        print(f"{config:<26} {best[config]:>8.0f} {best[config] / best['no extra']:>10.3f}x")
    print(f"spans the sink collector received: {spans}")
    taken, made = _request_id_cost()
    print(f"request ID per request: {taken:.2f} us to take the caller's, {made:.2f} us to make "
          f"one ({made / (1e6 / best['no extra']) * 100:.2f}% of a request at this rate)")


if __name__ == "__main__":
    main()
