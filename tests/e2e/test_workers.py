"""--workers N: the CLI run as a process with two workers sharing the gRPC and REST ports.

One server serves the module's tests in order (each worker imports TensorFlow, seconds on a
busy two-core machine): both workers answer on the shared port, the metrics page adds up
their requests, health is SERVING only while both are, a worker killed with SIGKILL fails
only its own connections' RPCs and is restarted, a config reload sent to one worker is
served by every worker (restarted ones included), and SIGTERM drains everything. Which
worker holds a connection is read from /proc (the server side of each established
connection).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from pyserving.server.options import ServerOptions
from pyserving.server.workers.supervisor import worker_count
from support import (
    connections_by_pid,
    copy_testdata,
    free_port,
    metrics_page_samples,
    wait_for_log,
    wait_until,
)

pytestmark = pytest.mark.slow  # supervisors of worker processes, each importing TF
SERVER_COMMAND = (sys.executable, "-m", "pyserving.server")
START_TIMEOUT = 180.0  # two TensorFlow imports at once on a busy two-core machine
RPC_TIMEOUT = 20.0
GRACE_SECONDS = 5.0
ALL_SERVING = re.compile(r"all 2 workers are serving; Running gRPC ModelServer at "
                         r"0\.0\.0\.0:(\d+) \.\.\.")
WORKER_STARTED = re.compile(r"worker (\d) started: pid (\d+)")
STARTUP_FAILED = "Failed to start server. Error: "
SHARED = "shared with the other workers"  # a worker's log line for each reload it shares
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
MAX_CHANNELS = 40  # new connections tried before giving up on reaching a given worker
FOLLOW_TIMEOUT = 20.0  # workers follow a reload within about a second, plus its loads
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
HPT = "hpt"  # saved_model_half_plus_two_2_versions: versions 123 and 124


class Supervisor:
    """The `pyserving --workers=2` process; its stderr goes to a file."""

    def __init__(self, args: list[str], workdir: Path) -> None:
        self.workdir = workdir
        self.stderr_path = workdir / "stderr.txt"
        self.stdout_path = workdir / "stdout.txt"
        with open(self.stderr_path, "wb") as stderr, open(self.stdout_path, "wb") as stdout:
            self.popen = subprocess.Popen([*SERVER_COMMAND, *args], cwd=workdir,
                                          stdin=subprocess.DEVNULL, stdout=stdout,
                                          stderr=stderr)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stdout(self) -> str:
        """Where a process that cannot start says why, as tensorflow_model_server does."""
        return self.stdout_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str | re.Pattern[str], after: int = 0) -> re.Match[str]:
        """The first match of ``pattern`` in stderr at or after character ``after``."""
        return wait_for_log(self.stderr, pattern, self.popen, START_TIMEOUT, after)

    def worker_pids(self) -> dict[int, int]:
        """The current pid of each worker index, as the supervisor logged them."""
        return {int(index): int(pid) for index, pid in WORKER_STARTED.findall(self.stderr())}

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(GRACE_SECONDS + 30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Supervisor, int, int]]:
    """(supervisor, gRPC port, REST port) of two workers serving half_plus_two as "default"."""
    root = tmp_path_factory.mktemp("workers")
    monitoring = root / "monitoring.txt"
    monitoring.write_text("prometheus_config { enable: true }\n")
    rollout = root / "rollout.txt"  # every worker reads it; requests without a version pass it
    rollout.write_text('rollouts { model_name: "default" split { version: 123 weight: 1 } }')
    rest_port = free_port()
    base = copy_testdata("saved_model_half_plus_two_cpu", root / "half_plus_two")
    supervisor = Supervisor(["--workers=2", "--port=0", f"--rest_api_port={rest_port}",
                             f"--monitoring_config_file={monitoring}",
                             f"--rollout_config_file={rollout}",
                             f"--shutdown_grace_period_seconds={GRACE_SECONDS}",
                             f"--model_base_path={base}"], root)
    try:
        port = int(supervisor.wait_for_log(ALL_SERVING).group(1))
        yield supervisor, port, rest_port
    finally:
        supervisor.stop()


def open_channel(port: int) -> grpc.Channel:
    """A channel with a connection of its own (channels share connections by default)."""
    return grpc.insecure_channel(f"127.0.0.1:{port}",
                                 options=[("grpc.use_local_subchannel_pool", 1)])


def predict(channel: grpc.Channel, x: float = 2.0, wait_for_ready: bool = False) -> float:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "default"
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].float_val.append(x)
    request.inputs["x"].tensor_shape.dim.add().size = 1
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    response = stub.Predict(request, RPC_TIMEOUT, wait_for_ready=wait_for_ready)
    return response.outputs["y"].float_val[0]


def health(channel: grpc.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=RPC_TIMEOUT).status


def connect(port: int, pids: list[int]) -> tuple[grpc.Channel, int]:
    """A new channel, connected by a Predict; returns it and the worker pid it reached."""
    before = connections_by_pid(port, pids)
    channel = open_channel(port)
    assert predict(channel) == 3.0
    after = connections_by_pid(port, pids)
    reached = [pid for pid in pids if after[pid] - before[pid]]
    assert len(reached) == 1, (before, after)
    return channel, reached[0]


def channels_on_every_worker(port: int, pids: list[int]) -> dict[int, list[grpc.Channel]]:
    """New channels until every worker holds at least one (SO_REUSEPORT hashes connections)."""
    by_pid: dict[int, list[grpc.Channel]] = {pid: [] for pid in pids}
    for _ in range(MAX_CHANNELS):
        channel, pid = connect(port, pids)
        by_pid[pid].append(channel)
        if all(by_pid.values()) and sum(map(len, by_pid.values())) >= 4:
            return by_pid
    pytest.fail(f"{MAX_CHANNELS} connections did not reach every worker: "
                f"{ {pid: len(channels) for pid, channels in by_pid.items()} }")


def close_all(by_pid: dict[int, list[grpc.Channel]]) -> None:
    for channels in by_pid.values():
        for channel in channels:
            channel.close()


def request_count(rest_port: int) -> tuple[float, float]:
    """:tensorflow:serving:request_count{default, OK} and the rollout's count of its arm's
    successful requests, from a metrics page (a new connection, so any worker may answer)."""
    url = f"http://127.0.0.1:{rest_port}/monitoring/prometheus/metrics"
    with urllib.request.urlopen(url, timeout=RPC_TIMEOUT) as response:
        samples = metrics_page_samples(response.read().decode())
    return (samples.get((":tensorflow:serving:request_count", frozenset(
                {("model_name", "default"), ("status", "OK")})), 0.0),
            samples.get(("pyserving_rollout_requests_total", frozenset(
                {("model_name", "default"), ("arm", "version:123"), ("status", "ok")})), 0.0))


def test_both_workers_answer_on_the_logged_port(cluster: tuple[Supervisor, int, int]) -> None:
    supervisor, port, _ = cluster
    pids = list(supervisor.worker_pids().values())
    assert len(set(pids)) == 2
    by_pid = channels_on_every_worker(port, pids)
    try:
        for channels in by_pid.values():
            for channel in channels:
                assert predict(channel, x=4.0) == 4.0
    finally:
        close_all(by_pid)
    # Every worker logs the line a single server logs, with the same port.
    assert len(re.findall(rf"Running gRPC ModelServer at 0\.0\.0\.0:{port} \.\.\.",
                          supervisor.stderr())) == 3


def test_request_count_adds_up_over_workers(cluster: tuple[Supervisor, int, int]) -> None:
    supervisor, port, rest_port = cluster
    pids = list(supervisor.worker_pids().values())
    before = request_count(rest_port)
    by_pid = channels_on_every_worker(port, pids)  # one Predict per channel
    try:
        sent = sum(map(len, by_pid.values()))
        for channels in by_pid.values():
            for channel in channels:
                for _ in range(3):
                    predict(channel)
        sent += 3 * sum(map(len, by_pid.values()))
    finally:
        close_all(by_pid)
    # Each page comes over a new connection, from either worker: all show the sums, the
    # rollout's (every request named no version, so each went through it) as TF Serving's.
    assert [request_count(rest_port) for _ in range(4)] == [
        (before[0] + sent, before[1] + sent)] * 4


def test_status_page_counts_every_workers_requests(cluster: tuple[Supervisor, int, int]
                                                    ) -> None:
    """Whichever worker answers GET /status.json, its request count is the sum the metrics
    page shows, and GET / renders."""
    supervisor, port, rest_port = cluster
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        predict(channel)
    expected = request_count(rest_port)[0]
    answered = set()
    for _ in range(6):
        with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}/status.json",
                                    timeout=RPC_TIMEOUT) as response:
            document = json.loads(response.read())
        answered.add(document["server"]["pid"])
        (model,) = document["models"]
        assert (model["name"], model["requests"]) == ("default", expected)
        assert document["rollouts"]["default"]["arms"][0]["weight"] == 1
    assert answered <= set(supervisor.worker_pids().values())
    with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}/", timeout=RPC_TIMEOUT) as page:
        assert b"Rollout of default" in page.read()


def test_health_is_serving_on_every_worker(cluster: tuple[Supervisor, int, int]) -> None:
    supervisor, port, _ = cluster
    by_pid = channels_on_every_worker(port, list(supervisor.worker_pids().values()))
    try:
        for channels in by_pid.values():
            assert health(channels[0]) == SERVING
            assert health(channels[0], "default") == SERVING
    finally:
        close_all(by_pid)


def test_killed_worker_fails_only_its_rpcs_and_is_restarted(
        cluster: tuple[Supervisor, int, int]) -> None:
    supervisor, port, rest_port = cluster
    pids = supervisor.worker_pids()
    victim, survivor = pids[0], pids[1]
    by_pid = channels_on_every_worker(port, [victim, survivor])
    try:
        watches = {pid: [health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=START_TIMEOUT)
            for channel in channels] for pid, channels in by_pid.items()}
        for streams in watches.values():
            assert [next(stream).status for stream in streams] == [SERVING] * len(streams)
        count_before = request_count(rest_port)[0]
        log_mark = len(supervisor.stderr())

        os.kill(victim, signal.SIGKILL)
        # The RPCs in flight on the killed worker's connections fail with UNAVAILABLE.
        for stream in watches[victim]:
            with pytest.raises(grpc.RpcError) as raised:
                next(stream)
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        # The other worker keeps serving its connections, but no longer calls the server
        # SERVING while one worker is missing.
        for stream in watches[survivor]:
            assert next(stream).status == NOT_SERVING
        for channel in by_pid[survivor]:
            assert predict(channel) == 3.0
            assert health(channel) == NOT_SERVING
            assert health(channel, "default") == SERVING
        supervisor.wait_for_log(rf"worker 0 \(pid {victim}\) was killed by SIGKILL; "
                                r"restarting it in [\d.]+ s", log_mark)
        # The killed worker's connections reconnect (to a live worker) and are served.
        for channel in by_pid[victim]:
            assert predict(channel, wait_for_ready=True) == 3.0

        restarted = int(supervisor.wait_for_log(r"worker 0 started: pid (\d+)",
                                                log_mark).group(1))
        assert restarted not in (victim, survivor)
        supervisor.wait_for_log(rf"worker 0 \(pid {restarted}\) is serving", log_mark)
        for stream in watches[survivor]:
            assert next(stream).status == SERVING
        # The killed worker's requests still count.
        assert request_count(rest_port)[0] >= count_before
    finally:
        close_all(by_pid)
    new_channels = channels_on_every_worker(port, [restarted, survivor])
    try:
        for channels in new_channels.values():
            assert health(channels[0]) == SERVING
    finally:
        close_all(new_channels)


# Config reloads: sent to one worker, served by all.

@pytest.fixture(scope="module")
def two_versions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of saved_model_half_plus_two_2_versions for the reloads of this module."""
    return copy_testdata("saved_model_half_plus_two_2_versions",
                         tmp_path_factory.mktemp("reload") / HPT)


