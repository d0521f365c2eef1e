"""Fixtures: TF Serving's test models (built before the first test that is not a unit test, or
TF Serving's own files with PYSERVING_TESTDATA) copied to temp dirs, and real servers on free
ports. This folder is on sys.path, so every test module imports the support modules here
(``from support import wait_until``), wherever it lives under tests/."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from support import TESTDATA, TESTDATA_OVERRIDE, copy_testdata

UNIT = Path(__file__).resolve().parent / "unit"


def pytest_collection_finish(session: pytest.Session) -> None:
    """Export the test models once per run, before the first test, unless every collected
    test is a unit test (tests/unit needs no model and no TensorFlow)."""
    if TESTDATA_OVERRIDE or all(UNIT in Path(item.path).parents for item in session.items):
        return
    export = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("testdata_models.py")), str(TESTDATA)],
        capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if export.returncode:
        raise pytest.UsageError(f"exporting the test models failed:\n{export.stderr}")


def pytest_sessionfinish(session: pytest.Session) -> None:
    if not TESTDATA_OVERRIDE:
        shutil.rmtree(TESTDATA, ignore_errors=True)


@pytest.fixture
def testdata_model(tmp_path: Path) -> Callable[..., str]:
    """Copy a model folder of TF Serving's testdata into a temp dir; returns its base path."""

    def copy(name: str, as_name: str | None = None) -> str:
        source = TESTDATA / name
        if not source.is_dir():
            pytest.fail(f"no test model {name} in {TESTDATA}")
        return str(copy_testdata(name, tmp_path / "models" / (as_name or name)))

    return copy


@pytest.fixture
def serve() -> Iterator[Callable[..., object]]:
    """Start in-process ModelServers on free loopback ports; all are stopped after the test."""
    from pyserving.server import ModelServer, ServerOptions

    servers = []

    def start(**options: object) -> ModelServer:
        options.setdefault("port", 0)
        server = ModelServer(ServerOptions(**options), host="127.0.0.1").start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(grace=None)


@pytest.fixture
def channel_to() -> Iterator[Callable[[str], grpc.Channel]]:
    """Open channels to a target; all are closed after the test."""
    channels = []

    def open_channel(target: str) -> grpc.Channel:
        channel = grpc.insecure_channel(target)
        channels.append(channel)
        return channel

    yield open_channel
    for channel in channels:
        channel.close()


@pytest.fixture(scope="module")
def channel_for_base_path() -> Iterator[Callable[[str], grpc.Channel]]:
    """A channel to a server of the model at a base path, served as "default"; each server is
    started once per test module and stopped after it."""
    from pyserving.server import ModelServer, ServerOptions

    servers: dict[str, ModelServer] = {}
    channels: dict[str, grpc.Channel] = {}

    def channel(base_path: str) -> grpc.Channel:
        if base_path not in servers:
            options = ServerOptions(port=0, model_base_path=base_path)
            servers[base_path] = ModelServer(options, host="127.0.0.1").start()
            channels[base_path] = grpc.insecure_channel(servers[base_path].grpc_target)
        return channels[base_path]

    yield channel
    for open_channel in channels.values():
        open_channel.close()
    for server in servers.values():
        server.stop(grace=None)


@pytest.fixture(scope="module")
def channel_for_testdata(tmp_path_factory: pytest.TempPathFactory,
                         channel_for_base_path: Callable[[str], grpc.Channel]
                         ) -> Callable[[str], grpc.Channel]:
    """A channel to a server of one TF Serving testdata model (copied once per module)."""
    root = tmp_path_factory.mktemp("testdata")

    def channel(name: str) -> grpc.Channel:
        target = root / name
        if not target.exists():
            copy_testdata(name, target)
        return channel_for_base_path(str(target))

    return channel
