"""deploy/kserve: the ClusterServingRuntime and example InferenceService checked offline (the
container against Kubernetes' OpenAPI schema, the flags against pyserving's parser), served
with the runtime's own arguments, and (slow) deserialized by the kserve SDK's models.

The kserve SDK pins protobuf < 7 (pyserving needs 7), so its check runs in a venv of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import venv
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from pyserving.server import ModelServer
from pyserving.server.options import parse_options
from support import REPO, TESTDATA, free_port
from v2_support import http

KSERVE = REPO / "deploy" / "kserve"
RUNTIME = KSERVE / "cluster-serving-runtime.yaml"
INFERENCE_SERVICE = KSERVE / "inference-service.yaml"
PIP_TIMEOUT = 900


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def container() -> dict[str, Any]:
    (only,) = load(RUNTIME)["spec"]["containers"]
    return only


def test_runtime_serves_tensorflow_on_every_protocol_kserve_names():
    runtime = load(RUNTIME)
    assert (runtime["apiVersion"], runtime["kind"]) == ("serving.kserve.io/v1alpha1",
                                                        "ClusterServingRuntime")
    spec = runtime["spec"]
    assert {f["name"] for f in spec["supportedModelFormats"]} == {"tensorflow"}
    assert spec["protocolVersions"] == ["v1", "v2", "grpc-v1", "grpc-v2"]
    assert container()["name"] == "kserve-container"  # the name KServe merges into


def test_example_inference_service_uses_the_runtime():
    service = load(INFERENCE_SERVICE)
    assert (service["apiVersion"], service["kind"]) == ("serving.kserve.io/v1beta1",
                                                        "InferenceService")
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == load(RUNTIME)["metadata"]["name"]
    assert model["modelFormat"]["name"] == "tensorflow" and model["protocolVersion"] == "v2"


@pytest.mark.parametrize("version", ["1.27", kubernetes_validate.latest_version()])
def test_runtime_container_matches_the_kubernetes_schema(version):
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "runtime"},
           "spec": {"containers": [container()]}}
    kubernetes_validate.validate(pod, version, strict=True)


def runtime_arguments(name: str, models: str) -> list[str]:
    return [arg.replace("{{.Name}}", name).replace("/mnt/models", models)
            for arg in container()["args"]]


def test_runtime_arguments_are_pyserving_flags_and_its_ports_are_the_containers():
    options, unknown = parse_options(runtime_arguments("m", "/mnt/models"))
    assert unknown == []
    assert options.model_base_path == "/mnt/models" and options.model_name == "m"
    assert options.enable_v2_protocol
    ports = [port["containerPort"] for port in container()["ports"]]
    assert ports == [options.rest_api_port] == [8080]
    assert container()["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready",
                                                        "port": options.rest_api_port}


def test_the_runtime_arguments_serve_v1_and_v2_on_a_storage_initializer_layout(tmp_path):
    import shutil
    models = tmp_path / "mnt" / "models"
    shutil.copytree(TESTDATA / "saved_model_half_plus_two_cpu", models)
    options, _ = parse_options(runtime_arguments("half-plus-two", str(models)))
    options = options.__class__(**{**options.__dict__, "port": 0,
                                   "rest_api_port": free_port()})
    with ModelServer(options, host="127.0.0.1") as server:
        base = f"http://127.0.0.1:{server.rest_port}"
        assert http("GET", base + container()["readinessProbe"]["httpGet"]["path"])[0] == 200
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 1],
                            "data": [1, 2]}]}
        status, payload, _ = http("POST", base + "/v2/models/half-plus-two/infer",
                                  json.dumps(body).encode())
        assert status == 200, payload
        assert json.loads(payload)["outputs"][0]["data"] == [2.5, 3.0]
        status, payload, _ = http("POST", base + "/v1/models/half-plus-two:predict",
                                  b'{"instances": [1.0]}')
        assert (status, json.loads(payload)) == (200, {"predictions": [2.5]})


KSERVE_CHECK = textwrap.dedent("""
    import json, re, sys
    import kubernetes.client.models
    import yaml
    import kserve.models
    from kserve import ApiClient

    # The SDK's models name Kubernetes' (V1ObjectMeta, V1Container...) but its ApiClient looks
    # names up in kserve.models only: give it the kubernetes client's models too.
    for name in dir(kubernetes.client.models):
        if name.startswith("V") and not hasattr(kserve.models, name):
            setattr(kserve.models, name, getattr(kubernetes.client.models, name))

    # kubernetes' newer models name containers List[...] / Dict[...], where the SDK's
    # older generator wrote list[...] / dict(...).
    class Client(ApiClient):

        def _ApiClient__deserialize(self, data, klass):
            if isinstance(klass, str):
                klass = re.sub(r"^List\\[(.*)\\]$", r"list[\\1]", klass)
                klass = re.sub(r"^Dict\\[([^,]*), (.*)\\]$", r"dict(\\1, \\2)", klass)
            return super()._ApiClient__deserialize(data, klass)

    class Response:
        def __init__(self, document):
            self.data = json.dumps(document)

    client = Client()
    for path, model in ((sys.argv[1], "V1alpha1ClusterServingRuntime"),
                        (sys.argv[2], "V1beta1InferenceService")):
        document = yaml.safe_load(open(path))
        typed = client.deserialize(Response(document), model)
        # A field the SDK's model does not know is dropped: the round trip shows it.
        assert client.sanitize_for_serialization(typed) == document, (path, typed)
    print("ok")
""")


@pytest.mark.slow
@pytest.mark.timeout(PIP_TIMEOUT + 120)
def test_the_kserve_sdk_reads_both_manifests_without_losing_a_field(tmp_path):
    environment = tmp_path / "venv"
    try:
        venv.EnvBuilder(with_pip=True).create(environment)
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"cannot create a venv here: {error}")
    python = str(environment / "bin" / "python")
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    install = subprocess.run([python, "-m", "pip", "install", "--quiet",
                              "--disable-pip-version-check", "kserve>=0.21", "PyYAML>=6"],
                             capture_output=True, text=True, timeout=PIP_TIMEOUT, env=env)
    assert install.returncode == 0, install.stdout + install.stderr
    script = tmp_path / "check.py"
    script.write_text(KSERVE_CHECK)

    def check(runtime: Path) -> subprocess.CompletedProcess:
        return subprocess.run([python, str(script), str(runtime), str(INFERENCE_SERVICE)],
                              capture_output=True, text=True, timeout=300, env=env)

    result = check(RUNTIME)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-4000:]
    misspelt = tmp_path / "misspelt.yaml"
    misspelt.write_text(RUNTIME.read_text().replace("protocolVersions", "protocolVersion"))
    assert check(misspelt).returncode != 0  # the check catches a field the SDK does not know
