"""Soak: the CLI server under a mixed load while versions are hot-swapped, then its threads,
file descriptors and memory are compared with the warmed-up baseline.

Two models (half_plus_two, batched through its versions' batching_params.pbtxt, and
half_plus_three), a model_config_file with labels, and a REST port. Client threads loop over
Predict (latest, by label, by version), Classify, Regress, GetModelMetadata, GetModelStatus and
REST predict; a swapper publishes a new half_plus_two version, moves the labels onto it with
HandleReloadConfigRequest, and removes the oldest version. No error is expected: labels only
name AVAILABLE versions and a version is removed only after no label names it.

PYSERVING_SOAK_SECONDS sets the load's duration (default 45).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from pyserving.client import PredictionClient, PredictionError
from support import TESTDATA, free_port, stop_process, wait_for_log, wait_until

pytestmark = pytest.mark.slow  # ~1.5 min: deselect with -m "not slow"
SECONDS = float(os.environ.get("PYSERVING_SOAK_SECONDS", "45"))
WARMUP_SECONDS = min(12.0, SECONDS / 4)
CLIENTS = 4
THREAD_SLACK = 4  # a pool thread started late (load, unload, gRPC) is not a leak
FD_SLACK = 8
RSS_GROWTH = 0.15  # after warm-up
HALF = TESTDATA / "saved_model_half_plus_two_2_versions" / "00000124"
THREE = TESTDATA / "saved_model_half_plus_three" / "00000123"
BATCHING = "max_batch_size { value: 8 }\nbatch_timeout_micros { value: 2000 }\n"
RUNNING = re.compile(r"Running gRPC ModelServer at 0\.0\.0\.0:(\d+) \.\.\.")


def copy_tree(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    for path in [target, *target.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)
    return target


def publish_half(base: Path, version: int) -> None:
    """A half_plus_two version with its batching parameters, published atomically."""
    staged = copy_tree(HALF, base / f"incoming-{version}")
    (staged / "batching_params.pbtxt").write_text(BATCHING)
    staged.rename(base / str(version))


def config_text(half: Path, three: Path, stable: int, canary: int) -> str:
    return (f'model_config_list {{\n'
            f'  config {{ name: "half" base_path: "{half}" model_platform: "tensorflow"\n'
            f'    model_version_policy {{ all {{}} }}\n'
            f'    version_labels {{ key: "stable" value: {stable} }}\n'
            f'    version_labels {{ key: "canary" value: {canary} }} }}\n'
            f'  config {{ name: "three" base_path: "{three}" model_platform: "tensorflow"\n'
            f'    model_version_policy {{ all {{}} }} }}\n}}\n')


@dataclass
class Usage:
    threads: int
    fds: int
    rss_kb: int

    @classmethod
    def of(cls, pid: int) -> Usage:
        status = Path(f"/proc/{pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        return cls(threads=int(fields["Threads"]), fds=len(os.listdir(f"/proc/{pid}/fd")),
                   rss_kb=int(fields["VmRSS"].split()[0]))


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    def record(self, kind: str, call: Callable[[], None]) -> None:
        try:
            call()
        except (PredictionError, OSError, AssertionError) as error:
            with self.lock:
                self.errors.append(f"{kind}: {type(error).__name__}: {error}")
        with self.lock:
            self.requests[kind] += 1


@pytest.fixture
def soak_server(tmp_path: Path):
    half, three = tmp_path / "half", tmp_path / "three"
    half.mkdir()
    for version in (1, 2):
        publish_half(half, version)
    copy_tree(THREE, three / "1")
    copy_tree(THREE, three / "2")
    config = tmp_path / "models.config"
    config.write_text(config_text(half, three, stable=1, canary=2))
    rest_port = free_port()
    log = tmp_path / "server.log"
    with open(log, "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "pyserving.server", "--port=0",
             f"--rest_api_port={rest_port}", f"--model_config_file={config}",
             "--file_system_poll_wait_seconds=1", "--enable_batching",
             "--enable_per_model_batching_parameters", "--grpc_max_threads=16",
             "--allow_version_labels_for_unavailable_models"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        match = wait_for_log(lambda: log.read_text(errors="replace"), RUNNING, process, 120)
        yield process, f"127.0.0.1:{match.group(1)}", rest_port, half, three, log
    finally:
        stop_process(process)


class Swapper(threading.Thread):
    """Publishes version N+1, labels it canary (stable: N), removes version N-1; repeats."""

    def __init__(self, target: str, half: Path, three: Path, stop: threading.Event) -> None:
        super().__init__(name="swapper", daemon=True)
        self.client = PredictionClient(target, timeout=30, retries=0)
        self.half, self.three, self.stop = half, three, stop
        self.versions = [1, 2]
        self.swaps = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.swap()
        except BaseException as error:
            self.error = error
        finally:
            self.client.close()

    def _wait_for(self, version: int, state: str) -> None:
        wait_until(lambda: {s.version: s.state for s in self.client.status("half")}.get(version)
                   == state, f"version {version} to be {state}", 60, interval=0.05)

    def swap(self) -> None:
        oldest, newest = self.versions
        new = newest + 1
        publish_half(self.half, new)
        self._wait_for(new, "AVAILABLE")
        self.client.reload_config(config_text(self.half, self.three, stable=newest, canary=new))
        shutil.rmtree(self.half / str(oldest))
        self._wait_for(oldest, "END")
        self.versions = [newest, new]
        self.swaps += 1


def client_loop(target: str, rest_port: int, stop: threading.Event, tally: Tally) -> None:
    x = np.array([[1.0], [2.0]], np.float32)
    rest = urllib.request.Request(
        f"http://127.0.0.1:{rest_port}/v1/models/half/labels/canary:predict",
        data=b'{"instances": [[1.0], [2.0]]}', method="POST")

    def rest_predict() -> None:
        with urllib.request.urlopen(rest, timeout=30) as response:
            assert json.loads(response.read()) == {"predictions": [[2.5], [3.0]]}

    with PredictionClient(target, timeout=30, retries=0) as client:
        calls = {
            "predict": lambda: np.testing.assert_array_equal(
                client.predict("half", {"x": x})["y"], [[2.5], [3.0]]),
            "predict_stable": lambda: np.testing.assert_array_equal(
                client.predict("half", {"x": x}, label="stable")["y"], [[2.5], [3.0]]),
            "predict_canary": lambda: np.testing.assert_array_equal(
                client.predict("half", {"x": x}, label="canary")["y"], [[2.5], [3.0]]),
            "predict_three_v1": lambda: np.testing.assert_array_equal(
                client.predict("three", {"x": x}, version=1)["y"], [[3.5], [4.0]]),
            "classify": lambda: np.testing.assert_array_equal(
                client.classify("half", [{"x": 2.0}], signature="classify_x_to_y").scores,
                [[3.0]]),
            "regress": lambda: np.testing.assert_array_equal(
                client.regress("half", [{"x": 2.0}], signature="regress_x_to_y"), [3.0]),
            "metadata": lambda: client.metadata("three").signatures["serving_default"],
            "status": lambda: client.status("half"),
            "rest_predict": rest_predict,
        }
        while not stop.is_set():
            for kind, call in calls.items():
                tally.record(kind, call)


@pytest.mark.timeout(SECONDS + 240)  # start-up, warm-up and shutdown on a busy machine
def test_soak_mixed_load_with_hot_swaps(soak_server) -> None:
    process, target, rest_port, half, three, log = soak_server
    stop, tally = threading.Event(), Tally()
    clients = [threading.Thread(target=client_loop, args=(target, rest_port, stop, tally),
                                name=f"client-{i}", daemon=True) for i in range(CLIENTS)]
    swapper = Swapper(target, half, three, stop)
    started = time.monotonic()
    for thread in [*clients, swapper]:
        thread.start()
    # Warm once a swap went through (every code path ran, every pool started) and at least
    # WARMUP_SECONDS of load passed; then the soak runs its length.
    wait_until(lambda: swapper.swaps >= 1 or swapper.error is not None, "a first swap", 120)
    stop.wait(max(WARMUP_SECONDS - (time.monotonic() - started), 0))
    warm = Usage.of(process.pid)
    warm_requests, warm_swaps = sum(tally.requests.values()), swapper.swaps
    stop.wait(max(SECONDS - (time.monotonic() - started), 0))
    loaded = Usage.of(process.pid)
    stop.set()
    for thread in [*clients, swapper]:
        thread.join(90)
    elapsed = time.monotonic() - started
    # The last unload and idle pool threads end (the bounds are asserted below).
    with contextlib.suppress(AssertionError):
        wait_until(lambda: Usage.of(process.pid).threads <= warm.threads + THREAD_SLACK
                   and Usage.of(process.pid).fds <= warm.fds + FD_SLACK, "idle", 10,
                   interval=0.05)
    final = Usage.of(process.pid)
    total = sum(tally.requests.values())
    print(f"\nsoak: {elapsed:.0f} s, {total} requests ({total / elapsed:.0f}/s), "
          f"{len(tally.errors)} errors, {swapper.swaps} swaps; after warm-up "
          f"({warm_requests} requests, {warm_swaps} swaps): threads {warm.threads}, "
          f"fds {warm.fds}, RSS {warm.rss_kb / 1024:.0f} MB; at the end of the load: "
          f"threads {loaded.threads}, fds {loaded.fds}, RSS {loaded.rss_kb / 1024:.0f} MB; "
          f"idle: threads {final.threads}, fds {final.fds}, "
          f"RSS {final.rss_kb / 1024:.0f} MB ({(final.rss_kb / warm.rss_kb - 1) * 100:+.1f}%); "
          f"per kind {dict(tally.requests)}")
    assert swapper.error is None, swapper.error
    assert tally.errors == [], tally.errors[:10]
    assert process.poll() is None, log.read_text(errors="replace")[-3000:]
    assert swapper.swaps >= max(2, int(SECONDS / 15))
    assert final.threads <= warm.threads + THREAD_SLACK
    assert final.fds <= warm.fds + FD_SLACK
    assert final.rss_kb <= warm.rss_kb * (1 + RSS_GROWTH)
