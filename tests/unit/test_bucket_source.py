"""The bucket source keeps its locks and files to itself (issue #24), with fakes: a hanging
bucket listing blocks no config change and no other model's poll, crashed servers' cache
folders are reclaimed, a version that failed mid-upload is retried once its files change, and
a bucket-hosted config file is re-read through one client. The end-to-end cases against a real
S3 protocol server are in test_remote_storage.py."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fake_servable import FakeLoader
from pyserving.server import config as model_config
from pyserving.server.config import ModelConfig, VersionDirectory
from pyserving.server.configurator import ModelConfigurator
from pyserving.server.errors import ServingError, not_found
from pyserving.server.manager import LoadPolicy, ModelManager, VersionState
from pyserving.server.remote_storage import (
    CACHE_PREFIX,
    OWNER_LOCK,
    VersionCache,
    reclaim_abandoned,
)
from pyserving.server.source import FileSystemSource

WAIT = 10.0


def settles(condition: Callable[[], Any], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


class Buckets:
    """``version_directories`` of a RemoteStorage: s3://hang/* waits for ``release``."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.hanging = threading.Event()
        self.versions: dict[str, list[int]] = {}

    def version_directories(self, base: str) -> list[tuple[int, str]]:
        if base.startswith("s3://hang/"):
            self.hanging.set()
            assert self.release.wait(WAIT)
        return [(v, f"{base}/{v}") for v in self.versions.get(base, [])]


def test_a_hanging_bucket_blocks_no_reload_and_no_other_models_poll(tmp_path: Path):
    buckets = Buckets()
    buckets.versions["s3://ok/m"] = [1]
    local = tmp_path / "local"
    (local / "1").mkdir(parents=True)
    source = FileSystemSource(poll_seconds=0.01, remote=buckets)  # type: ignore[arg-type]
    reports: list[tuple[str, list[int]]] = []
    source.set_aspired_versions_callback(
        lambda name, versions: reports.append((name, [v.version for v in versions])))
    hang = ModelConfig(name="hang", base_path="s3://hang/m")
    ok = ModelConfig(name="ok", base_path="s3://ok/m")
    near = ModelConfig(name="near", base_path=str(local))
    source.set_models([hang, ok, near])
    source.start()
    try:
        assert buckets.hanging.wait(WAIT)
        # What ReloadConfig does (set_models) while the listing hangs: at once.
        changed = threading.Thread(target=source.set_models, args=([hang, ok, near],))
        changed.start()
        changed.join(2.0)
        assert not changed.is_alive(), "set_models waited for a bucket listing"
        # The other models' polls go on: a version uploaded now is reported.
        buckets.versions["s3://ok/m"] = [1, 2]
        (local / "2").mkdir()
        assert settles(lambda: ("ok", [2]) in reports and ("near", [2]) in reports)
        assert not any(name == "hang" for name, _ in reports)
        began = time.monotonic()
        source.stop()  # does not wait for the hanging listing
        assert time.monotonic() - began < 2.0
    finally:
        buckets.release.set()
        source.stop()


def test_the_cache_reclaims_the_folders_of_dead_servers_only(tmp_path: Path):
    dead = tmp_path / f"{CACHE_PREFIX}dead"
    (dead / "model" / "1").mkdir(parents=True)
    (dead / OWNER_LOCK).touch()  # its process died: nothing holds the lock
    alive = tmp_path / f"{CACHE_PREFIX}alive"
    (alive / "model" / "1").mkdir(parents=True)
    holder = os.open(alive / OWNER_LOCK, os.O_CREAT | os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)  # a live server (another open file: another owner)
    unknown = tmp_path / f"{CACHE_PREFIX}without-lock"
    unknown.mkdir()
    try:
        cache = VersionCache(None, str(tmp_path))  # type: ignore[arg-type]
        mine = Path(cache.path("model", 1)).parent.parent
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            [alive.name, unknown.name, mine.name])
        # This cache's own folder is held: another server starting now keeps it.
        assert reclaim_abandoned(str(tmp_path)) == []
        cache.close()
        assert not mine.exists()
    finally:
        os.close(holder)
    assert reclaim_abandoned(str(tmp_path)) == [str(alive)]  # its owner is gone now


