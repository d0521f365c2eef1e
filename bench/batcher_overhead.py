"""What pyserving's Batcher costs per request in process (no gRPC), against the bare TF call.

    .venv/bin/python bench/batcher_overhead.py [--threads 32] [--seconds S] [--model tiny]

T threads call, back to back, either ``Servable.run`` on one row (direct) or
``Batcher.run`` with the same row under several BatchingParameters; blocks of each are
interleaved over --rounds rounds and each keeps its fastest block. Printed per variant:
calls per second, process CPU per call (all threads), mean rows per TF call, and ratios to
the direct call. The difference is the batcher's own cost: queueing under its lock, the
per-task wake-up, concatenating and slicing.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DEFAULT_VARIANTS = ("batch_timeout_micros=0", "batch_timeout_micros=1000",
                    "batch_timeout_micros=0,num_batch_threads=2")


@dataclass(frozen=True)
class Block:
    calls_per_second: float
    cpu_us_per_call: float


def run_block(call: Callable[[], object], threads: int, seconds: float) -> Block:
    deadline = time.perf_counter() + seconds
    counts = [0] * threads

    def loop(index: int) -> None:
        calls = 0
        while time.perf_counter() < deadline:
            call()
            calls += 1
        counts[index] = calls

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    cpu, started = time.process_time(), time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    calls = sum(counts)
    return Block(calls / elapsed, cpu / calls * 1e6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=32, help="calling threads")
    parser.add_argument("--seconds", type=float, default=1.0, help="per block")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="tiny", choices=("tiny", "mlp"))
    parser.add_argument("--inter-op", type=int, default=-1,
                        help="--tensorflow_inter_op_parallelism of the session")
    parser.add_argument("--variant", action="append", default=[],
                        help="BatchingParameters as k=v,... (max_batch_size defaults to 32)")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)

    import workloads

    from pyserving.server.batching.batcher import Batcher
    from pyserving.server.batching.config import parse_batching_parameters

    workload = workloads.prepare(args.model, Path(tempfile.mkdtemp(prefix="batcher-bench-")))
    model = workloads.InProcessModel(workload, args.inter_op)
    variants = args.variant or list(DEFAULT_VARIANTS)
    batchers, batch_counts = {}, {}
    for text in variants:
        settings = dict(item.split("=") for item in text.split(","))
        settings.setdefault("max_batch_size", "32")
        settings.setdefault("max_enqueued_batches", "1000")
        options = parse_batching_parameters(
            "".join(f"{key} {{ value: {value} }}\n" for key, value in settings.items()), text)
        counts = batch_counts[text] = [0, 0]

        def observe(_model: str, size: int, _padded: int, _waits: list[float],
                    counts: list[int] = counts) -> None:
            counts[0] += 1
            counts[1] += size

        # No transport counts these callers in, so only TF Serving's wait batches them.
        batchers[text] = Batcher(options, [observe], wait_for_full_batch=True)
    try:
        with model.servable() as servable:
            signature = servable.signatures["serving_default"]
            feeds = [(signature.inputs["x"].name, workload.row)]
            fetches = [signature.outputs["y"].name]
            calls = {"direct Servable.run": lambda: servable.run(feeds, fetches)}
            for text, batcher in batchers.items():
                calls[f"Batcher.run [{text}]"] = (
                    lambda b=batcher: b.run(servable, signature, feeds, fetches))
            for call in calls.values():
                call()
            best: dict[str, Block] = {}
            for _ in range(args.rounds):
                for label, call in calls.items():
                    block = run_block(call, args.threads, args.seconds)
                    if label not in best or block.calls_per_second > best[label].calls_per_second:
                        best[label] = block
    finally:
        for batcher in batchers.values():
            batcher.stop()
        model.stop()
    print(f"{args.model}, {args.threads} threads, fastest of {args.rounds} blocks x "
          f"{args.seconds:.1f} s, --tensorflow_inter_op_parallelism={args.inter_op}")
    print(f"{'':58s}{'calls/s':>9s}{'CPU us':>8s}{'batch':>7s}{'rate':>7s}{'CPU':>7s}"
          f"{'+CPU us':>9s}")
    direct = best["direct Servable.run"]
    for label, block in best.items():
        text = label.partition("[")[2].rstrip("]")
        counts = batch_counts.get(text)
        batch = f"{counts[1] / counts[0]:7.1f}" if counts and counts[0] else f"{'1.0':>7s}"
        print(f"{label:58s}{block.calls_per_second:9.0f}{block.cpu_us_per_call:8.1f}{batch}"
              f"{block.calls_per_second / direct.calls_per_second:7.2f}"
              f"{block.cpu_us_per_call / direct.cpu_us_per_call:7.2f}"
              f"{block.cpu_us_per_call - direct.cpu_us_per_call:+9.1f}")
    print("batch: mean rows per TF call over all rounds; rate, CPU: over the direct call's")


if __name__ == "__main__":
    main()
