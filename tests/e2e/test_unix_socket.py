"""--grpc_socket_path: the gRPC API on a Unix domain socket that only its owner may connect to."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from pyserving.client import PredictionClient
from pyserving.client.apis import predict_pb2, prediction_service_pb2_grpc, types_pb2
from pyserving.client.results import VersionStatus

MODEL = "saved_model_half_plus_two_cpu"
SYSTEM_PYTHON = "/usr/bin/python3"  # one another user may run (the venv's may sit in /root)
NOBODY = 65534
# Run as another user: 13 (EACCES) when connecting is refused, 0 when it is allowed.
CONNECT_AS_ANOTHER_USER = """
import socket, sys
client = socket.socket(socket.AF_UNIX)
try:
    client.connect(sys.argv[1])
except PermissionError:
    sys.exit(13)
"""


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short directory (socket paths are limited to ~100 bytes) others may traverse, so
    only the socket's own mode decides who connects."""
    folder = Path(tempfile.mkdtemp(prefix="pyserving-uds-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def socket_server(serve: Callable, testdata_model: Callable[..., str],
                  socket_dir: Path) -> Callable[..., Path]:
    """Start half_plus_two on a Unix socket only (--port=0); returns the socket's path."""

    def start(**options: object) -> Path:
        path = socket_dir / "s.sock"
        serve(port=0, grpc_socket_path=str(path), model_base_path=testdata_model(MODEL),
              **options)
        return path

    return start


def predict_over(path: Path) -> list[float]:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "default"
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].tensor_shape.dim.add().size = 2
    request.inputs["x"].float_val.extend([2.0, 4.0])
    with grpc.insecure_channel(f"unix:{path}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        return list(stub.Predict(request, timeout=10).outputs["y"].float_val)


def mode_of(path: Path) -> int:
    info = path.stat()
    assert stat.S_ISSOCK(info.st_mode)
    return stat.S_IMODE(info.st_mode)


@pytest.mark.parametrize("enable_batching", [False, True], ids=["threads", "batching"])
def test_the_socket_is_owner_only_and_serves_the_model(socket_server: Callable,
                                                       enable_batching: bool):
    path = socket_server(enable_batching=enable_batching)
    assert mode_of(path) == 0o600
    assert predict_over(path) == [3.0, 4.0]
    with PredictionClient(f"unix:{path}", timeout=10, retries=0) as client:
        assert client.status("default") == [VersionStatus(123, "AVAILABLE", "OK", "")]
        assert client.predict("default", {"x": [6.0]})["y"].tolist() == [5.0]


def test_owner_only_whatever_the_umask_and_the_umask_is_left_as_it_was(
        socket_server: Callable):
    permissive = 0o000
    previous = os.umask(permissive)
    try:
        path = socket_server()
        assert os.umask(permissive) == permissive
    finally:
        os.umask(previous)
    assert mode_of(path) == 0o600


@pytest.mark.skipif(os.geteuid() != 0 or not os.access(SYSTEM_PYTHON, os.X_OK),
                    reason="needs root to run a client as another user")
def test_another_user_cannot_connect(socket_server: Callable):
    path = socket_server()

    def connect_as_nobody() -> int:
        return subprocess.run([SYSTEM_PYTHON, "-I", "-c", CONNECT_AS_ANOTHER_USER, str(path)],
                              user=NOBODY, group=NOBODY, timeout=30).returncode

    assert connect_as_nobody() == 13
    path.chmod(0o666)  # the control: the socket's mode was the only thing in the way
    assert connect_as_nobody() == 0