def reload(channel: grpc.Channel, supervisor: Supervisor, hpt_base: Path, *, policy: str = "",
           labels: Mapping[str, int] | None = None) -> None:
    """Reload "default" (as started) and "hpt" (policy "all", or TF Serving's latest 1)."""
    request = model_management_pb2.ReloadConfigRequest()
    models = request.config.model_config_list.config
    models.add(name="default", base_path=str(supervisor.workdir / "half_plus_two"),
               model_platform="tensorflow")
    hpt = models.add(name=HPT, base_path=str(hpt_base), model_platform="tensorflow")
    if policy == "all":
        hpt.model_version_policy.all.SetInParent()
    hpt.version_labels.update(labels or {})
    model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request,
                                                                               RPC_TIMEOUT)


def hpt_versions(channel: grpc.Channel) -> dict[int, int]:
    """GetModelStatus of "hpt": version -> state ({} while the worker does not know it)."""
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = HPT
    try:
        response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
            request, RPC_TIMEOUT)
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.NOT_FOUND, error
        return {}
    return {status.version: status.state for status in response.model_version_status}


def labelled_version(channel: grpc.Channel, label: str) -> int | str:
    """The version of "hpt" that answers a Predict for ``label`` (or the error's text)."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = HPT
    request.model_spec.version_label = label
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].float_val.append(2.0)
    request.inputs["x"].tensor_shape.dim.add().size = 1
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    try:
        return stub.Predict(request, RPC_TIMEOUT).model_spec.version.value
    except grpc.RpcError as error:
        return error.details()


def on_every_channel(by_pid: dict[int, list[grpc.Channel]],
                     check: Callable[[grpc.Channel], object], expected: object) -> None:
    """Wait until ``check`` gives ``expected`` on every channel of every worker."""
    for channels in by_pid.values():
        for channel in channels:
            wait_until(lambda: check(channel) == expected,  # noqa: B023 - called at once
                       f"{expected!r} on every worker", FOLLOW_TIMEOUT, interval=0.1)


def test_reload_on_one_worker_is_served_by_every_worker(
        cluster: tuple[Supervisor, int, int], two_versions: Path) -> None:
    supervisor, port, _ = cluster
    receiver, other = supervisor.worker_pids().values()
    by_pid = channels_on_every_worker(port, [receiver, other])
    try:
        reload(by_pid[receiver][0], supervisor, two_versions)
        # As on one server, the reload returns once the new model serves on its worker ...
        assert hpt_versions(by_pid[receiver][0]) == {124: AVAILABLE}
        # ... and the other worker follows.
        on_every_channel(by_pid, hpt_versions, {124: AVAILABLE})

        # A version policy and labels, sent to the other worker this time.
        reload(by_pid[other][0], supervisor, two_versions, policy="all")
        on_every_channel({other: by_pid[other]}, hpt_versions,
                         {124: AVAILABLE, 123: AVAILABLE})
        reload(by_pid[other][0], supervisor, two_versions, policy="all",
               labels={"stable": 123, "canary": 124})
        on_every_channel(by_pid, hpt_versions, {124: AVAILABLE, 123: AVAILABLE})
        on_every_channel(by_pid, lambda channel: labelled_version(channel, "stable"), 123)
        on_every_channel(by_pid, lambda channel: labelled_version(channel, "canary"), 124)
    finally:
        close_all(by_pid)


def test_failing_reload_is_not_shared(cluster: tuple[Supervisor, int, int],
                                      two_versions: Path) -> None:
    supervisor, port, _ = cluster
    receiver, other = supervisor.worker_pids().values()
    by_pid = channels_on_every_worker(port, [receiver, other])
    try:
        shared = supervisor.stderr().count(SHARED)
        # Applied elsewhere, this config would unload version 123.
        with pytest.raises(grpc.RpcError) as raised:
            reload(by_pid[receiver][0], supervisor, two_versions,
                   labels={"stable": 123, "canary": 125})
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert raised.value.details() == ("Request to assign label to version 125 of model hpt, "
                                          "which is not currently available for inference")
        # The reload was refused before the config was shared (a worker shares what it applied
        # before it answers): there is nothing for the other worker to follow.
        assert supervisor.stderr().count(SHARED) == shared
        for channels in by_pid.values():
            for channel in channels:
                assert hpt_versions(channel) == {124: AVAILABLE, 123: AVAILABLE}
                assert labelled_version(channel, "stable") == 123
    finally:
        close_all(by_pid)


def test_restarted_worker_serves_the_reloaded_config(cluster: tuple[Supervisor, int, int]
                                                     ) -> None:
    supervisor, port, _ = cluster
    log_mark = len(supervisor.stderr())
    pids = supervisor.worker_pids()
    victim, survivor = pids[1], pids[0]
    os.kill(victim, signal.SIGKILL)
    restarted = int(supervisor.wait_for_log(r"worker 1 started: pid (\d+)", log_mark).group(1))
    supervisor.wait_for_log(rf"worker 1 \(pid {restarted}\) is serving", log_mark)
    by_pid = channels_on_every_worker(port, [restarted, survivor])
    try:
        # At once: the restarted worker applied the shared config before it took connections.
        for channel in by_pid[restarted]:
            assert hpt_versions(channel) == {124: AVAILABLE, 123: AVAILABLE}
            assert labelled_version(channel, "stable") == 123
            assert labelled_version(channel, "canary") == 124
    finally:
        close_all(by_pid)


def test_sigterm_stops_every_worker_and_exits_zero(cluster: tuple[Supervisor, int, int]
                                                   ) -> None:
    supervisor, _, _ = cluster
    pids = list(supervisor.worker_pids().values())
    started = time.monotonic()
    supervisor.popen.send_signal(signal.SIGTERM)
    assert supervisor.popen.wait(GRACE_SECONDS + 30) == 0
    assert time.monotonic() - started < GRACE_SECONDS + 30
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), f"worker {pid} outlived the supervisor"
    stderr = supervisor.stderr()
    assert "all workers stopped" in stderr
    assert "Traceback" not in stderr


# Start-up: the flag's values, and a failing worker.

def test_workers_auto_is_the_cpu_count() -> None:
    assert worker_count(ServerOptions(workers="auto")) == len(os.sched_getaffinity(0))
    assert worker_count(ServerOptions(workers="3")) == 3
    assert worker_count(ServerOptions()) == 1


@pytest.mark.parametrize("value", ["0", "-1", "x"])
def test_bad_workers_value_fails_start_up(value: str, tmp_path: Path) -> None:
    result = subprocess.run([*SERVER_COMMAND, f"--workers={value}", "--port=0",
                             f"--model_base_path={tmp_path}"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 255
    assert (f"{STARTUP_FAILED}--workers must be a positive integer or 'auto', got '{value}'"
            in result.stdout)
    assert "Traceback" not in result.stderr


def test_workers_cannot_share_a_unix_socket(tmp_path: Path) -> None:
    result = subprocess.run([*SERVER_COMMAND, "--workers=2", "--port=0",
                             f"--grpc_socket_path={tmp_path / 's.sock'}",
                             f"--model_base_path={tmp_path}"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 255
    assert (f"{STARTUP_FAILED}--grpc_socket_path cannot be shared by several --workers; "
            "use --port") in result.stdout


def test_worker_start_up_failure_fails_the_server(tmp_path: Path) -> None:
    missing = tmp_path / "no_such.config"
    supervisor = Supervisor(["--workers=2", "--port=0", f"--model_config_file={missing}"],
                            tmp_path)
    try:
        assert supervisor.popen.wait(START_TIMEOUT) == 255
    finally:
        supervisor.stop()
    assert f"{STARTUP_FAILED}NOT_FOUND: {missing}; No such file or directory" \
        in supervisor.stdout()
    stderr = supervisor.stderr()
    assert re.search(r"worker \d \(pid \d+\) exited with code 255 during start-up", stderr)
    for pid in supervisor.worker_pids().values():
        assert not Path(f"/proc/{pid}").exists(), f"worker {pid} outlived the supervisor"


def test_port_in_use_fails_start_up(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET) as taken:
        taken.bind(("", 0))  # no SO_REUSEPORT: the workers cannot share it
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([*SERVER_COMMAND, "--workers=2", f"--port={port}",
                                 f"--model_base_path={tmp_path}"], capture_output=True,
                                text=True, timeout=60)
    assert result.returncode == 255
    assert (f"{STARTUP_FAILED}UNAVAILABLE: Failed to reserve port 0.0.0.0:{port} for 2 "
            "workers: Address already in use") in result.stdout
