"""What a Predict on a tiny model costs pyserving, and which gRPC server model serves it best.

    .venv/bin/python bench/predict_overhead.py [--seconds S] [--concurrency 1,8,32]

One run measures, on half_plus_two with x=[[2.0]]:
  1. in process (no gRPC): the bare TF call (Servable.run) against the core's full Predict
     (decode + run + encode), for each TF session config given by --inter-op;
  2. over loopback gRPC: req/s and latency of pyserving's sync server, the same core behind
     grpc.aio (run_in_executor and direct), and canned-response echo servers (the transport
     floor). Each server runs in its own process and the grpc.aio load generator in another,
     keeping N requests in flight. Cells are interleaved over --rounds rounds; each cell keeps
     its best round among those where the rest of the machine stayed quiet. Results are
     ratios against baselines from the same run; bench/README.md explains the columns.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness
import inprocess
import report
import servers
import workloads

REPO = Path(__file__).resolve().parent.parent
MODEL_NAME = "half_plus_two"


@dataclass(frozen=True)
class Contender:
    """One server process under test."""

    label: str
    kind: str
    inter_op: int | None  # None for the echo servers (no TensorFlow session)
    threads: int
    baseline: str | None = None  # the label its "vs base" ratio divides by


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from pyserving.server import ServerOptions

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=1.6,
                        help="measured seconds per (server, concurrency), over all rounds")
    parser.add_argument("--concurrency", default="1,8,32",
                        help="comma-separated numbers of requests kept in flight")
    parser.add_argument("--rounds", type=int, default=2,
                        help="interleaved rounds; each cell keeps its best round")
    parser.add_argument("--warmup", type=float, default=0.2,
                        help="seconds of load before each measured window")
    parser.add_argument("--load-processes", type=int, default=1,
                        help="load generator processes sharing the N requests in flight")
    parser.add_argument("--max-other", type=float, default=0.25,
                        help="cores other processes may use during a window before it is "
                             "measured again (a few retries per run at most)")
    parser.add_argument("--in-process-seconds", type=float, default=6.0)
    parser.add_argument("--inter-op", default="0,-1",
                        help="TF sessions' inter_op_parallelism_threads to compare (0 = TF's "
                             "default pool, -1 = run ops in the calling thread)")
    parser.add_argument("--servers", default=",".join(servers.KINDS),
                        help=f"server kinds to run, from {','.join(servers.KINDS)}")
    parser.add_argument("--threads", type=int, default=ServerOptions().grpc_max_threads,
                        help="gRPC / executor worker threads (pyserving's default)")
    parser.add_argument("--sync-threads", default=str(os.cpu_count() or 1),
                        help="extra thread counts to run the sync server with too "
                             "(comma-separated; empty for none)")
    parser.add_argument("--model", choices=("testdata", "demo"),
                        default="testdata",
                        help="TF Serving's half_plus_two test model, or pyserving's TF2 demo")
    args = parser.parse_args(argv)
    args.concurrency = [int(n) for n in args.concurrency.split(",")]
    args.inter_op = [int(n) for n in args.inter_op.split(",")]
    args.sync_threads = [int(n) for n in args.sync_threads.split(",") if n]
    args.servers = [kind for kind in args.servers.split(",") if kind]
    unknown = set(args.servers) - set(servers.KINDS)
    if unknown:
        parser.error(f"unknown server kinds: {', '.join(sorted(unknown))}")
    return args


def prepare_model(workdir: Path, which: str) -> str:
    """half_plus_two exported into a temp dir."""
    base = workdir / MODEL_NAME
    if which == "testdata":
        workloads.export_tf_serving_half_plus_two(base)
    else:
        from pyserving.server.demo import export_half_plus_two

        export_half_plus_two(str(base))
    return str(base)


def _label(kind: str, tags: list[str]) -> str:
    return f"{kind} [{', '.join(tags)}]" if tags else kind


def contenders(args: argparse.Namespace) -> list[Contender]:
    """The echo floors, then per TF session config: sync (also with --sync-threads), aio."""
    chosen = set(args.servers)
    lineup = [Contender(kind, kind, None, args.threads) for kind in servers.ECHO_KINDS
              if kind in chosen]
    if {"echo-sync", "echo-aio"} <= chosen:
        lineup[-1] = Contender("echo-aio", "echo-aio", None, args.threads, "echo-sync")
    for inter_op in args.inter_op:
        tags = [] if inter_op == 0 else [f"inter_op={inter_op}"]
        sync = _label("sync", tags) if "sync" in chosen else None
        if sync:
            lineup.append(Contender(sync, "sync", inter_op, args.threads))
            lineup += [Contender(_label("sync", [*tags, f"threads={n}"]), "sync", inter_op, n, sync)
                       for n in args.sync_threads if n != args.threads]
        lineup += [Contender(_label(kind, tags), kind, inter_op, args.threads, sync)
                   for kind in ("aio-executor", "aio-direct") if kind in chosen]
    return lineup


def start_servers(context: Any, lineup: list[Contender], base_path: str, canned: bytes,
                  workdir: Path) -> list[harness.Running]:
    specs = [(contender.label,
              servers.ServerSpec(contender.kind, base_path, MODEL_NAME, contender.threads,
                                 contender.inter_op or 0, canned,
                                 str(workdir / f"{harness.log_name(contender.label)}.log")))
             for contender in lineup]
    return harness.start_servers(context, specs)


def check_response(label: str, response: bytes) -> None:
    from pyserving.server.apis import predict_pb2

    values = list(predict_pb2.PredictResponse.FromString(response).outputs["y"].float_val)
    if values != [3.0]:
        raise RuntimeError(f"{label} answered y={values}, expected [3.0]")


def measure_cell(server: harness.Running, load_conns: list[Any], request: bytes,
                 concurrency: int, args: argparse.Namespace) -> harness.Cell:
    return harness.measure_cell(server, load_conns, request, concurrency,
                                args.seconds / args.rounds, args.warmup, check_response)


def run_grid(running: list[harness.Running], load_conns: list[Any], request: bytes,
             args: argparse.Namespace) -> dict[tuple[str, int], harness.Cell]:
    """Every (server, concurrency) cell once per round, servers rotated between rounds; a
    window where other processes took more than --max-other cores is measured again."""
    best: dict[tuple[str, int], harness.Cell] = {}
    retries_left = retry_budget = max(2, len(running) * len(args.concurrency) * args.rounds // 10)
    for round_index in range(args.rounds):
        shift = round_index % len(running)
        order = running[shift:] + running[:shift]
        for concurrency in args.concurrency:
            for server in order:
                key = (server.label, concurrency)
                cell = measure_cell(server, load_conns, request, concurrency, args)
                while not harness.is_quiet(cell, args.max_other) and retries_left > 0:
                    retries_left -= 1
                    retry = measure_cell(server, load_conns, request, concurrency, args)
                    cell = retry if harness.better(retry, cell, args.max_other) else cell
                if harness.better(cell, best.get(key), args.max_other):
                    best[key] = cell
    print(f"  {retry_budget - retries_left} noisy windows measured again", file=sys.stderr)
    return best


def progress(began: float, message: str) -> None:
    print(f"[{time.monotonic() - began:5.1f} s] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    began = time.monotonic()
    context = multiprocessing.get_context("spawn")
    workdir = Path(tempfile.mkdtemp(prefix="pyserving-bench-"))
    running: list[harness.Running] = []
    load_processes: list[Any] = []
    load_conns: list[Any] = []
    finished = False
    try:
        base_path = prepare_model(workdir, args.model)
        progress(began, "measuring in process")
        in_process = inprocess.measure_in_process(base_path, MODEL_NAME, args.inter_op,
                                                  args.in_process_seconds)
        report.print_header(args, os.cpu_count())
        report.print_in_process(in_process, args.inter_op)
        lineup = contenders(args)
        progress(began, f"starting {len(lineup)} server processes")
        running = start_servers(context, lineup, base_path, in_process.canned_response,
                                workdir)
        load_processes, load_conns = harness.start_load_processes(context,
                                                                  args.load_processes)
        progress(began, f"measuring {len(lineup) * len(args.concurrency)} cells "
                        f"x {args.rounds} rounds")
        cells = run_grid(running, load_conns, in_process.request, args)
        report.print_grpc(cells, lineup, args)
        report.print_conclusion(in_process, cells, lineup, args)
        finished = True
    finally:
        harness.stop_load_processes(load_processes, load_conns)
        harness.stop_servers(running)
        if finished:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"server logs kept in {workdir}", file=sys.stderr)
    print(f"\n(total run time {time.monotonic() - began:.0f} s)")


if __name__ == "__main__":
    main()
