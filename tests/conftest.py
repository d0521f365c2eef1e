"""Fixtures: TF Serving's test models copied to temp dirs, and real servers on free ports."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path
from typing import Callable, Iterator

import grpc
import pytest

REPO = Path(__file__).resolve().parent.parent
TESTDATA = Path(os.environ.get("PYSERVING_TESTDATA",
                               REPO.parent / "shared" / "testdata" / "tf_serving"))


def _make_writable(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)


@pytest.fixture
def testdata_model(tmp_path: Path) -> Callable[..., str]:
    """Copy a model folder of TF Serving's testdata into a temp dir; returns its base path."""

    def copy(name: str, as_name: str | None = None) -> str:
        source = TESTDATA / name
        if not source.is_dir():
            pytest.fail(f"TF Serving testdata not found at {source} (set PYSERVING_TESTDATA)")
        target = tmp_path / "models" / (as_name or name)
        shutil.copytree(source, target)
        _make_writable(target)
        return str(target)

    return copy


@pytest.fixture
def serve() -> Iterator[Callable[..., "object"]]:
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
