"""The tables and the conclusion predict_overhead.py prints: ratios within one run."""

from __future__ import annotations

import argparse
import datetime
import platform
from collections.abc import Sequence
from typing import Any

import inprocess

Cells = dict[tuple[str, int], Any]  # (server label, concurrency) -> Cell


def _session_name(inter_op: int) -> str:
    if inter_op == 0:
        return "inter_op=0 (TF pool)"
    if inter_op < 0:
        return f"inter_op={inter_op} (caller thread)"
    return f"inter_op={inter_op}"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def print_header(args: argparse.Namespace, cores: int | None) -> None:
    import grpc
    import tensorflow as tf

    print(f"pyserving Predict overhead, {datetime.datetime.now():%Y-%m-%d %H:%M}")
    print(f"machine: {cores} cores, {cpu_model()}; Python {platform.python_version()}, "
          f"grpcio {grpc.__version__}, TensorFlow {tf.__version__}")
    print(f"model: half_plus_two ({args.model}), request x=[[2.0]] (float_val); "
          f"{args.threads} gRPC threads (pyserving's default) unless [threads=...]")


def print_in_process(report: inprocess.InProcessReport, inter_ops: Sequence[int]) -> None:
    timings = report.timings
    print("\nIn process, no gRPC: microseconds per call (fastest of 10 interleaved blocks;"
          " CPU = all threads of the process)")
    print(f"{'':44s}" + "".join(f"{_session_name(n):>28s}" for n in inter_ops))
    print(f"{'':44s}" + "".join(f"{'wall':>18s}{'CPU':>10s}" for _ in inter_ops))
    for row in (inprocess.TF_CALL, inprocess.TF_SPACED, inprocess.CORE):
        print(f"{row:44s}" + "".join(
            f"{timings[row, n].wall_us:18.1f}{timings[row, n].cpu_us:10.1f}" for n in inter_ops))
    for label, baseline in (("core - TF call", inprocess.TF_CALL),
                            ("core - spaced TF call", inprocess.TF_SPACED)):
        cells = []
        for n in inter_ops:
            core, tf_call = timings[inprocess.CORE, n], timings[baseline, n]
            ratio = _ratio(core.wall_us, tf_call.wall_us)
            cells.append(f"{core.wall_us - tf_call.wall_us:+11.1f} {ratio}"
                         f"{core.cpu_us - tf_call.cpu_us:+10.1f}")
        print(f"{label:44s}" + "".join(cells))
    for row in (inprocess.DECODE, inprocess.ENCODE):
        timing = timings[row, 0]
        print(f"{row:44s}{timing.wall_us:18.1f}{timing.cpu_us:10.1f}   (no TF)")


def _ratio(value: float, baseline: float) -> str:
    return f"({value / baseline:4.2f}x)"


def print_grpc(cells: Cells, lineup: Sequence[Any], args: argparse.Namespace) -> None:
    window = args.seconds / args.rounds
    print(f"\ngRPC Predict over loopback: {args.load_processes} grpc.aio load process(es), "
          f"N requests in flight, best of {args.rounds} rounds x {window:.1f} s per cell")
    print("  srv us: server process CPU per request; load, other: CPU of the load process and "
          "of the rest\n  of the machine, in cores (* = no quiet window); vs echo: req/s over "
          "echo-sync's; vs base:\n  req/s over the baseline's (echo-aio: echo-sync; others: "
          "sync with the same session config)")
    print(f"{'N':>4s}  {'server':32s}{'req/s':>8s}{'p50 ms':>8s}{'p99 ms':>8s}"
          f"{'srv us':>8s}{'load':>6s}{'other':>7s}{'vs echo':>8s}{'vs base':>8s}")
    for concurrency in args.concurrency:
        floor = cells.get(("echo-sync", concurrency))
        for contender in lineup:
            cell = cells[contender.label, concurrency]
            baseline = cells.get((contender.baseline, concurrency))
            print(f"{concurrency:4d}  {contender.label:32s}{cell.requests_per_second:8.0f}"
                  f"{cell.p50_ms:8.2f}{cell.p99_ms:8.2f}{_number(cell.server_cpu_us, 8, 0)}"
                  f"{cell.client_cpu_share:6.2f}{_other(cell, args.max_other)}"
                  f"{_rate_ratio(cell, floor)}{_rate_ratio(cell, baseline)}")


def _number(value: float | None, width: int, digits: int) -> str:
    return f"{value:{width}.{digits}f}" if value is not None else f"{'-':>{width}s}"


def _other(cell: Any, max_other: float) -> str:
    if cell.other_cpu_share is None:
        return f"{'-':>7s}"
    mark = "*" if cell.other_cpu_share > max_other else " "
    return f"{cell.other_cpu_share:6.2f}{mark}"


def _rate_ratio(cell: Any, baseline: Any) -> str:
    if baseline is None:
        return f"{'':>8s}"
    return f"{cell.requests_per_second / baseline.requests_per_second:8.2f}"


def print_conclusion(report: inprocess.InProcessReport, cells: Cells,
                     lineup: Sequence[Any], args: argparse.Namespace) -> None:
    levels = ",".join(str(n) for n in args.concurrency)
    print(f"\nConclusion, at N={levels}: req/s ratio (>1: faster), server CPU per request "
          "ratio (<1: cheaper)")
    for contender in lineup:
        if contender.baseline:
            print(f"  {contender.label} / {contender.baseline}:"
                  f"{_comparison(cells, contender.label, contender.baseline, args)}")
    labels = {contender.label for contender in lineup}
    for contender in lineup:
        if contender.kind == "sync" and "echo-sync" in labels:
            extra = ", ".join(_difference(cells[contender.label, n].server_cpu_us,
                                          cells["echo-sync", n].server_cpu_us)
                              for n in args.concurrency)
            print(f"  {contender.label}: server CPU per Predict minus per echo (us): {extra}")
    for inter_op in args.inter_op:
        timings = report.timings
        core = timings[inprocess.CORE, inter_op]
        tf_call = timings[inprocess.TF_CALL, inter_op]
        spaced = timings[inprocess.TF_SPACED, inter_op]
        print(f"  in process, {_session_name(inter_op)}: core.predict {core.wall_us:.1f} us wall"
              f" = TF call {tf_call.wall_us:.1f} {core.wall_us - tf_call.wall_us:+.1f} us "
              f"{_ratio(core.wall_us, tf_call.wall_us)};\n      CPU {core.cpu_us:.1f} us = "
              f"spaced TF call {spaced.cpu_us:.1f} {core.cpu_us - spaced.cpu_us:+.1f} us "
              f"{_ratio(core.cpu_us, spaced.cpu_us)}")


def _difference(value: float | None, baseline: float | None) -> str:
    return f"{value - baseline:+.0f}" if value and baseline else "-"


def _comparison(cells: Cells, first: str, second: str, args: argparse.Namespace) -> str:
    rates, costs = [], []
    for n in args.concurrency:
        mine, theirs = cells[first, n], cells[second, n]
        rates.append(f"{mine.requests_per_second / theirs.requests_per_second:.2f}")
        costs.append(f"{mine.server_cpu_us / theirs.server_cpu_us:.2f}"
                     if mine.server_cpu_us and theirs.server_cpu_us else "-")
    return f" req/s {', '.join(rates)}; CPU {', '.join(costs)}"
