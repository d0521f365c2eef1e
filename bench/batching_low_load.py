"""Issue 28: what batching costs at low load, and that closing a batch early costs nothing
under load.

    .venv/bin/python bench/batching_low_load.py [--seconds S] [--rounds R]
        [--concurrency 1,8,32] [--models tiny,mlp] [--transports grpc,rest]

Three pyserving servers per model, each in its own process with a gRPC and a REST port:
  unbatched    batching off, default flags;
  batched      --enable_batching with the model's BatchingParameters from workloads.py
               (batch_timeout_micros 1000/2000), a batch closing early once nothing can join;
  always-wait  the same with --batching_wait_for_full_batch (TF Serving's wait, the
               behaviour before issue 28).
One client process keeps N requests in flight (grpc.aio, or aiohttp on keep-alive
connections) for --seconds per cell. Cells (transport x N x server) are interleaved over
--rounds rounds, server order rotated each round; each cell's requests/s is the median of its
rounds, latencies are pooled. Reported as ratios within this one run, with PASS/MISS for the
issue's targets: batched @1 >= 0.9x unbatched @1; batched @8/@32 >= 0.98x always-wait; p99
@32 batched <= always-wait.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import workloads

SERVERS = ("unbatched", "batched", "always-wait")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _serve(base_path: str, model_name: str, role: str, parameters: str, grpc_threads: int,
           conn: Any) -> None:
    """Process entry point: a ModelServer; sends (grpc port, rest port), then answers each
    "batches" message with the batches run since the last one as (rows, ran on the event
    loop) pairs and the process's CPU seconds so far; stops on "stop"."""
    import logging
    import resource
    import threading
    from collections import deque

    logging.disable(logging.WARNING)
    from pyserving.server import ModelServer, ServerOptions

    batching: dict[str, Any] = {}
    if role != "unbatched":
        batching = {"enable_batching": True, "batching_parameters_file": parameters,
                        "batching_wait_for_full_batch": role == "always-wait",
                        "grpc_max_threads": grpc_threads}
    options = ServerOptions(port=0, rest_api_port=_free_port(), model_base_path=base_path,
                            model_name=model_name, **batching)
    with ModelServer(options, host="127.0.0.1") as server:
        batches: deque[tuple[int, bool]] = deque()  # appends are atomic: no lock per batch
        if server.batcher is not None:
            server.batcher.add_run_observer(lambda run: batches.append(
                (run.size, not threading.current_thread().name.startswith("batch-"))))
        conn.send((server.port, server.rest_port))
        while conn.recv() == "batches":
            taken = []
            while batches:
                taken.append(batches.popleft())
            usage = resource.getrusage(resource.RUSAGE_SELF)
            conn.send((taken, usage.ru_utime + usage.ru_stime))


@dataclass
class Cell:
    rates: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    batches: list[tuple[int, bool]] = field(default_factory=list)  # (rows, on the loop)
    cpu_seconds: float = 0.0  # the server process's, over its rounds
    requests: int = 0

    def cpu_per_request(self) -> float:
        return self.cpu_seconds / self.requests if self.requests else float("nan")

    def batch_shape(self) -> str:
        """Rows per batch, the share of one-row batches and of batches run on the loop."""
        if not self.batches:
            return ""
        count = len(self.batches)
        rows = sum(size for size, _ in self.batches) / count
        ones = sum(1 for size, _ in self.batches if size == 1) / count
        inline = sum(1 for _, on_loop in self.batches if on_loop) / count
        return f"{rows:4.1f} rows/batch, {ones:4.0%} of 1 row, {inline:4.0%} on the loop"

    def rate(self) -> float:
        return statistics.median(self.rates) if self.rates else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _grpc_load(port: int, request: bytes, clients: int, seconds: float
                     ) -> tuple[int, list[float]]:
    import grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
        return await _load(lambda: call(request, timeout=30), clients, seconds)


async def _rest_load(port: int, body: bytes, model: str, clients: int, seconds: float
                     ) -> tuple[int, list[float]]:
    import aiohttp

    url = f"http://127.0.0.1:{port}/v1/models/{model}:predict"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as session:

        async def post() -> None:
            async with session.post(url, data=body) as response:
                await response.read()
                assert response.status == 200, response.status

        return await _load(post, clients, seconds)


async def _load(call: Any, clients: int, seconds: float) -> tuple[int, list[float]]:
    """Completed requests and their latencies over ``seconds``, after a short warm-up."""
    warm = time.monotonic() + min(0.2, seconds / 4)
    end = warm + seconds
    latencies: list[float] = []

    async def client() -> None:
        while (started := time.monotonic()) < end:
            await call()
            if started >= warm:
                latencies.append(time.monotonic() - started)

    await asyncio.gather(*(client() for _ in range(clients)))
    return len(latencies), latencies


def _rest_body(workload: workloads.Workload) -> bytes:
    import orjson

    return orjson.dumps({"instances": workload.row.tolist()})


