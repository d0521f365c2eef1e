"""deploy/: the Docker image's entrypoint run for real, and the Kubernetes manifests checked
offline against the official Kubernetes OpenAPI schemas (kubernetes-validate) and served.

No Docker daemon or cluster runs here: the files the Dockerfile copies are built into the package
its pip step installs; the entrypoint runs the real server as the image would.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import kubernetes_validate
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from support import REPO, TESTDATA, free_port, wait_for_log, wait_until

KUBERNETES = REPO / "deploy" / "kubernetes"
ENTRYPOINT = REPO / "deploy" / "docker" / "entrypoint.sh"
DOCKERFILE = REPO / "Dockerfile"
PYSERVING_BIN = Path(sys.executable).parent / "pyserving"
# The grpc probe is GA from 1.27; the newest schemas the validator ships catch removals.
KUBERNETES_VERSIONS = ("1.27", kubernetes_validate.latest_version())
START_TIMEOUT = 90.0
RPC_TIMEOUT = 20.0
RUNNING_TCP = re.compile(r"Running gRPC ModelServer at 0\.0\.0\.0:(\d+) \.\.\.")
REST_EXPORTED = re.compile(r"Exporting HTTP/REST API at:localhost:(\d+)")
LABELLED_VERSIONS = {"stable": 1, "canary": 2}
BUCKET = "s3://my-model-bucket/models"  # the ConfigMap's base paths (rclone-sidecar/: /models)


def manifests() -> list[tuple[str, dict[str, Any]]]:
    """(file name, document) of every Kubernetes object in deploy/kubernetes."""
    found = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        found += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def manifest(kind: str, name: str) -> dict[str, Any]:
    matches = [doc for _, doc in manifests()
               if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}"
    return matches[0]


def server_container() -> dict[str, Any]:
    spec = manifest("Deployment", "pyserving")["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] if c["name"] == "pyserving")


def model_config_text() -> str:
    return manifest("ConfigMap", "pyserving-models")["data"]["models.config"]


# Kubernetes manifests against the official schemas.

@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("document", [
    pytest.param(doc, id=f"{name}:{doc['kind']}/{doc['metadata']['name']}")
    for name, doc in manifests()])
def test_manifest_matches_kubernetes_schema(document: dict[str, Any], version: str) -> None:
    # strict: unknown fields (a misspelt key) fail too.
    kubernetes_validate.validate(document, version, strict=True)


@pytest.mark.parametrize("path, value", [
    (("readinessProbe", "grpcc"), {"port": 8500}),       # misspelt field
    (("readinessProbe", "grpc", "port"), "grpc"),        # grpc probes take a number only
    (("resources", "requests"), ["cpu"]),                # wrong type
])
def test_schema_check_rejects_a_broken_deployment(path: tuple[str, ...], value: object) -> None:
    deployment = manifest("Deployment", "pyserving")
    container = next(c for c in deployment["spec"]["template"]["spec"]["containers"]
                     if c["name"] == "pyserving")
    target = container
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def strategic_merge(base: Any, patch: Any) -> Any:
    """kubectl's strategic merge for what rclone-sidecar/ patches: maps merge, lists of
    objects merge by ``name`` (volumeMounts by ``mountPath``), other values are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = strategic_merge(base[key], value) if key in base else value
        return merged
    if isinstance(base, list) and isinstance(patch, list) and patch and \
            all(isinstance(item, dict) for item in base + patch):
        key = "mountPath" if "mountPath" in patch[0] else "name"
        merged = {item[key]: item for item in base}
        for item in patch:
            merged[item[key]] = strategic_merge(merged[item[key]], item) \
                if item[key] in merged else item
        return list(merged.values())
    return patch


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_rclone_sidecar_overlay_is_a_valid_deployment(version: str) -> None:
    overlay = KUBERNETES / "rclone-sidecar"
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["../"]
    patches = {p["path"]: yaml.safe_load((overlay / p["path"]).read_text())
               for p in kustomization["patches"]}
    deployment = strategic_merge(manifest("Deployment", "pyserving"),
                                 patches["deployment-patch.yaml"])
    kubernetes_validate.validate(deployment, version, strict=True)
    spec = deployment["spec"]["template"]["spec"]
    mounted = {c["name"]: {m["name"] for m in c["volumeMounts"]}
               for c in spec["initContainers"] + spec["containers"]}
    assert mounted["model-sync"] >= {"models", "model-sync"}
    assert {v["name"] for v in spec["volumes"]} >= set().union(*mounted.values())
    config = patches["models-config-patch.yaml"]["data"]["models.config"]
    assert config == model_config_text().replace(f'"{BUCKET}/', '"/models/')


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(
        path.name for path in KUBERNETES.glob("*.yaml") if path.name != "kustomization.yaml")


