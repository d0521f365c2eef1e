"""RSS over repeated load/unload cycles of one model version, through the model manager.

    .venv/bin/python bench/memory_cycles.py [--cycles 50] [--megabytes 8]

Builds a SavedModel with ~N MB of weights, then loads and unloads it ``cycles`` times the way
a version swap does (aspired -> AVAILABLE -> not aspired -> END) and prints RSS after each
cycle and the growth after the first cycle.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def export_dense(target: str, megabytes: int) -> None:
    """A SavedModel at ``target`` whose one variable is a square float32 matrix of about
    ``megabytes`` MB; ``serve`` multiplies its input by it."""
    import tensorflow as tf

    class Dense(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            side = int((megabytes * 2**20 / 4) ** 0.5)
            self.w = tf.Variable(np.random.default_rng(0).normal(size=(side, side))
                                 .astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32)])
        def serve(self, x):
            return {"y": tf.matmul(x, self.w[: tf.shape(x)[1], :])}

    module = Dense()
    tf.saved_model.save(module, target, signatures={"serving_default": module.serve})


def build_model(base: str, megabytes: int) -> str:
    path = os.path.join(base, "dense", "1")
    export_dense(path, megabytes)
    return os.path.dirname(path)


def run(cycles: int, megabytes: int) -> tuple[list[float], float]:
    from pyserving.server import ServerOptions
    from pyserving.server.config import VersionDirectory
    from pyserving.server.device import session_config
    from pyserving.server.manager import ModelManager, VersionState
    from pyserving.server.saved_model import load_servable

    with tempfile.TemporaryDirectory() as base:
        model = build_model(base, megabytes)
        version = VersionDirectory(1, os.path.join(model, "1"))
        config = session_config(ServerOptions())
        manager = ModelManager(lambda n, v, p: load_servable(n, v, p, ["serve"], config))
        samples = []
        for _ in range(cycles):
            manager.set_aspired_versions("dense", [version])
            _wait(manager, VersionState.AVAILABLE)
            manager.set_aspired_versions("dense", [])
            _wait(manager, VersionState.END)
            samples.append(rss_mb())
        manager.close()
    growth = (samples[-1] - samples[0]) / samples[0] * 100
    return samples, growth


def _wait(manager, state) -> None:
    deadline = time.monotonic() + 60
    while manager.version_statuses("dense")[0].state != state:
        if time.monotonic() > deadline:
            sys.exit(f"version never reached {state.name}")
        time.sleep(0.005)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=50)
    parser.add_argument("--megabytes", type=int, default=8)
    args = parser.parse_args()
    samples, growth = run(args.cycles, args.megabytes)
    print(f"model weights: {args.megabytes} MB, cycles: {args.cycles}")
    print("RSS after each cycle (MB): " + " ".join(f"{s:.0f}" for s in samples))
    print(f"RSS after cycle 1: {samples[0]:.1f} MB, after cycle {args.cycles}: "
          f"{samples[-1]:.1f} MB, growth after the first cycle: {growth:+.1f}%")


if __name__ == "__main__":
    main()