def measure_model(name: str, workdir: Path, args: argparse.Namespace) -> dict[tuple, Cell]:
    workload = workloads.prepare(name, workdir)
    config = workloads.DEFAULT_BATCHING[name]
    parameters = workdir / f"{name}.pbtxt"
    parameters.write_text(config.parameters_text())
    print(f"\n## {name}: {workload.description}\nbatching: {config.describe()}", flush=True)
    context = multiprocessing.get_context("spawn")
    ports: dict[str, tuple[int, int]] = {}
    processes, conns = [], []
    for role in SERVERS:
        ours, theirs = context.Pipe()
        process = context.Process(target=_serve, args=(
            workload.base_path, workload.model_name, role, str(parameters),
            config.grpc_threads, theirs), daemon=True)
        process.start()
        processes.append(process)
        conns.append(ours)
        ports[role] = ours.recv()
    body = _rest_body(workload)
    cells: dict[tuple, Cell] = {}
    try:
        for round_ in range(args.rounds):
            for transport in args.transports:
                for clients in args.concurrency:
                    order = SERVERS[round_ % 3:] + SERVERS[:round_ % 3]
                    for role in order:
                        grpc_port, rest_port = ports[role]
                        load = _grpc_load(grpc_port, workload.request, clients, args.seconds) \
                            if transport == "grpc" else \
                            _rest_load(rest_port, body, workload.model_name, clients,
                                       args.seconds)
                        conn = conns[SERVERS.index(role)]
                        conn.send("batches")
                        _, cpu_before = conn.recv()  # drops earlier cells' batches
                        done, latencies = asyncio.run(load)
                        conn.send("batches")
                        cell = cells.setdefault((transport, clients, role), Cell())
                        cell.rates.append(done / args.seconds)
                        cell.latencies.extend(latencies)
                        batches, cpu_after = conn.recv()
                        cell.batches.extend(batches)
                        # the warm-up's requests are not counted but used CPU: an estimate
                        cell.cpu_seconds += (cpu_after - cpu_before) * args.seconds / (
                            args.seconds + min(0.2, args.seconds / 4))
                        cell.requests += done
    finally:
        for conn in conns:
            conn.send("stop")
        for process in processes:
            process.join(30)
    return cells


def report(name: str, cells: dict[tuple, Cell], args: argparse.Namespace) -> None:
    print(f"{'transport':9} {'N':>3} " + "".join(f"{role:>26}" for role in SERVERS))
    for transport in args.transports:
        for clients in args.concurrency:
            row = ""
            for role in SERVERS:
                cell = cells[(transport, clients, role)]
                row += (f"{cell.rate():9.0f} req/s p50 {cell.percentile(0.5) * 1e3:5.2f} "
                        f"p99 {cell.percentile(0.99) * 1e3:5.2f}")[:26].rjust(26)
            print(f"{transport:9} {clients:>3} {row}")
            for role in SERVERS:
                cell = cells[(transport, clients, role)]
                print(f"{'':13} {role:>11}: {cell.cpu_per_request() * 1e6:5.0f} us server CPU "
                      f"per request{'; ' if cell.batches else ''}{cell.batch_shape()}")
    for transport in args.transports:
        def ratio(clients: int, role: str, against: str, transport: str = transport) -> float:
            base = cells[(transport, clients, against)].rate()
            return cells[(transport, clients, role)].rate() / base if base else float("nan")

        if 1 in args.concurrency:
            value = ratio(1, "batched", "unbatched")
            was = ratio(1, "always-wait", "unbatched")
            print(f"{name} {transport} @1: batched/unbatched {value:.2f}x (always-wait was "
                  f"{was:.2f}x) {'PASS' if value >= 0.9 else 'MISS'} (>= 0.9)")
        for clients in (n for n in args.concurrency if n > 1):
            value = ratio(clients, "batched", "always-wait")
            cpu = cells[(transport, clients, "batched")].cpu_per_request() \
                / cells[(transport, clients, "always-wait")].cpu_per_request()
            print(f"{name} {transport} @{clients}: batched/always-wait {value:.3f}x "
                  f"{'PASS' if value >= 0.98 else 'MISS'} (>= 0.98); server CPU per request "
                  f"{cpu:.3f}x")
        if 32 in args.concurrency:
            p99 = cells[(transport, 32, "batched")].percentile(0.99)
            before = cells[(transport, 32, "always-wait")].percentile(0.99)
            print(f"{name} {transport} @32: p99 batched {p99 * 1e3:.2f} ms, always-wait "
                  f"{before * 1e3:.2f} ms {'PASS' if p99 <= before else 'MISS'} (no higher)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per cell per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--models", default=",".join(workloads.WORKLOADS))
    parser.add_argument("--transports", default="grpc,rest")
    args = parser.parse_args(argv)
    args.concurrency = [int(n) for n in args.concurrency.split(",")]
    args.transports = args.transports.split(",")
    print(f"# batching at low load ({time.strftime('%Y-%m-%d %H:%M')}; {args.rounds} rounds of "
          f"{args.seconds} s per cell; python {sys.version.split()[0]})")
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.models.split(","):
            report(name, measure_model(name, Path(workdir), args), args)


if __name__ == "__main__":
    main()