def test_deployment_rolls_without_dropping_capacity() -> None:
    spec = manifest("Deployment", "pyserving")["spec"]
    assert spec["replicas"] >= 2
    assert spec["strategy"] == {"type": "RollingUpdate",
                                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    budget = manifest("PodDisruptionBudget", "pyserving")["spec"]
    assert budget["maxUnavailable"] == 1
    assert budget["selector"] == spec["selector"]


def test_probes_use_the_grpc_health_service_on_the_entrypoint_port() -> None:
    container = server_container()
    assert {"name": "grpc", "containerPort": 8500, "protocol": "TCP"} in container["ports"]
    assert {"name": "http", "containerPort": 8501, "protocol": "TCP"} in container["ports"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": 8500, "service": ""}, probe
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # slow model loads
    assert "--port=8500 --rest_api_port=8501" in ENTRYPOINT.read_text()


def test_pods_run_as_non_root_with_a_read_only_root() -> None:
    spec = manifest("Deployment", "pyserving")["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    for container in spec.get("initContainers", []) + spec["containers"]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["capabilities"] == {"drop": ["ALL"]}, container["name"]
        assert container["resources"]["requests"], container["name"]
        # Every writable path is a volume.
        assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"]), container["name"]


def test_model_config_is_a_polled_configmap_directory() -> None:
    deployment = manifest("Deployment", "pyserving")["spec"]["template"]["spec"]
    container = server_container()
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in container["args"])
    config_path = Path(flags["model_config_file"])
    assert int(flags["model_config_file_poll_wait_seconds"]) > 0
    assert flags["allow_version_labels_for_unavailable_models"] == "true"
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(config_path.parent))
    assert "subPath" not in mount  # a subPath mount never sees ConfigMap edits
    volume = next(v for v in deployment["volumes"] if v["name"] == mount["name"])
    assert config_path.name in manifest("ConfigMap", volume["configMap"]["name"])["data"]
    # The bucket's versions are copied into /models (an emptyDir) before they load.
    assert flags["model_cache_dir"] == "/models"
    models = next(m for m in container["volumeMounts"] if m["mountPath"] == "/models")
    volume = next(v for v in deployment["volumes"] if v["name"] == models["name"])
    assert "emptyDir" in volume and not models.get("readOnly")


def test_services_select_the_pods_and_name_their_ports() -> None:
    template = manifest("Deployment", "pyserving")["spec"]["template"]
    container_ports = {port["name"] for port in server_container()["ports"]}
    for name in ("pyserving", "pyserving-headless"):
        spec = manifest("Service", name)["spec"]
        assert spec["selector"].items() <= template["metadata"]["labels"].items()
        assert {port["targetPort"] for port in spec["ports"]} <= container_ports
    assert manifest("Service", "pyserving-headless")["spec"]["clusterIP"] == "None"
    assert manifest("Service", "pyserving")["spec"]["type"] == "ClusterIP"


# The ConfigMap's model config, read as TF Serving's ModelServerConfig and served.

def test_configmap_model_config_is_a_valid_model_server_config(tmp_path: Path) -> None:
    from pyserving.server.config import read_model_config_file, validate_model_server_config

    path = tmp_path / "models.config"
    path.write_text(model_config_text())
    config = read_model_config_file(str(path))
    validate_model_server_config(config)
    (model,) = config.model_config_list.config
    assert dict(model.version_labels) == LABELLED_VERSIONS
    assert set(model.model_version_policy.specific.versions) == set(LABELLED_VERSIONS.values())


@pytest.fixture
def models_root(tmp_path: Path) -> Path:
    """TF Serving's two-version half_plus_two as /models/half_plus_two/{1,2} in a temp dir."""
    root = tmp_path / "models"
    for version, source in ((1, "00000123"), (2, "00000124")):
        shutil.copytree(TESTDATA / "saved_model_half_plus_two_2_versions" / source,
                        root / "half_plus_two" / str(version))
    return root


def predict_version(channel: grpc.Channel, version: int | None = None,
                    version_label: str | None = None) -> tuple[float, int]:
    """y for x=2.0 and the version that answered."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    if version is not None:
        request.model_spec.version.value = version
    if version_label is not None:
        request.model_spec.version_label = version_label
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].float_val.append(2.0)
    request.inputs["x"].tensor_shape.dim.add().size = 1
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    response = stub.Predict(request, RPC_TIMEOUT, wait_for_ready=True)
    return response.outputs["y"].float_val[0], response.model_spec.version.value


def test_configmap_labels_serve_and_roll(models_root: Path, tmp_path: Path, serve: Callable,
                                         channel_to: Callable,
                                         caplog: pytest.LogCaptureFixture) -> None:
    """The ConfigMap as served, then deploy/kubernetes/README.md's rollout of version 3."""
    config = tmp_path / "models.config"
    config.write_text(model_config_text().replace(f'"{BUCKET}/', f'"{models_root}/'))
    server = serve(model_config_file=str(config), model_config_file_poll_wait_seconds=1,
                   allow_version_labels_for_unavailable_models=True)
    channel = channel_to(server.grpc_target)
    for label, version in LABELLED_VERSIONS.items():
        assert predict_version(channel, version_label=label) == (3.0, version)

    def edit(*replacements: tuple[str, str]) -> None:
        """Rewrite the file in one step, as the kubelet swaps a ConfigMap's files."""
        text = config.read_text()
        for old, new in replacements:
            assert old in text
            text = text.replace(old, new)
        config.with_suffix(".new").write_text(text)
        os.replace(config.with_suffix(".new"), config)

    def wait_for(check: Callable[[], bool], what: str) -> None:
        wait_until(check, what, 60, interval=0.2)

    shutil.copytree(models_root / "half_plus_two" / "1", models_root / "half_plus_two" / "3")
    # Adding version 3 and moving a label to it in one edit is rejected whole.
    edit(("versions: 2 }", "versions: 2 versions: 3 }"),
         ('key: "canary" value: 2', 'key: "canary" value: 3'))
    rejected = ("PollFilesystemAndReloadConfig failed to ReloadConfig: Request to assign "
                "label to version 3 of model half_plus_two, which is not currently available "
                "for inference")
    wait_for(lambda: rejected in caplog.text, "the one-step rollout was not rejected")
    assert predict_version(channel, version_label="canary") == (3.0, 2)
    with pytest.raises(grpc.RpcError) as error:
        predict_version(channel, version=3)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND

    # Step 2: load version 3, labels unchanged; step 3: canary; step 4: promote.
    edit(('key: "canary" value: 3', 'key: "canary" value: 2'))
    wait_for(lambda: _answers(channel, version=3), "version 3 never loaded")
    edit(('key: "canary" value: 2', 'key: "canary" value: 3'))
    wait_for(lambda: predict_version(channel, version_label="canary")[1] == 3, "canary")
    edit(('key: "stable" value: 1', 'key: "stable" value: 3'),
         ("versions: 1 versions: 2 versions: 3", "versions: 3"))
    wait_for(lambda: not _answers(channel, version=1), "version 1 never unloaded")
    assert predict_version(channel, version_label="stable") == (3.0, 3)


def _answers(channel: grpc.Channel, version: int) -> bool:
    try:
        predict_version(channel, version=version)
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.NOT_FOUND, error
        return False
    return True


# The Docker image, without a Docker daemon.

def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]


