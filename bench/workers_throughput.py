"""Throughput of ``--workers 2`` against ``--workers 1``: req/s, p50/p99 and the 2/1 ratio.

    .venv/bin/python bench/workers_throughput.py [--seconds S] [--concurrency 8,32]

For each workload (bench/workloads.py: ``tiny`` = half_plus_two, ``mlp`` = 4 Dense layers of
1024, one row per request) the CLI is started twice, ``pyserving --workers=1`` and
``--workers=2``, both on a free port. Load processes of grpc.aio clients (bench/loadgen.py's
request loop) each open ``--channels`` channels with a connection of their own, since
SO_REUSEPORT spreads connections, not requests, over the workers; the N requests in flight
are split over all those connections. Cells (server x N) are interleaved over ``--rounds``
rounds; per cell the best quiet round is kept (bench/harness.py's rule). *conns* is how the
kernel spread the connections over the workers (read from /proc); *srv us* is the CPU of the
supervisor and all its workers per request.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import harness
import loadgen
import workloads

STARTED = {1: re.compile(r"Running gRPC ModelServer at 0\.0\.0\.0:(\d+) \.\.\."),
           2: re.compile(r"all 2 workers are serving; Running gRPC ModelServer at "
                         r"0\.0\.0\.0:(\d+) \.\.\.")}
START_TIMEOUT = 300.0


@dataclass(frozen=True)
class MultiLoadSpec:
    """loadgen.LoadSpec over ``channels`` connections; CPU is summed over ``server_pids``."""

    target: str
    server_pids: tuple[int, ...]
    request: bytes
    concurrency: int
    channels: int
    start_at: float
    seconds: float


def serve_multi_load(conn: Connection) -> None:
    """Load process entry point: each MultiLoadSpec in, its loadgen.LoadResult out. The
    channels to each target stay open for the whole run."""
    loop = asyncio.new_event_loop()
    channels: dict[str, list[Any]] = {}
    try:
        while True:
            spec = conn.recv()
            if spec is None:
                return
            conn.send(loop.run_until_complete(_measure(spec, channels)))
    finally:
        for opened in channels.values():
            for channel in opened:
                loop.run_until_complete(channel.close())
        loop.close()


async def _measure(spec: MultiLoadSpec, channels: dict[str, list[Any]]) -> loadgen.LoadResult:
    import grpc

    if spec.target not in channels:
        channels[spec.target] = [grpc.aio.insecure_channel(
            spec.target, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(spec.channels)]
    calls = [channel.unary_unary(loadgen.PREDICT_METHOD) for channel in channels[spec.target]]
    samples = await asyncio.gather(*(call(spec.request, timeout=30) for call in calls))
    end = spec.start_at + spec.seconds
    result = loadgen.LoadResult(elapsed=spec.seconds, sample_response=samples[0])
    marks: dict[str, float | None] = {}
    clients = [loadgen._worker(calls[index % len(calls)], spec.request, spec.start_at, end,
                               result) for index in range(spec.concurrency)]
    await asyncio.gather(_cpu_marks(spec, marks), *clients)
    result.server_cpu = _difference(marks, "server")
    result.machine_cpu = _difference(marks, "machine")
    result.client_cpu = _difference(marks, "client") or 0.0
    return result


async def _cpu_marks(spec: MultiLoadSpec, marks: dict[str, float | None]) -> None:
    for when, at in (("start", spec.start_at), ("end", spec.start_at + spec.seconds)):
        await asyncio.sleep(max(at - time.perf_counter(), 0))
        cpu = [loadgen.process_cpu_seconds(pid) for pid in spec.server_pids]
        marks[f"server_{when}"] = None if None in cpu else sum(cpu)
        marks[f"client_{when}"] = time.process_time()
        marks[f"machine_{when}"] = loadgen.machine_cpu_seconds()


def _difference(marks: dict[str, float | None], name: str) -> float | None:
    start, end = marks.get(f"{name}_start"), marks.get(f"{name}_end")
    return None if start is None or end is None else end - start


@dataclass
class CliServer:
    """A ``pyserving --workers=N`` process and what its log told."""

    label: str
    workers: int
    popen: subprocess.Popen
    log_path: Path
    port: int = 0
    pids: tuple[int, ...] = field(default_factory=tuple)  # supervisor (if any) and workers

    def worker_pids(self) -> tuple[int, ...]:
        return self.pids[1:] if self.workers > 1 else self.pids


def start_server(workload: workloads.Workload, workers: int, flags: list[str],
                 workdir: Path) -> CliServer:
    log_path = workdir / f"{workload.name}-workers{workers}.log"
    with open(log_path, "wb") as log:
        popen = subprocess.Popen(
            [sys.executable, "-m", "pyserving.server", f"--workers={workers}", "--port=0",
             f"--model_name={workload.model_name}", f"--model_base_path={workload.base_path}",
             *flags], stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    return CliServer(f"{workers} worker{'s' if workers > 1 else ''}", workers, popen, log_path)


def wait_until_serving(server: CliServer) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        text = server.log_path.read_text(errors="replace")
        match = STARTED[server.workers].search(text)
        if match:
            server.port = int(match.group(1))
            workers = tuple(int(pid) for pid in re.findall(r"worker \d started: pid (\d+)", text))
            server.pids = (server.popen.pid, *workers)
            return
        if server.popen.poll() is not None:
            raise RuntimeError(f"{server.label} exited; see {server.log_path}")
        time.sleep(0.1)
    raise RuntimeError(f"{server.label} did not start; see {server.log_path}")


def stop_server(server: CliServer) -> None:
    if server.popen.poll() is None:
        server.popen.send_signal(signal.SIGTERM)
        try:
            server.popen.wait(60)
        except subprocess.TimeoutExpired:
            server.popen.kill()
            server.popen.wait()


def connections_per_worker(server: CliServer) -> str:
    """Established connections on the server port held by each worker, e.g. "9/7"."""
    established = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, encoding="ascii") as handle:
            for line in handle.readlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == server.port and fields[3] == "01":
                    established.add(f"socket:[{fields[9]}]")
    counts = []
    for pid in server.worker_pids():
        fds = Path(f"/proc/{pid}/fd")
        counts.append(sum(1 for fd in fds.iterdir() if _link(fd) in established))
    return "/".join(map(str, counts))


def _link(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def measure(server: CliServer, load_conns: list[Connection], request: bytes, concurrency: int,
            args: argparse.Namespace) -> tuple[harness.Cell, loadgen.LoadResult]:
    start_at = time.perf_counter() + harness.CONNECT_SECONDS + args.warmup
    shares = [concurrency // len(load_conns) + (i < concurrency % len(load_conns))
              for i in range(len(load_conns))]
    for conn, share in zip(load_conns, shares, strict=False):
        conn.send(MultiLoadSpec(f"127.0.0.1:{server.port}", server.pids, request, max(share, 1),
                                args.channels, start_at, args.seconds))
    result = loadgen.merge([conn.recv() for conn in load_conns])
    return harness.to_cell(result, args.seconds), result


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default="tiny,mlp")
    parser.add_argument("--concurrency", default="8,32",
                        help="requests in flight, comma-separated")
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before each window")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--load-processes", type=int, default=2)
    parser.add_argument("--channels", type=int, default=8,
                        help="channels (connections) per load process")
    parser.add_argument("--max-other", type=float, default=0.5,
                        help="cores the rest of the machine may use in a quiet window")
    parser.add_argument("--server-flags", default="",
                        help="extra flags for both servers, space-separated")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    concurrencies = [int(value) for value in args.concurrency.split(",")]
    context = multiprocessing.get_context("spawn")
    print(f"pyserving --workers 1 vs 2, {os.cpu_count()} cores; {args.load_processes} load "
          f"processes x {args.channels} channels; {args.seconds:g} s windows, best of "
          f"{args.rounds} rounds")
    with tempfile.TemporaryDirectory(prefix="pyserving-workers-bench-") as tmp:
        workdir = Path(tmp)
        for name in args.workloads.split(","):
            run_workload(name, workdir, concurrencies, context, args)


def run_workload(name: str, workdir: Path, concurrencies: list[int], context: Any,
                 args: argparse.Namespace) -> None:
    workload = workloads.prepare(name, workdir)
    model = workloads.InProcessModel(workload, inter_op=0)
    check = workloads.response_checker(model.reference())
    model.stop()
    servers = [start_server(workload, workers, args.server_flags.split(), workdir)
               for workers in (1, 2)]
    processes, conns = [], []
    try:
        for server in servers:
            wait_until_serving(server)
        processes, conns = _load_processes(context, args.load_processes)
        best: dict[tuple[str, int], tuple[harness.Cell, str]] = {}
        for round_index in range(args.rounds):
            order = servers if round_index % 2 == 0 else servers[::-1]
            for concurrency in concurrencies:
                for server in order:
                    cell, result = measure(server, conns, workload.request, concurrency, args)
                    check(server.label, result.sample_response)
                    key = (server.label, concurrency)
                    if harness.better(cell, best.get(key, (None,))[0], args.max_other):
                        best[key] = (cell, connections_per_worker(server))
        print_table(workload, servers, concurrencies, best, args)
    finally:
        harness.stop_load_processes(processes, conns)
        for server in servers:
            stop_server(server)


def _load_processes(context: Any, count: int) -> tuple[list[Any], list[Connection]]:
    processes, conns = [], []
    for _ in range(count):
        conn, child = context.Pipe()
        processes.append(context.Process(target=serve_multi_load, args=(child,), daemon=True))
        processes[-1].start()
        conns.append(conn)
    return processes, conns


def print_table(workload: workloads.Workload, servers: list[CliServer], concurrencies: list[int],
                best: dict[tuple[str, int], tuple[harness.Cell, str]],
                args: argparse.Namespace) -> None:
    print(f"\n{workload.name}: {workload.description}")
    print(f"{'server':12s}{'N':>5s}{'req/s':>10s}{'p50 ms':>9s}{'p99 ms':>9s}{'srv us':>9s}"
          f"{'other':>7s}{'conns':>8s}{'errors':>8s}{'2/1':>7s}")
    for concurrency in concurrencies:
        baseline = best[(servers[0].label, concurrency)][0]
        for server in servers:
            cell, conns = best[(server.label, concurrency)]
            ratio = cell.requests_per_second / baseline.requests_per_second \
                if server is not servers[0] and baseline.requests_per_second else None
            quiet = "" if harness.is_quiet(cell, args.max_other) else "*"
            print(f"{server.label:12s}{concurrency:5d}{cell.requests_per_second:10.0f}"
                  f"{cell.p50_ms:9.2f}{cell.p99_ms:9.2f}"
                  f"{_number(cell.server_cpu_us, 9, 0)}"
                  f"{_number(cell.other_cpu_share, 6, 2)}{quiet:1s}{conns:>8s}{cell.errors:8d}"
                  f"{'' if ratio is None else f'{ratio:.2f}x':>7s}")


def _number(value: float | None, width: int, digits: int) -> str:
    return f"{'-':>{width}s}" if value is None else f"{value:{width}.{digits}f}"


if __name__ == "__main__":
    main()