def test_a_killed_servers_folder_is_reclaimed_by_the_next_start(tmp_path: Path):
    """A real process takes the lock and is SIGKILLed: the kernel drops its lock."""
    import subprocess
    import sys

    script = ("import sys; from pyserving.server.remote_storage import VersionCache; "
              "c = VersionCache(None, sys.argv[1]); print(c.path('m', 1), flush=True); "
              "sys.stdin.read()")
    child = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    folder = Path(child.stdout.readline().strip()).parent.parent
    assert folder.exists() and reclaim_abandoned(str(tmp_path)) == []  # alive: kept
    child.kill()
    child.wait(WAIT)
    assert reclaim_abandoned(str(tmp_path)) == [str(folder)]


class UploadingBucket:
    """``listing``/``download`` of a RemoteStorage for one version being uploaded."""

    def __init__(self) -> None:
        self.files: tuple = (("variables/variables.index", 4, "a"),)

    def listing(self, url: str) -> tuple:
        return self.files

    def download(self, url: str, names: list[str], target: str) -> None:
        for name in names:
            Path(target, name).parent.mkdir(parents=True, exist_ok=True)
            Path(target, name).write_bytes(b"x" * 4)


def test_a_version_that_failed_mid_upload_is_retried_when_its_files_change(tmp_path: Path):
    bucket = UploadingBucket()
    cache = VersionCache(bucket, str(tmp_path))  # type: ignore[arg-type]
    url = "s3://bucket/m/2"
    assert not cache.changed_since_failure(url)  # it never failed
    with pytest.raises(ServingError, match="does not appear to contain a SavedModel"):
        cache.fetch("m", 2, url)
    cache.note_failure(url)
    assert not cache.changed_since_failure(url)  # the same files: no point trying again
    bucket.files = (*bucket.files, ("saved_model.pb", 4, "b"))
    assert cache.changed_since_failure(url)
    assert not cache.changed_since_failure(url)  # once per change
    assert Path(cache.fetch("m", 2, url), "saved_model.pb").exists()
    cache.close()


def test_a_failed_version_the_manager_retries_loads_again():
    loader = FakeLoader()
    loader.failing[("m", 1)] = not_found("no saved_model.pb yet")
    manager = ModelManager(loader, LoadPolicy(max_retries=0))
    try:
        aspired = [VersionDirectory(1, "s3://bucket/m/1")]
        manager.set_aspired_versions("m", aspired)
        manager.wait_until_settled(["m"], timeout=WAIT)
        manager.set_aspired_versions("m", aspired)  # the next poll: still failed, not retried
        manager.wait_until_settled(["m"], timeout=WAIT)
        assert [(s.state, s.error is not None) for s in manager.version_statuses("m")] == [
            (VersionState.END, True)]
        del loader.failing[("m", 1)]
        manager.retry_failed("m", 1)  # its files changed
        manager.set_aspired_versions("m", aspired)
        assert settles(lambda: [s.state for s in manager.version_statuses("m")] == [
            VersionState.AVAILABLE])
    finally:
        manager.close(drain_seconds=0)


def test_a_bucket_config_file_is_reread_through_one_client(monkeypatch: pytest.MonkeyPatch):
    clients: list[Any] = []

    def read(path: str, remote: Any = None) -> Any:
        clients.append(remote)
        raise ServingError(not_found("x").code, "not there yet")  # logged; polling goes on

    monkeypatch.setattr(model_config, "read_model_config_file", read)
    configurator = ModelConfigurator(None, None)  # type: ignore[arg-type]
    configurator.watch_file("s3://bucket/models.config", 0.01)
    try:
        assert settles(lambda: len(clients) >= 3)
    finally:
        configurator.stop()
    assert clients[0] is not None and all(client is clients[0] for client in clients)