def copied_sources() -> list[str]:
    sources = []
    for key, value in dockerfile_instructions():
        if key == "COPY":
            sources += [word for word in shlex.split(value)[:-1] if not word.startswith("--")]
    return sources


def test_dockerignore_keeps_what_the_dockerfile_copies() -> None:
    kept = {line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()
            if line.startswith("!")}
    for source in copied_sources():
        assert any(source == path or source.startswith(path + "/") for path in kept), source
        assert (REPO / source).exists(), source


def test_image_build_context_builds_the_package(tmp_path: Path) -> None:
    """The Dockerfile's `pip install "/tmp/pyserving[server,cloud]"`, from the files it
    copies."""
    context = tmp_path / "pyserving"
    for source in copied_sources():
        if source.startswith("deploy/"):
            continue
        if (REPO / source).is_dir():
            shutil.copytree(REPO / source, context / source,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            (context / source).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO / source, context / source)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir",
         str(tmp_path / "dist"), str(context)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (wheel,) = (tmp_path / "dist").glob("pyserving-*.whl")
    names = set(subprocess.run([sys.executable, "-m", "zipfile", "-l", str(wheel)],
                               capture_output=True, text=True, check=True).stdout.split())
    assert {"pyserving/server/cli.py", "pyserving/client/sync_client.py",
            "pyserving/client/protos/tensorflow_serving/apis/predict_pb2.py"} <= names


