"""tritonclient's gRPC client against pyserving's inference.GRPCInferenceService. Its [grpc]
extra pins protobuf < 7 (pyserving needs 7), so it runs in a venv of its own, against a server
in this process."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import venv

import pytest

from v2_support import export_v2_model

PIP_TIMEOUT = 600
pytestmark = [pytest.mark.slow, pytest.mark.timeout(PIP_TIMEOUT + 180)]

CLIENT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(sys.argv[1])
    x = grpcclient.InferInput("x", [2, 3], "FP32")
    x.set_data_from_numpy(np.arange(6, dtype=np.float32).reshape(2, 3))
    k = grpcclient.InferInput("k", [2], "INT64")
    k.set_data_from_numpy(np.array([1, 2], np.int64))
    result = client.infer("m", [x, k], outputs=[grpcclient.InferRequestedOutput("doubled")],
                          request_id="t1")
    words = grpcclient.InferInput("x", [2], "BYTES")
    words.set_data_from_numpy(np.array([b"a\\x00b", "\\u00e9".encode()], dtype=object))
    echoed = client.infer("m", [words], parameters={"signature_name": "identity_BYTES"})
    try:
        client.infer("nope", [x, k])
    except InferenceServerException as error:
        failure = [error.status(), error.message()]
    metadata = client.get_model_metadata("m", as_json=True)
    print(json.dumps({
        "live": client.is_server_live(), "ready": client.is_model_ready("m"),
        "doubled": result.as_numpy("doubled").tolist(), "k_out": result.as_numpy("k_out") is None,
        "id": result.get_response().id, "words": [w.decode("latin-1") for w in
                                                   echoed.as_numpy("y")],
        "failure": failure, "platform": metadata["platform"]}))
""")


def test_tritonclient_grpc_infers_against_pyserving(serve, tmp_path):
    environment = tmp_path / "venv"
    try:
        venv.EnvBuilder(with_pip=True).create(environment)
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"cannot create a venv here: {error}")
    python = str(environment / "bin" / "python")
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    install = subprocess.run([python, "-m", "pip", "install", "--quiet",
                              "--disable-pip-version-check", "tritonclient[grpc]>=2.73"],
                             capture_output=True, text=True, timeout=PIP_TIMEOUT, env=env)
    assert install.returncode == 0, install.stdout + install.stderr
    server = serve(model_name="m", model_base_path=export_v2_model(tmp_path / "m"))
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    result = subprocess.run([python, str(script), server.grpc_target], capture_output=True,
                            text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    answer = json.loads(result.stdout)
    assert answer == {
        "live": True, "ready": True, "doubled": [[0, 2, 4], [6, 8, 10]], "k_out": True,
        "id": "t1", "words": ["a\x00b", "\u00e9".encode().decode("latin-1")],
        "failure": ["StatusCode.NOT_FOUND", "Servable not found for request: Latest(nope)"],
        "platform": "tensorflow_savedmodel"}
