"""What the gRPC benchmarks share: server processes, load processes, and one measured cell.

A cell is one (server, concurrency) window: every load process keeps its share of the N
requests in flight from a common start time, and the results merge into req/s, latency
percentiles and the CPU each party spent meanwhile.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import loadgen
import servers

CONNECT_SECONDS = 0.05  # a load process's first call (and channel set-up), before its warmup


@dataclass
class Running:
    """A started server process: ``label`` names it in tables, ``port`` is on 127.0.0.1."""

    label: str
    process: Any
    conn: Any
    port: int


@dataclass(frozen=True)
class Cell:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    server_cpu_us: float | None
    client_cpu_share: float
    other_cpu_share: float | None  # the rest of the machine: other processes, kernel
    errors: int


def log_name(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-=" else "_" for c in label)


def start_servers(context: Any, specs: Sequence[tuple[str, servers.ServerSpec]],
                  timeout: float = 300) -> list[Running]:
    """Start every (label, spec) in its own spawned process; return once all are ready."""
    started = []
    for label, spec in specs:
        parent, child = context.Pipe()
        process = context.Process(target=servers.serve, args=(spec, child), daemon=True)
        process.start()
        started.append((label, process, parent, spec.log_path))
    running = []
    for label, process, conn, log_path in started:
        if not conn.poll(timeout):
            raise RuntimeError(f"{label} did not start; see {log_path}")
        status, value = conn.recv()
        if status != "ready":
            raise RuntimeError(f"{label} failed to start: {value}; see {log_path}")
        running.append(Running(label, process, conn, value))
    return running


def stop_servers(running: Sequence[Running]) -> None:
    for server in running:
        with contextlib.suppress(OSError):
            server.conn.send("stop")
    for server in running:
        server.process.join(10)
        if server.process.is_alive():
            server.process.terminate()


def start_load_processes(context: Any, count: int) -> tuple[list[Any], list[Any]]:
    """``count`` load generator processes; returns (processes, their connections)."""
    processes, conns = [], []
    for _ in range(count):
        conn, child = context.Pipe()
        processes.append(context.Process(target=loadgen.serve_load, args=(child,), daemon=True))
        processes[-1].start()
        conns.append(conn)
    return processes, conns


def stop_load_processes(processes: Sequence[Any], conns: Sequence[Any]) -> None:
    for conn in conns:
        with contextlib.suppress(OSError):
            conn.send(None)
    for process in processes:
        process.join(10)
        if process.is_alive():
            process.terminate()


def to_cell(result: loadgen.LoadResult, seconds: float) -> Cell:
    latencies = sorted(result.latencies)
    count = len(latencies)

    def percentile(q: float) -> float:
        return latencies[min(int(q * count), count - 1)] * 1e3 if count else float("nan")

    server_cpu = (result.server_cpu / count * 1e6
                  if result.server_cpu is not None and count else None)
    other = None
    if result.machine_cpu is not None and result.server_cpu is not None:
        other = max(result.machine_cpu - result.server_cpu - result.client_cpu, 0.0) / seconds
    return Cell(count / seconds, percentile(0.50), percentile(0.99), server_cpu,
                result.client_cpu / seconds, other, len(result.errors))


def measure_cell(server: Running, load_conns: Sequence[Any], request: bytes, concurrency: int,
                 window: float, warmup: float,
                 check: Callable[[str, bytes], None]) -> Cell:
    """One window of load from every load process (``concurrency`` split between them);
    ``check(label, response)`` vets a sample response first."""
    start_at = time.perf_counter() + CONNECT_SECONDS + warmup
    shares = [concurrency // len(load_conns) + (i < concurrency % len(load_conns))
              for i in range(len(load_conns))]
    for conn, share in zip(load_conns, shares, strict=False):
        if share:
            conn.send(loadgen.LoadSpec(f"127.0.0.1:{server.port}", server.process.pid, request,
                                       share, start_at, window))
    result = loadgen.merge([conn.recv() for conn, share in zip(load_conns, shares, strict=True)
                            if share])
    check(server.label, result.sample_response)
    cell = to_cell(result, window)
    if cell.errors:
        print(f"  {server.label} N={concurrency}: {cell.errors} errors, "
              f"first: {result.errors[0]}", file=sys.stderr)
    return cell


def is_quiet(cell: Cell, max_other: float) -> bool:
    return cell.other_cpu_share is None or cell.other_cpu_share <= max_other


def better(cell: Cell, than: Cell | None, max_other: float) -> bool:
    """Quiet windows beat noisy ones; then more req/s (noise only ever slows a cell down)."""
    if than is None:
        return True
    if is_quiet(cell, max_other) != is_quiet(than, max_other):
        return is_quiet(cell, max_other)
    if not is_quiet(cell, max_other):
        return (cell.other_cpu_share or 0) < (than.other_cpu_share or 0)
    return cell.requests_per_second > than.requests_per_second