# The entrypoint, run as the image runs it.

def test_scripts_are_valid_sh(tmp_path: Path) -> None:
    sync = tmp_path / "sync.sh"
    sync.write_text(manifest("ConfigMap", "pyserving-model-sync")["data"]["sync.sh"])
    for script in (ENTRYPOINT, sync):
        result = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


class EntrypointProcess:
    """deploy/docker/entrypoint.sh with the given environment; stderr goes to a file."""

    def __init__(self, workdir: Path, env: dict[str, str], *args: str) -> None:
        self.stderr_path = workdir / "stderr.txt"
        environment = {key: value for key, value in os.environ.items()
                       if key not in ("MODEL_NAME", "MODEL_BASE_PATH")}
        environment.update(PYSERVING_BIN=str(PYSERVING_BIN), **env)
        with open(self.stderr_path, "wb") as stderr:
            self.popen = subprocess.Popen([str(ENTRYPOINT), *args], cwd=workdir, env=environment,
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=stderr)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_for_log(self, pattern: re.Pattern[str]) -> re.Match[str]:
        return wait_for_log(self.stderr, pattern, self.popen, START_TIMEOUT)

    def server_arguments(self) -> list[str]:
        """The arguments the server process was started with (after the binary)."""
        argv = Path(f"/proc/{self.popen.pid}/cmdline").read_bytes().split(b"\0")[:-1]
        arguments = [arg.decode() for arg in argv]
        return arguments[arguments.index(str(PYSERVING_BIN)) + 1:]

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()


