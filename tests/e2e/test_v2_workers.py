"""V2 under --workers 2: inference over REST and gRPC on the shared ports, metadata and
readiness from every worker, and a model added by a config reload sent to one worker seen by
V2 in each. Which worker holds a REST connection is the pid on /status.json over that
keep-alive connection; which holds a gRPC connection is read from /proc."""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

from pyserving.client.protos.inference import grpc_service_pb2 as pb
from pyserving.client.protos.inference import grpc_service_pb2_grpc
from server_process import ServerProcess
from support import (
    connections_by_pid,
    copy_testdata,
    free_port,
    wait_for_log,
    wait_until,
)

pytestmark = pytest.mark.slow  # two worker processes, each importing TensorFlow
START_TIMEOUT = 180.0
TIMEOUT = 20.0
FOLLOW_TIMEOUT = 30.0
MAX_CONNECTIONS = 40
ALL_SERVING = re.compile(r"all 2 workers are serving; Running gRPC ModelServer at "
                         r"0\.0\.0\.0:(\d+) \.\.\.")
WORKER_STARTED = re.compile(r"worker (\d) started: pid (\d+)")
Stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub


class Cluster:
    def __init__(self, process: ServerProcess, port: int, rest_port: int, root: Path) -> None:
        self.process, self.port, self.rest_port, self.root = process, port, rest_port, root

    def pids(self) -> list[int]:
        return [int(pid) for _, pid in WORKER_STARTED.findall(self.process.stderr())]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("v2_workers")
    rest_port = free_port()
    process = ServerProcess(["--workers=2", "--port=0", f"--rest_api_port={rest_port}",
                             "--shutdown_grace_period_seconds=5", "--model_name=default",
                             "--model_base_path="
                             f"{copy_testdata('saved_model_half_plus_two_cpu', root / 'hpt_cpu')}"],
                            root / "server")
    try:
        port = int(wait_for_log(process.stderr, ALL_SERVING, process.popen,
                                START_TIMEOUT).group(1))
        yield Cluster(process, port, rest_port, root)
    finally:
        process.stop()


# REST: a keep-alive connection per worker.

def rest_call(connection: http.client.HTTPConnection, method: str, path: str,
              body: Any = None) -> tuple[int, Any]:
    payload = None if body is None else json.dumps(body).encode()
    connection.request(method, path, body=payload)
    response = connection.getresponse()
    data = response.read()
    return response.status, json.loads(data) if data else None


def rest_connections_on_every_worker(cluster: Cluster) -> dict[int, http.client.HTTPConnection]:
    by_pid: dict[int, http.client.HTTPConnection] = {}
    for _ in range(MAX_CONNECTIONS):
        connection = http.client.HTTPConnection("127.0.0.1", cluster.rest_port, timeout=TIMEOUT)
        status, document = rest_call(connection, "GET", "/status.json")
        assert status == 200
        pid = document["server"]["pid"]
        if pid in by_pid:
            connection.close()
        else:
            by_pid[pid] = connection
        if len(by_pid) == 2:
            assert set(by_pid) == set(cluster.pids())
            return by_pid
    pytest.fail(f"{MAX_CONNECTIONS} REST connections did not reach both workers")


# gRPC: a channel with a connection of its own per worker.


def grpc_channels_on_every_worker(cluster: Cluster) -> dict[int, grpc.Channel]:
    pids = cluster.pids()
    by_pid: dict[int, grpc.Channel] = {}
    for _ in range(MAX_CONNECTIONS):
        before = connections_by_pid(cluster.port, pids)
        channel = grpc.insecure_channel(f"127.0.0.1:{cluster.port}",
                                        options=[("grpc.use_local_subchannel_pool", 1)])
        assert Stub(channel).ServerLive(pb.ServerLiveRequest(), TIMEOUT).live
        after = connections_by_pid(cluster.port, pids)
        (pid,) = [pid for pid in pids if after[pid] - before[pid]]
        if pid in by_pid:
            channel.close()
        else:
            by_pid[pid] = channel
        if len(by_pid) == 2:
            return by_pid
    pytest.fail(f"{MAX_CONNECTIONS} gRPC connections did not reach both workers")


@pytest.fixture
def on_every_worker(cluster: Cluster) -> Iterator[tuple[dict[int, http.client.HTTPConnection],
                                                        dict[int, grpc.Channel]]]:
    rest, channels = rest_connections_on_every_worker(cluster), \
        grpc_channels_on_every_worker(cluster)
    yield rest, channels
    for connection in rest.values():
        connection.close()
    for channel in channels.values():
        channel.close()


