"""A non-Python caller: Node.js with @grpc/grpc-js and @grpc/proto-loader over protos/."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from support import REPO

NODE_DIR = REPO / "tests" / "node"
PROTOS = REPO / "protos"
NPM_TIMEOUT_SECONDS = 300

pytestmark = pytest.mark.skipif(shutil.which("node") is None,
                                reason="node is not installed (CI machines have it)")


@pytest.fixture(scope="module")
def node_client() -> Path:
    """tests/node/client.js with its locked npm dependencies installed."""
    if not (NODE_DIR / "node_modules" / "@grpc" / "proto-loader").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("node is installed but npm is not; it installs tests/node's dependencies")
        command = [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--prefer-offline",
                   "--fetch-retry-maxtimeout=15000"]
        try:
            result = subprocess.run(command, cwd=NODE_DIR, capture_output=True, text=True,
                                    timeout=NPM_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            pytest.fail(f"`npm ci` in {NODE_DIR} took over {NPM_TIMEOUT_SECONDS}s "
                        "(is the npm registry reachable?)")
        if result.returncode != 0:
            pytest.fail(f"`npm ci` in {NODE_DIR} failed (is the npm registry reachable?):\n"
                        f"{result.stderr[-2000:]}")
    return NODE_DIR / "client.js"


def test_node_client_predicts_and_reads_model_status(node_client, serve, testdata_model):
    server = serve(model_base_path=testdata_model("saved_model_half_plus_two_cpu"))

    result = subprocess.run(["node", str(node_client), server.grpc_target, str(PROTOS)],
                            capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["predict"]["y"] == {"dtype": "DT_FLOAT", "float_val": [3.0], "dim": ["1"]}
    assert answer["predict"]["model_spec"]["name"] == "default"
    assert answer["predict"]["model_spec"]["version"] == {"value": "123"}
    [status] = answer["status"]
    assert (status["version"], status["state"]) == ("123", "AVAILABLE")
