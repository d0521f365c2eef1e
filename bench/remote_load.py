"""Time from upload to AVAILABLE of a ~50 MB model version: from a local S3 server against the
same version on local disk, measured in the same run (issue 17's goal: S3 <= 1.5x local).

    .venv/bin/python bench/remote_load.py [--megabytes 50] [--rounds 3]

moto's standalone S3 server runs in its own process on loopback; one ModelServer polls an
s3:// base path, another a local one (--file_system_poll_wait_seconds=1, the smallest TF
Serving accepts). Each round publishes a new version to both (a local copy is renamed into
place; S3 gets a boto3 upload) and times, from the moment the upload finished, until the new
version is AVAILABLE. That includes up to 1 s of waiting for the next poll, so each round also
reports the copy into the cache alone (VersionCache.fetch) and the TensorFlow load alone.

A poll can catch an upload mid-way: that version's copy or load fails and, as in TF Serving,
is retried after --load_retry_interval_micros (60 s by default). Such rounds are marked
"retried"; the medians are over all rounds.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

POLL_SECONDS = 1
MODEL = "dense"


def build_model(target: str, megabytes: int) -> None:
    from memory_cycles import export_dense  # bench/ is the script's directory

    export_dense(target, megabytes)


def start_s3_server() -> tuple[subprocess.Popen, int]:
    from support import free_port  # tests/support.py

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                                str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1).close()
            return process, port
        except OSError as error:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise SystemExit("moto's S3 server did not start") from error
            time.sleep(0.1)


def upload(client, bucket: str, local: str, prefix: str) -> None:
    for root, _, files in os.walk(local):
        for name in files:
            path = os.path.join(root, name)
            key = f"{prefix}/{os.path.relpath(path, local).replace(os.sep, '/')}"
            client.upload_file(path, bucket, key)


class FailedAttempts(logging.Handler):
    """Counts the manager's "failed (attempt i of n)" log lines."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += "failed (attempt" in record.getMessage()


def wait_available(server, version: int, timeout: float = 120.0) -> float:
    from pyserving.server.manager import VersionState

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            states = {s.version: s.state for s in server.manager.version_statuses(MODEL)}
        except Exception:
            states = {}
        if states.get(version) == VersionState.AVAILABLE:
            return time.monotonic()
        if states.get(version) == VersionState.END:
            raise SystemExit(f"version {version} failed to load")
        time.sleep(0.005)
    raise SystemExit(f"version {version} not AVAILABLE after {timeout} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

    failures = FailedAttempts()
    logging.getLogger("pyserving.server.manager").addHandler(failures)
    logging.getLogger("pyserving.server.manager").propagate = False
    work = tempfile.mkdtemp(prefix="pyserving-remote-load-")
    process, port = start_s3_server()
    servers = []
    try:
        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                          AWS_REGION="us-east-1", S3_ENDPOINT=f"127.0.0.1:{port}",
                          S3_USE_HTTPS="0")
        import boto3

        from pyserving.server import ModelServer, ServerOptions
        from pyserving.server.device import session_config
        from pyserving.server.remote_storage import RemoteStorage, VersionCache
        from pyserving.server.saved_model import load_servable

        exported = os.path.join(work, "export")
        build_model(exported, args.megabytes)
        size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(exported)
                   for f in fs)
        client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}")
        client.create_bucket(Bucket="bench")
        local_base = os.path.join(work, "local", MODEL)
        os.makedirs(local_base)
        # Version 1 everywhere first: each server starts up serving it.
        shutil.copytree(exported, os.path.join(local_base, "1"))
        upload(client, "bench", exported, f"{MODEL}/1")
        common = {"port": 0, "model_name": MODEL, "file_system_poll_wait_seconds": POLL_SECONDS,
                      "enable_model_warmup": False}
        local = ModelServer(ServerOptions(model_base_path=local_base, **common),
                            host="127.0.0.1").start()
        servers.append(local)
        remote = ModelServer(ServerOptions(model_base_path=f"s3://bench/{MODEL}",
                                           model_cache_dir=os.path.join(work, "cache"),
                                           **common), host="127.0.0.1").start()
        servers.append(remote)
        cache = VersionCache(RemoteStorage(), os.path.join(work, "bench-cache"))
        config = session_config(ServerOptions())

        rows = []
        for round_ in range(args.rounds):
            version = round_ + 2
            staged = os.path.join(work, "local", f"incoming-{version}")
            shutil.copytree(exported, staged)
            os.rename(staged, os.path.join(local_base, str(version)))
            published = time.monotonic()
            local_seconds = wait_available(local, version) - published
            failed_before = failures.count
            started = time.monotonic()
            upload(client, "bench", exported, f"{MODEL}/{version}")
            uploaded = time.monotonic()
            remote_seconds = wait_available(remote, version) - uploaded
            # The two parts of a remote load, alone.
            started_copy = time.monotonic()
            copied = cache.fetch(MODEL, version, f"s3://bench/{MODEL}/{version}")
            copy_seconds = time.monotonic() - started_copy
            started_load = time.monotonic()
            load_servable(MODEL, version, copied, ["serve"], config).retire()
            load_seconds = time.monotonic() - started_load
            cache.evict(MODEL, version)
            rows.append((local_seconds, remote_seconds, uploaded - started, copy_seconds,
                         load_seconds, failures.count > failed_before))
        cache.close()
    finally:
        for server in servers:
            server.stop(grace=0)
        process.terminate()
        process.wait()
        shutil.rmtree(work, ignore_errors=True)

    print(f"model: {size / 2**20:.1f} MB; --file_system_poll_wait_seconds={POLL_SECONDS}; "
          f"moto S3 server in its own process on loopback")
    print(f"{'round':>5} {'local s':>8} {'s3 s':>8} {'ratio':>6} {'upload s':>9} "
          f"{'copy s':>7} {'TF load s':>9}")
    for index, (local_s, remote_s, upload_s, copy_s, load_s, retried) in enumerate(rows, 1):
        print(f"{index:>5} {local_s:>8.2f} {remote_s:>8.2f} {remote_s / local_s:>6.2f} "
              f"{upload_s:>9.2f} {copy_s:>7.2f} {load_s:>9.2f}"
              f"{'  retried: a poll caught the upload' if retried else ''}")
    local_median = statistics.median(r[0] for r in rows)
    remote_median = statistics.median(r[1] for r in rows)
    copy_median = statistics.median(r[3] for r in rows)
    load_median = statistics.median(r[4] for r in rows)
    print(f"median upload->AVAILABLE: local {local_median:.2f} s, s3 {remote_median:.2f} s, "
          f"ratio {remote_median / local_median:.2f}x (goal <= 1.5x)")
    print(f"without the poll wait: copy + TF load {copy_median + load_median:.2f} s against "
          f"TF load {load_median:.2f} s, ratio {(copy_median + load_median) / load_median:.2f}x; "
          f"copy {size / 2**20 / copy_median:.0f} MB/s")


if __name__ == "__main__":
    main()