def infer_body(values: list[float]) -> dict[str, Any]:
    return {"id": "w", "inputs": [{"name": "x", "datatype": "FP32", "shape": [len(values), 1],
                                   "data": values}]}


def grpc_infer(channel: grpc.Channel, model: str, values: list[float]) -> pb.ModelInferResponse:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="x", datatype="FP32", shape=[len(values), 1])
    request.raw_input_contents.append(np.array(values, "<f4").tobytes())
    return Stub(channel).ModelInfer(request, TIMEOUT)


def test_v2_infer_metadata_and_readiness_on_every_worker(cluster, on_every_worker):
    rest, channels = on_every_worker
    for connection in rest.values():
        assert rest_call(connection, "GET", "/v2/health/live")[0] == 200
        assert rest_call(connection, "GET", "/v2/health/ready")[0] == 200
        assert rest_call(connection, "GET", "/v2/models/default/ready")[0] == 200
        status, metadata = rest_call(connection, "GET", "/v2/models/default")
        assert status == 200
        assert metadata["versions"] == ["123"] and metadata["inputs"][0]["name"] == "x"
        status, answer = rest_call(connection, "POST", "/v2/models/default/infer",
                                   infer_body([1.0, 2.0]))
        assert status == 200, answer
        assert answer["id"] == "w" and answer["model_version"] == "123"
        assert answer["outputs"][0]["data"] == [2.5, 3.0]
        # TF Serving's REST on the same connection, same worker
        status, answer = rest_call(connection, "POST", "/v1/models/default:predict",
                                   {"instances": [[1.0]]})
        assert (status, answer) == (200, {"predictions": [[2.5]]})
    for channel in channels.values():
        stub = Stub(channel)
        assert stub.ServerReady(pb.ServerReadyRequest(), TIMEOUT).ready
        assert stub.ModelReady(pb.ModelReadyRequest(name="default"), TIMEOUT).ready
        metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name="default"), TIMEOUT)
        assert list(metadata.versions) == ["123"]
        response = grpc_infer(channel, "default", [1.0, 2.0])
        assert response.model_version == "123"
        assert np.frombuffer(response.raw_output_contents[0], "<f4").tolist() == [2.5, 3.0]


def reload_with(channel: grpc.Channel, cluster: Cluster, added: Path) -> None:
    request = model_management_pb2.ReloadConfigRequest()
    models = request.config.model_config_list.config
    models.add(name="default", base_path=str(cluster.root / "hpt_cpu"),
               model_platform="tensorflow")
    models.add(name="hpt", base_path=str(added), model_platform="tensorflow")
    model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request, TIMEOUT)


def test_a_model_reloaded_on_one_worker_is_served_by_v2_on_every_worker(
        cluster, on_every_worker, tmp_path):
    rest, channels = on_every_worker
    for connection in rest.values():
        status, answer = rest_call(connection, "GET", "/v2/models/hpt/ready")
        assert (status, answer) == (400, {"error": "Model version not ready"})
    added = copy_testdata("saved_model_half_plus_two_2_versions", tmp_path / "hpt")
    receiver = next(iter(channels.values()))
    reload_with(receiver, cluster, added)

    def rest_sees(connection: http.client.HTTPConnection) -> Callable[[], bool]:
        return lambda: rest_call(connection, "GET", "/v2/models/hpt/ready")[0] == 200

    def grpc_sees(channel: grpc.Channel) -> Callable[[], bool]:
        return lambda: Stub(channel).ModelReady(pb.ModelReadyRequest(name="hpt"), TIMEOUT).ready

    for pid, connection in rest.items():
        wait_until(rest_sees(connection), f"V2 REST of worker {pid} to see the reload",
                   FOLLOW_TIMEOUT, interval=0.1)
        status, metadata = rest_call(connection, "GET", "/v2/models/hpt")
        assert status == 200 and metadata["versions"] == ["124"]
        status, answer = rest_call(connection, "POST", "/v2/models/hpt/infer",
                                   infer_body([2.0]))
        assert status == 200 and answer["model_version"] == "124", answer
    for pid, channel in channels.items():
        wait_until(grpc_sees(channel), f"V2 gRPC of worker {pid} to see the reload",
                   FOLLOW_TIMEOUT, interval=0.1)
        assert grpc_infer(channel, "hpt", [2.0]).model_version == "124"
        # the model it had stays served
        assert grpc_infer(channel, "default", [2.0]).model_version == "123"
