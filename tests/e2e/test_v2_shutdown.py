"""SIGTERM while V2 requests are in flight, over REST and gRPC, batched and not: the command-line
server lets them finish within --shutdown_grace_period_seconds and exits 0; a V2 request
longer than the grace gets its status at once and the server still exits 0, nothing hangs.
The model is tests/slow_models.py's: "sleep" sleeps max(ms) milliseconds."""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from pyserving.client.protos.inference import grpc_service_pb2 as pb
from pyserving.client.protos.inference import grpc_service_pb2_grpc
from server_process import Launcher, ServerProcess
from slow_models import MODEL, slow_base, slow_model  # noqa: F401 - fixtures
from support import free_port, metrics_page_samples, wait_until
from v2_support import http

RPC_TIMEOUT = 60.0
EXIT_TIMEOUT = 30.0
STOPPING = "stopping the gRPC server: in-flight RPCs have"
Stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launcher]:
    launcher = Launcher(tmp_path)
    yield launcher
    launcher.close()


class V2Server:
    """A server process of the slow model with its V2 stub, REST port and metrics page."""

    def __init__(self, process: ServerProcess, stub: Stub, channel: grpc.Channel,
                 rest_port: int) -> None:
        self.process, self.stub, self.channel, self.rest_port = process, stub, channel, rest_port

    def in_flight(self, entrypoint: str) -> int:
        url = f"http://127.0.0.1:{self.rest_port}/metrics"
        with urllib.request.urlopen(url, timeout=RPC_TIMEOUT) as page:
            samples = metrics_page_samples(page.read().decode())
        labels = frozenset({("model_name", MODEL), ("API", "ModelInfer"),
                            ("entrypoint", entrypoint)})
        return int(samples.get(("pyserving_inflight_requests", labels), 0))


@pytest.fixture
def start(launch: Launcher, slow_base: Path, tmp_path: Path  # noqa: F811 - a fixture
          ) -> Iterator[Callable[..., V2Server]]:
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true path: "/metrics" }')
    channels: list[grpc.Channel] = []

    def run(*flags: str) -> V2Server:
        rest_port = free_port()
        process = launch("--port=0", f"--model_name={MODEL}", f"--model_base_path={slow_base}",
                         f"--rest_api_port={rest_port}", f"--monitoring_config_file={monitoring}",
                         *flags)
        channel = grpc.insecure_channel(process.tcp_target())
        channels.append(channel)
        server = V2Server(process, Stub(channel), channel, rest_port)
        assert grpc_sleep(server.stub, 0) == 0
        assert rest_sleep(rest_port, 0) == (200, 0)
        return server

    yield run
    for channel in channels:
        channel.close()


def infer_request(ms: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="ms", datatype="INT64", shape=[1])
    request.raw_input_contents.append(np.array([ms], "<i8").tobytes())
    request.outputs.add(name="ms")
    return request


def grpc_sleep(stub: Stub, ms: int) -> int:
    response = stub.ModelInfer(infer_request(ms), RPC_TIMEOUT)
    return int(np.frombuffer(response.raw_output_contents[0], "<i8")[0])


def rest_sleep(port: int, ms: int, timeout: float = RPC_TIMEOUT) -> tuple[int, Any]:
    body = {"inputs": [{"name": "ms", "datatype": "INT64", "shape": [1], "data": [ms]}],
            "outputs": [{"name": "ms"}]}
    status, payload, _ = http("POST", f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer",
                              json.dumps(body).encode(), timeout=timeout)
    answer = json.loads(payload) if payload else {}
    return status, answer["outputs"][0]["data"][0] if status == 200 else answer


class RestCalls:
    """V2 REST requests on threads of their own; each one's (status, answer) or exception."""

    def __init__(self, port: int, sleeps: list[int]) -> None:
        self.results: list[Any] = [None] * len(sleeps)
        self._threads = [threading.Thread(target=self._call, args=(index, port, ms), daemon=True)
                         for index, ms in enumerate(sleeps)]
        for thread in self._threads:
            thread.start()

    def _call(self, index: int, port: int, ms: int) -> None:
        try:
            self.results[index] = rest_sleep(port, ms)
        except Exception as error:  # a dropped connection: the test reports it
            self.results[index] = error

    def join(self) -> list[Any]:
        for thread in self._threads:
            thread.join(RPC_TIMEOUT)
            assert not thread.is_alive(), "a V2 REST request hangs"
        return self.results


@pytest.mark.parametrize("batching", [False, True], ids=["unbatched", "batching"])
def test_sigterm_lets_in_flight_v2_requests_finish_and_exits_zero(start, batching):
    grace = 30.0
    server = start(f"--shutdown_grace_period_seconds={grace}",
                   *(["--enable_batching"] if batching else []))
    sleeps = [1500, 1600]
    rest = RestCalls(server.rest_port, sleeps)
    grpc_calls = [server.stub.ModelInfer.future(infer_request(ms), RPC_TIMEOUT) for ms in sleeps]
    wait_until(lambda: server.in_flight("REST") == 2 and server.in_flight("GRPC") == 2,
               "the V2 requests to reach the server")

    signalled = time.monotonic()
    server.process.popen.send_signal(signal.SIGTERM)
    server.process.wait_for_log(STOPPING)

    # None is dropped (batched, each answer is the max of the batch it ran in).
    got_grpc = [int(np.frombuffer(call.result(RPC_TIMEOUT).raw_output_contents[0], "<i8")[0])
                for call in grpc_calls]
    assert all(ms in sleeps for ms in got_grpc) if batching else got_grpc == sleeps, got_grpc
    statuses = rest.join()
    assert [status for status, _ in statuses] == [200, 200], statuses
    assert all(answer in sleeps for _, answer in statuses), statuses
    code = server.process.popen.wait(EXIT_TIMEOUT)
    assert code == 0
    assert time.monotonic() - signalled < grace
    stderr = server.process.stderr()
    assert "received SIGTERM, shutting down" in stderr
    assert "server stopped" in stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize("batching", [False, True], ids=["unbatched", "batching"])
def test_v2_requests_longer_than_the_grace_end_at_once_and_the_server_exits(start, batching):
    server = start("--shutdown_grace_period_seconds=0.5",
                   *(["--enable_batching"] if batching else []))
    long_ms = int((RPC_TIMEOUT - 10) * 1000)
    rest = RestCalls(server.rest_port, [long_ms])
    grpc_call = server.stub.ModelInfer.future(infer_request(long_ms), RPC_TIMEOUT)
    wait_until(lambda: server.in_flight("REST") == 1 and server.in_flight("GRPC") == 1,
               "the V2 requests to reach the server")

    signalled = time.monotonic()
    server.process.popen.send_signal(signal.SIGTERM)
    error = grpc_call.exception(timeout=EXIT_TIMEOUT)
    assert isinstance(error, grpc.RpcError)
    assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    # The REST client hears too: an error answer or its connection closed, not a hang.
    (result,) = rest.join()
    assert isinstance(result, Exception) or result[0] >= 400, result
    assert server.process.popen.wait(EXIT_TIMEOUT) == 0
    # The grace for gRPC, then for REST, then the TensorFlow runs are cancelled: no waiting
    # for the 50 s call on the REST pool, no request task left on a stopped loop.
    assert time.monotonic() - signalled < 10
    stderr = server.process.stderr()
    assert "Traceback" not in stderr
    assert "Task was destroyed" not in stderr
    assert "did not close" not in stderr
