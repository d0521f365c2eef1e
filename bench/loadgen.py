"""The load generator: a process of grpc.aio clients keeping N Predicts in flight.

Requests go out pre-serialised and responses come back as bytes, so the client spends its
CPU on gRPC alone and imports neither TensorFlow nor the generated protos.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import grpc

PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"


@dataclass(frozen=True)
class LoadSpec:
    """One measurement: ``concurrency`` requests in flight from now until ``start_at +
    seconds``; requests started from ``start_at`` (a time.perf_counter value, the same clock
    in every process) on are measured."""

    target: str
    server_pid: int
    request: bytes
    concurrency: int
    start_at: float
    seconds: float


@dataclass
class LoadResult:
    """Requests started in the measured window, their latencies, and CPU spent meanwhile."""

    elapsed: float
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    server_cpu: float | None = None
    client_cpu: float = 0.0
    machine_cpu: float | None = None  # every process on the machine, ours included
    sample_response: bytes = b""


WARMUP_CALLS = 50


async def closed_loop(target: str, body: bytes, clients: int, seconds: float) -> int:
    """``clients`` grpc.aio callers sending the pre-serialised Predict ``body`` back to back
    for ``seconds``, after ``WARMUP_CALLS`` calls one at a time; the calls made in the window."""
    done = 0
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary("/tensorflow.serving.PredictionService/Predict",
                                   request_serializer=None, response_deserializer=None)
        for _ in range(WARMUP_CALLS):
            await call(body)
        end = time.perf_counter() + seconds

        async def client() -> None:
            nonlocal done
            while time.perf_counter() < end:
                await call(body)
                done += 1

        await asyncio.gather(*(client() for _ in range(clients)))
    return done


def merge(results: list[LoadResult]) -> LoadResult:
    """One result from load processes that measured the same window (CPU of the first)."""
    first = results[0]
    merged = LoadResult(first.elapsed, sample_response=first.sample_response,
                        server_cpu=first.server_cpu, machine_cpu=first.machine_cpu)
    for result in results:
        merged.latencies += result.latencies
        merged.errors += result.errors
        merged.client_cpu += result.client_cpu
    return merged


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process and all its threads (Linux /proc), or None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu_seconds() -> float | None:
    """Busy CPU time of the whole machine since boot (Linux /proc/stat), or None."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = [int(value) for value in handle.readline().split()[1:]]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def serve_load(conn: Connection) -> None:
    """Process entry point: run each LoadSpec received, send back its LoadResult. One event
    loop and one channel per server for the whole run, so connections stay warm."""
    loop = asyncio.new_event_loop()
    channels: dict[str, Any] = {}
    try:
        while True:
            spec = conn.recv()
            if spec is None:
                return
            conn.send(loop.run_until_complete(_measure(spec, channels)))
    finally:
        for channel in channels.values():
            loop.run_until_complete(channel.close())
        loop.close()


async def _measure(spec: LoadSpec, channels: dict[str, Any]) -> LoadResult:
    import grpc

    if spec.target not in channels:
        channels[spec.target] = grpc.aio.insecure_channel(spec.target)
    call = channels[spec.target].unary_unary(PREDICT_METHOD)  # bytes in, bytes out
    sample = await call(spec.request, timeout=30)
    start = spec.start_at
    end = start + spec.seconds
    result = LoadResult(elapsed=spec.seconds, sample_response=sample)
    marks: dict[str, float | None] = {}
    workers = [_worker(call, spec.request, start, end, result) for _ in range(spec.concurrency)]
    await asyncio.gather(_cpu_marks(spec.server_pid, start, end, marks), *workers)
    result.server_cpu = _difference(marks, "server")
    result.machine_cpu = _difference(marks, "machine")
    result.client_cpu = _difference(marks, "client") or 0.0
    return result


def _difference(marks: dict[str, float | None], name: str) -> float | None:
    start, end = marks.get(f"{name}_start"), marks.get(f"{name}_end")
    return None if start is None or end is None else end - start


async def _cpu_marks(server_pid: int, start: float, end: float,
                     marks: dict[str, float | None]) -> None:
    await asyncio.sleep(max(start - time.perf_counter(), 0))
    _mark(marks, "start", server_pid)
    await asyncio.sleep(max(end - time.perf_counter(), 0))
    _mark(marks, "end", server_pid)


def _mark(marks: dict[str, float | None], when: str, server_pid: int) -> None:
    marks[f"server_{when}"] = process_cpu_seconds(server_pid)
    marks[f"client_{when}"] = time.process_time()
    marks[f"machine_{when}"] = machine_cpu_seconds()


async def _worker(call, request: bytes, start: float, end: float, result: LoadResult) -> None:
    import grpc

    while True:
        began = time.perf_counter()
        if began >= end:
            return
        try:
            await call(request, timeout=30)
        except grpc.aio.AioRpcError as error:
            result.errors.append(f"{error.code().name}: {error.details()}")
            if len(result.errors) > 100:
                return
            continue
        if began >= start:
            result.latencies.append(time.perf_counter() - began)
