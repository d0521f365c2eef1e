"""The tables, targets and plot batching_throughput.py prints: ratios within one run."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import textwrap
from collections.abc import Sequence
from typing import Any

from report import cpu_model

# (workload, baseline label, minimum ratio of the batched server's req/s) at TARGET_N.
TARGETS = (("tiny", "echo", 0.8), ("tiny", "naive", 2.5), ("mlp", "naive", 4.0))
TARGET_N = 32
BATCHED, LIMIT = "pyserving batched", "compute limit"
_STYLES = {  # label -> (colour, marker)
    "echo": ("tab:gray", "s"),
    "naive": ("tab:red", "v"),
    "pyserving": ("tab:blue", "o"),
    BATCHED: ("tab:green", "D"),
}


def _print_wrapped(text: str, indent: str = "") -> None:
    print(textwrap.fill(text, width=100, initial_indent=indent, subsequent_indent=indent + "  ",
                        break_on_hyphens=False, break_long_words=False))


def print_header(command: str, args: argparse.Namespace) -> None:
    import grpc
    import tensorflow as tf

    print(f"pyserving batching throughput, {datetime.datetime.now():%Y-%m-%d %H:%M}")
    print(f"command: {command}")
    print(f"machine: {os.cpu_count()} cores, {cpu_model()}; Python "
          f"{platform.python_version()}, grpcio {grpc.__version__}, TensorFlow {tf.__version__}")
    _print_wrapped(f"load: {args.load_processes} grpc.aio process(es), N requests in flight on one "
          f"channel each; best of {args.rounds} interleaved rounds x "
          f"{args.seconds / args.rounds:.2f} s per cell (after {args.warmup:.2f} s warmup)")
    _print_wrapped(f"servers: echo = bare grpc.server ({args.echo_threads} threads) answering "
          f"a canned response; naive = bench/naive_server.py ({args.naive_threads} threads, NOT "
          f"pyserving); pyserving = ModelServer, default flags ({args.threads} threads); "
          "pyserving batched = ModelServer --enable_batching (settings per model); compute "
          "limit = the TF call in process on a batch of the mean size the batched server "
          "formed, rows/s")
    _print_wrapped("columns: srv us = server CPU per request (all threads); load = CPU of the load "
          "process, in cores; batch = mean rows per TF call (batched servers); vs echo, "
          "vs naive = req/s over theirs at the same N")


def _ratio(value: float, cells: dict, label: str, concurrency: int) -> str:
    baseline = cells.get((label, concurrency))
    if baseline is None or not baseline.requests_per_second:
        return f"{'-':>9s}"
    return f"{value / baseline.requests_per_second:9.2f}"


def print_model(result: Any, args: argparse.Namespace) -> None:
    print(f"\n{result.workload.name}: {result.workload.description}")
    _print_wrapped(f"{BATCHED}: {result.batching.describe()}", "  ")
    for label, config in result.extra_batching.items():
        _print_wrapped(f"{label}: {config.describe()}", "  ")
    print(f"{'N':>4s}  {'server':20s}{'req/s':>9s}{'p50 ms':>9s}{'p99 ms':>9s}{'srv us':>8s}"
          f"{'load':>6s}{'batch':>7s}{'vs echo':>9s}{'vs naive':>9s}")
    cells = result.cells
    for concurrency in args.concurrency:
        for label in result.labels:
            cell = cells.get((label, concurrency))
            if cell is None:
                continue
            batch = result.mean_batch.get((label, concurrency), float("nan"))
            batch_text = f"{batch:7.1f}" if batch == batch else f"{'':7s}"
            cpu = f"{cell.server_cpu_us:8.0f}" if cell.server_cpu_us else f"{'-':>8s}"
            noisy = "*" if args.max_other < (cell.other_cpu_share or 0) else " "
            print(f"{concurrency:4d}  {label:20s}{cell.requests_per_second:9.0f}"
                  f"{cell.p50_ms:9.2f}{cell.p99_ms:9.2f}{cpu}{cell.client_cpu_share:6.2f}"
                  f"{batch_text}"
                  f"{_ratio(cell.requests_per_second, cells, 'echo', concurrency)}"
                  f"{_ratio(cell.requests_per_second, cells, 'naive', concurrency)}{noisy}")
        if concurrency in result.limit:
            size, rate = result.limit[concurrency]
            print(f"{concurrency:4d}  {LIMIT:20s}{rate:9.0f}{'rows/s, batch of':>40s}{size:3d}"
                  f"{_ratio(rate, cells, 'echo', concurrency)}"
                  f"{_ratio(rate, cells, 'naive', concurrency)}")
    noisy = sum(args.max_other < (cell.other_cpu_share or 0) for cell in cells.values())
    print(f"  {result.retries} noisy windows measured again; {noisy} cells never had a quiet "
          f"window" + (f" (*: the rest of the machine used more than {args.max_other} cores)"
                       if noisy else ""))


def target_outcomes(results: Sequence[Any]) -> list[tuple[str, str, float, float | None]]:
    """(workload, baseline, target, measured ratio or None) for each target that ran."""
    by_name = {result.workload.name: result for result in results}
    outcomes = []
    for name, baseline, target in TARGETS:
        result = by_name.get(name)
        if result is None:
            continue
        mine = result.cells.get((BATCHED, TARGET_N))
        theirs = result.cells.get((baseline, TARGET_N))
        ratio = (mine.requests_per_second / theirs.requests_per_second
                 if mine and theirs and theirs.requests_per_second else None)
        outcomes.append((name, baseline, target, ratio))
    return outcomes


def print_targets(results: Sequence[Any], args: argparse.Namespace) -> None:
    print(f"\nTargets at N={TARGET_N} (req/s of {BATCHED} over the baseline's, same run):")
    for name, baseline, target, ratio in target_outcomes(results):
        if ratio is None:
            print(f"  {name}: {BATCHED} / {baseline}: not measured")
            continue
        verdict = "PASS" if ratio >= target else "MISS"
        print(f"  {name}: {BATCHED} / {baseline} = {ratio:.2f}x (target >= {target}x): "
              f"{verdict} ({ratio / target:.2f} of the target)")


def plot(results: Sequence[Any], args: argparse.Namespace, path: str) -> None:
    """Throughput (top) and p99 latency (bottom) against N, one column per model, log-x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = len(results)
    figure, axes = plt.subplots(2, columns, figsize=(6.2 * columns, 8.2), squeeze=False,
                                sharex=True)
    levels = args.concurrency
    for column, result in enumerate(results):
        top, bottom = axes[0][column], axes[1][column]
        for label in result.labels:
            points = [(n, result.cells[label, n]) for n in levels if (label, n) in result.cells]
            colour, marker = _STYLES.get(label, (None, "x"))
            style = {"color": colour, "marker": marker, "label": label, "linewidth": 1.8,
                         "markersize": 5}
            if label not in _STYLES:
                style.update(linestyle=":", linewidth=1.2)
            top.plot([n for n, _ in points], [c.requests_per_second for _, c in points],
                     **style)
            bottom.plot([n for n, _ in points], [c.p99_ms for _, c in points], **style)
        if result.limit:
            limit_levels = [n for n in levels if n in result.limit]
            top.plot(limit_levels, [result.limit[n][1] for n in limit_levels], color="black",
                     linestyle="--", linewidth=1.2, label=f"{LIMIT} (rows/s, in process)")
        top.set_title(f"{result.workload.name}: {result.workload.description}", fontsize=9.5)
        top.set_ylabel("throughput (requests/s; log)")
        bottom.set_ylabel("p99 latency (ms; log)")
        bottom.set_xlabel("concurrent requests in flight (N; log)")
        for axis in (top, bottom):
            axis.set_xscale("log", base=2)
            axis.set_yscale("log")
            axis.set_xticks(levels, [str(n) for n in levels])
            axis.grid(True, which="major", alpha=0.35)
            axis.grid(True, which="minor", alpha=0.12)
        if TARGET_N in levels:
            for axis in (top, bottom):
                axis.axvline(TARGET_N, color="tab:orange", alpha=0.3, linewidth=6)
        top.legend(fontsize=8, loc="best")
    figure.suptitle(f"pyserving batching throughput, {os.cpu_count()}-core machine, "
                    f"{datetime.date.today():%Y-%m-%d} (targets at N={TARGET_N}, shaded)",
                    fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
