"""The base install (``pip install pyserving``: grpcio, protobuf, numpy; no TensorFlow) in a
fresh venv runs the client and ``pyserving-client`` against a live server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import REPO

PIP_TIMEOUT = 600  # a cold pip cache downloads grpcio, protobuf, numpy and setuptools
pytestmark = [pytest.mark.slow,  # a fresh venv and a pip install
              pytest.mark.timeout(PIP_TIMEOUT + 120)]
SOURCES = ("pyproject.toml", "README.md", "client", "server")

CLIENT_SCRIPT = textwrap.dedent("""
    import json, sys
    import importlib.util
    from pyserving.client import PredictionClient, PredictionError

    assert importlib.util.find_spec("tensorflow") is None, "TensorFlow is installed"
    with PredictionClient(sys.argv[1], timeout=20) as client:
        y = client.predict("half_plus_two", {"x": [[1.0], [2.0]]})["y"]
        scores = client.classify("half_plus_two", [{"x": 2.0}],
                                 signature="classify_x_to_y").scores
        status = client.status("half_plus_two")[0]
        metadata = client.metadata("half_plus_two")
        try:
            client.predict("nope", {"x": [1.0]})
        except PredictionError as error:
            failure = str(error)
    print(json.dumps({"y": y.tolist(), "dtype": str(y.dtype), "scores": scores.tolist(),
                      "state": status.state, "version": metadata.version,
                      "signatures": sorted(metadata.signatures), "error": failure,
                      "modules": sorted(m for m in sys.modules if m.startswith("tensorflow"))}))
""")


def _environment() -> dict[str, str]:
    return {key: value for key, value in os.environ.items()
            if key not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A new venv holding ``pip install <repo>`` without extras."""
    root = tmp_path_factory.mktemp("client_only")
    source = root / "src"
    source.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, source / name)
    environment = root / "venv"
    try:
        venv.EnvBuilder(with_pip=True).create(environment)
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"cannot create a venv here: {error}")
    python = environment / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         str(source)], capture_output=True, text=True, timeout=PIP_TIMEOUT, cwd=root,
        env=_environment())
    assert install.returncode == 0, install.stdout + install.stderr
    yield environment


def test_the_base_install_has_no_tensorflow(client_venv: Path):
    listed = subprocess.run([str(client_venv / "bin" / "python"), "-m", "pip", "list",
                             "--format=json", "--disable-pip-version-check"],
                            capture_output=True, text=True, timeout=120, env=_environment())
    installed = {package["name"].lower() for package in json.loads(listed.stdout)}
    assert {"pyserving", "grpcio", "protobuf", "numpy"} <= installed
    assert not {name for name in installed if name.startswith("tensorflow")}


def test_the_client_runs_against_a_live_server(client_venv: Path, serve, testdata_model,
                                               tmp_path: Path):
    server = serve(model_name="half_plus_two",
                   model_base_path=testdata_model("saved_model_half_plus_two_cpu"))
    script = tmp_path / "client.py"
    script.write_text(CLIENT_SCRIPT)
    result = subprocess.run([str(client_venv / "bin" / "python"), str(script),
                             server.grpc_target], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path, env=_environment())
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "y": [[2.5], [3.0]], "dtype": "float32", "scores": [[3.0]], "state": "AVAILABLE",
        "version": 123, "signatures": ["classify_x_to_y", "regress_x2_to_y3",
                                       "regress_x_to_y", "regress_x_to_y2", "serving_default"],
        "error": "NOT_FOUND: Servable not found for request: Latest(nope)", "modules": []}

    command = subprocess.run(
        [str(client_venv / "bin" / "pyserving-client"), "predict", "--target",
         server.grpc_target, "--model", "half_plus_two", "--input", "x=[[4.0]]"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=_environment())
    assert command.returncode == 0, command.stderr
    assert json.loads(command.stdout) == {"y": [[4.0]]}
