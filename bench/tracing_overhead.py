"""What tracing costs a Predict: requests/s of one server with OpenTelemetry not installed
(its imports blocked: a build without the ``tracing`` extra), with it installed but
``--enable_tracing`` off, on with every request sampled and exported over OTLP/gRPC to a
collector that discards them, and on with every request sampled but no exporter (what making
the spans costs alone); ratios against the first, measured in the same run.

    .venv/bin/python bench/tracing_overhead.py [--seconds S] [--rounds N] [--clients C]
                                               [--model tiny|mlp]

Each server runs in its own process, the sink collector in another, the grpc.aio clients in
this one. The configurations are measured in turn, in a shuffled order, for ``--rounds``
rounds and each keeps its best round (the machine's noise only ever slows a round down). The
CPU time of each server process and of the sink per request (summed over the rounds) is
printed too: it survives a loaded machine better than requests/s. The sink stands in for a
collector on another host: it does not decode the spans and runs at nice 19. It also times
what every request pays with tracing off: taking or making its request ID.
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
import loadgen
import workloads

# "no extra, again" is a second, identical server: how far apart two identical servers measure
# on this machine (the noise floor of every other ratio).
CONFIGS = ("no extra", "no extra, again", "tracing off", "tracing on, all sampled",
           "tracing on, not exported")
EXPORT_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"


def _sink(conn: Any) -> None:
    """An OTLP/gRPC trace receiver standing in for a collector on another host: it accepts
    each Export without decoding it (a real collector's work is not on this machine), counts
    the requests and bytes, and runs at the lowest priority so it takes CPU only when the
    server leaves some."""
    os.nice(19)

    def export(request: bytes, context: Any) -> bytes:
        received[0] += 1
        received[1] += len(request)
        return b""  # an empty ExportTraceServiceResponse

    received = [0, 0]
    handler = grpc.method_handlers_generic_handler(EXPORT_SERVICE, {
        "Export": grpc.unary_unary_rpc_method_handler(export)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    conn.send(port)
    while conn.recv() == "cpu":
        conn.send(time.process_time())
    conn.send(tuple(received))
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
    while conn.recv() == "cpu":
        conn.send(time.process_time())
    server.stop(grace=None)
    conn.send("stopped")


def _request_id_cost() -> tuple[float, float]:
    """Microseconds to take a caller's x-request-id and to make a new one."""
    from pyserving.server.request_id import request_id

    given = {"x-request-id": "3f2a9c01-b7e4-4c5e-9d1a-5b8e0f6a7c21"}.get
    number = 200_000
    taken = min(timeit.repeat(lambda: request_id(given), number=number, repeat=5))
    made = min(timeit.repeat(lambda: request_id(lambda name: None), number=number, repeat=5))
    return taken / number * 1e6, made / number * 1e6


def _cpu(conn: Any) -> float:
    conn.send("cpu")
    seconds: float = conn.recv()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per round and config")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--model", choices=workloads.WORKLOADS, default="tiny")
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    best: dict[str, float] = {}
    # CPU seconds of the server and of the sink, and requests, summed over every round
    cpu = {config: [0.0, 0.0, 0] for config in CONFIGS}
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
                    conn, _, target = servers[config]
                    server_cpu, sink_cpu = _cpu(conn), _cpu(sink_conn)
                    done = asyncio.run(loadgen.closed_loop(target, workload.request, args.clients,
                                             args.seconds))
                    # the sink is read after the exporter's next export (OTEL_BSP default 5 s
                    # at most; it exports sooner once 512 spans wait)
                    totals = cpu[config]
                    totals[0] += _cpu(conn) - server_cpu
                    totals[1] += _cpu(sink_conn) - sink_cpu
                    totals[2] += done
                    best[config] = max(best.get(config, 0.0), done / args.seconds)
        finally:
            for ours, process, _ in servers.values():
                ours.send("stop")
                ours.recv()
                process.join()
            sink_conn.send("stop")
            exports, received = sink_conn.recv()
            sink.join()
    print(f"{workload.description}; {args.clients} clients, best of {args.rounds} rounds "
          f"of {args.seconds:g} s")
    print(f"{'server':<26} {'req/s':>8} {'vs no extra':>11} {'server CPU':>11} {'sink CPU':>9}"
          "  (us/request)")
    for config in CONFIGS:
        server_cpu, sink_cpu, done = cpu[config]
        print(f"{config:<26} {best[config]:>8.0f} {best[config] / best['no extra']:>10.3f}x "
              f"{server_cpu / done * 1e6:>11.0f} {sink_cpu / done * 1e6:>9.1f}")
    print(f"the sink received {exports} export requests, {received / 1e6:.1f} MB")
    taken, made = _request_id_cost()
    print(f"request ID per request: {taken:.2f} us to take the caller's, {made:.2f} us to make "
          f"one ({made / (1e6 / best['no extra']) * 100:.2f}% of a request at this rate)")


if __name__ == "__main__":
    main()