@pytest.fixture
def run_entrypoint(tmp_path: Path) -> Iterator[Callable[..., EntrypointProcess]]:
    processes: list[EntrypointProcess] = []

    def run(env: dict[str, str], *args: str) -> EntrypointProcess:
        workdir = tmp_path / f"entrypoint{len(processes)}"
        workdir.mkdir()
        processes.append(EntrypointProcess(workdir, env, *args))
        return processes[-1]

    yield run
    for process in processes:
        process.stop()


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads /proc")
def test_entrypoint_serves_the_model_named_by_the_environment(
        models_root: Path, run_entrypoint: Callable, channel_to: Callable) -> None:
    rest_port = free_port()
    # As `docker run -e MODEL_NAME=half_plus_two -v ...:/models/half_plus_two image --port=0`.
    extra = ("--port=0", f"--rest_api_port={rest_port}")
    process = run_entrypoint({"MODEL_NAME": "half_plus_two",
                              "MODEL_BASE_PATH": str(models_root)}, *extra)
    grpc_port = process.wait_for_log(RUNNING_TCP).group(1)
    assert process.server_arguments() == [
        "--port=8500", "--rest_api_port=8501", "--model_name=half_plus_two",
        f"--model_base_path={models_root}/half_plus_two", *extra]

    channel = channel_to(f"127.0.0.1:{grpc_port}")
    assert predict_version(channel) == (3.0, 2)
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "half_plus_two"):  # what the Kubernetes grpc probes ask
        response = health.Check(health_pb2.HealthCheckRequest(service=service), RPC_TIMEOUT)
        assert response.status == health_pb2.HealthCheckResponse.SERVING, service
    assert int(process.wait_for_log(REST_EXPORTED).group(1)) == rest_port
    request = urllib.request.Request(
        f"http://127.0.0.1:{rest_port}/v1/models/half_plus_two:predict",
        data=json.dumps({"instances": [1.0, 2.0, 5.0]}).encode())
    with urllib.request.urlopen(request, timeout=RPC_TIMEOUT) as answer:
        assert json.load(answer) == {"predictions": [2.5, 3.0, 4.5]}

    # exec: SIGTERM reaches the server itself, which drains and exits 0.
    process.popen.send_signal(signal.SIGTERM)
    assert process.popen.wait(START_TIMEOUT) == 0
    assert "received SIGTERM, shutting down" in process.stderr()


def test_entrypoint_defaults_to_the_model_named_model(tmp_path: Path,
                                                      run_entrypoint: Callable) -> None:
    """TF Serving's image defaults: MODEL_NAME=model under MODEL_BASE_PATH (default /models)."""
    process = run_entrypoint({"MODEL_BASE_PATH": str(tmp_path)}, "--port=0")
    # No model there yet: the server polls for one, as tensorflow_model_server does.
    process.wait_for_log(re.compile(re.escape(
        f"Could not find base path {tmp_path}/model for servable model")))
    assert process.popen.poll() is None
    assert "Traceback" not in process.stderr()


# The model-sync script of the ConfigMap, with rclone's local backend as the object store.

@pytest.mark.skipif(shutil.which("rclone") is None, reason="rclone is not installed")
def test_model_sync_publishes_whole_versions(tmp_path: Path) -> None:
    script = tmp_path / "sync.sh"
    script.write_text(manifest("ConfigMap", "pyserving-model-sync")["data"]["sync.sh"])
    bucket, models = tmp_path / "bucket", tmp_path / "models"
    source = TESTDATA / "saved_model_half_plus_two_2_versions"
    shutil.copytree(source / "00000123", bucket / "half_plus_two" / "1")
    (bucket / "half_plus_two" / "notes").mkdir()
    (bucket / "half_plus_two" / "notes" / "README").write_text("not a version")
    env = {**os.environ, "MODEL_SOURCE": str(bucket), "MODELS_DIR": str(models),
           "HOME": str(tmp_path), "RCLONE_CONFIG": str(tmp_path / "rclone.conf")}

    def sync() -> str:
        result = subprocess.run(["sh", str(script), "once"], env=env, capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert sync() == "published half_plus_two version 1\n"
    published = models / "half_plus_two" / "1" / "saved_model.pb"
    assert published.read_bytes() == (source / "00000123" / "saved_model.pb").read_bytes()
    assert published.stat().st_ino == (
        models / ".staging" / "half_plus_two" / "1" / "saved_model.pb").stat().st_ino
    assert sorted(p.name for p in (models / "half_plus_two").iterdir()) == ["1"]

    shutil.copytree(source / "00000124", bucket / "half_plus_two" / "2")
    assert sync() == "published half_plus_two version 2\n"
    assert sorted(p.name for p in (models / "half_plus_two").iterdir()) == ["1", "2"]
