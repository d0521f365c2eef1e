"""A misbehaving V2 client next to a good one: binary bodies whose header length lies,
truncated bodies, huge declared shapes, clients that hang up mid-body, over REST (raw
sockets) and gRPC. Each bad request gets a 4xx or a clear gRPC status, and the good client's
concurrent V2 and TF Serving requests all succeed with the right answers."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest

from pyserving.client.protos.inference import grpc_service_pb2 as pb
from pyserving.client.protos.inference import grpc_service_pb2_grpc
from support import post_json, wait_until
from v2_support import export_v2_model, http

TIMEOUT = 30.0
HEADER = "Inference-Header-Content-Length"
X = np.arange(6, dtype=np.float32).reshape(2, 3)
K = np.array([1, 2], np.int64)


@pytest.fixture(scope="module")
def v2_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return export_v2_model(tmp_path_factory.mktemp("models") / "m")


@pytest.fixture(params=[False, True], ids=["unbatched", "batching"])
def server(request: pytest.FixtureRequest, serve: Callable, v2_model: str) -> Any:
    from support import free_port

    return serve(model_name="m", model_base_path=v2_model, rest_api_port=free_port(),
                 enable_batching=request.param)


@pytest.fixture
def stub(server: Any) -> Iterator[grpc_service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)


def good_document() -> dict[str, Any]:
    return {"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [2, 3], "data": X.ravel().tolist()},
        {"name": "k", "datatype": "INT64", "shape": [2], "data": K.tolist()}]}


class GoodClient:
    """V2 REST, V2 gRPC and TF Serving REST requests in a loop on a thread until stopped;
    every answer is checked, and failures are kept for the test to report."""

    def __init__(self, server: Any, stub: grpc_service_pb2_grpc.GRPCInferenceServiceStub
                 ) -> None:
        self._server, self._stub = server, stub
        self._stop = threading.Event()
        self.done = 0
        self.failures: list[str] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> GoodClient:
        self._thread.start()
        wait_until(lambda: self.done >= 3 or self.failures, "the good client's first requests")
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT)
        assert not self._thread.is_alive()

    def assert_all_succeeded(self, at_least: int) -> None:
        assert not self.failures, self.failures[:3]
        assert self.done >= at_least

    def _run(self) -> None:
        calls = [self._v2_rest, self._v2_grpc, self._tf_rest]
        while not self._stop.is_set():
            for call in calls:
                try:
                    call()
                except Exception as error:  # every failure is reported
                    self.failures.append(f"{call.__name__}: {error!r}")
                self.done += 1

    def _v2_rest(self) -> None:
        status, body, _ = http("POST", f"http://127.0.0.1:{self._server.rest_port}"
                               "/v2/models/m/infer", json.dumps(good_document()).encode(),
                               timeout=TIMEOUT)
        assert status == 200, body
        outputs = {o["name"]: o["data"] for o in json.loads(body)["outputs"]}
        assert outputs["doubled"] == (X * 2).ravel().tolist()
        assert outputs["k_out"] == [2, 3]

    def _v2_grpc(self) -> None:
        request = pb.ModelInferRequest(model_name="m")
        request.inputs.add(name="x", datatype="FP32", shape=[2, 3])
        request.inputs.add(name="k", datatype="INT64", shape=[2])
        request.raw_input_contents.extend([X.tobytes(), K.tobytes()])
        response = self._stub.ModelInfer(request, TIMEOUT)
        raw = dict(zip((o.name for o in response.outputs), response.raw_output_contents,
                       strict=True))
        assert np.frombuffer(raw["doubled"], "<f4").tolist() == (X * 2).ravel().tolist()

    def _tf_rest(self) -> None:
        status, answer = post_json(
            f"http://127.0.0.1:{self._server.rest_port}/v1/models/m:predict",
            {"inputs": {"x": X.tolist(), "k": K.tolist()}}, TIMEOUT)
        assert status == 200, answer
        assert answer["outputs"]["k_out"] == [2, 3]


def raw_exchange(port: int, head: bytes, body: bytes, *, hang_up: bool = False) -> bytes:
    """Send a request head and (part of) a body on a socket of its own; the answer's bytes,
    or b"" after hanging up without reading one."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as connection:
        connection.sendall(head + body)
        if hang_up:
            return b""
        connection.shutdown(socket.SHUT_WR)  # the rest of the declared body never comes
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def head(content_length: int, header_length: int | None = None) -> bytes:
    lines = ["POST /v2/models/m/infer HTTP/1.1", "Host: 127.0.0.1",
             f"Content-Length: {content_length}", "Content-Type: application/octet-stream"]
    if header_length is not None:
        lines.append(f"{HEADER}: {header_length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def binary_body(size: int, shape: list[int]) -> tuple[bytes, bytes]:
    document = json.dumps({"inputs": [
        {"name": "x", "datatype": "FP32", "shape": shape,
         "parameters": {"binary_data_size": size}},
        {"name": "k", "datatype": "INT64", "shape": [2], "data": [1, 2]}]}).encode()
    return document, X.tobytes()[:size]


def status_of(port: int, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    status, payload, _ = http("POST", f"http://127.0.0.1:{port}/v2/models/m/infer", body,
                              headers, TIMEOUT)
    return status, json.loads(payload).get("error", "") if payload else ""


def test_lying_truncated_and_huge_rest_requests_leave_a_good_client_unharmed(server, stub):
    port = server.rest_port
    document, tensor = binary_body(24, [2, 3])
    with GoodClient(server, stub) as good:
        for _ in range(3):
            # The header length claims more than the body holds, or cuts the JSON short.
            assert status_of(port, document + tensor, {HEADER: str(len(document) + 999)}) == (
                400, f"inference header size should be in range (0, {len(document) + 24}), "
                     f"got: {len(document) + 999}")
            status, error = status_of(port, document + tensor, {HEADER: str(len(document) - 5)})
            assert status == 400 and error.startswith("failed to parse the request JSON"), error
            assert status_of(port, document + tensor, {HEADER: "-1"})[0] == 400
            assert status_of(port, document + tensor, {HEADER: "lots"}) == (
                400, f"Unable to parse {HEADER}, got: lots")
            # A binary tensor shorter than it says.
            short, _ = binary_body(24, [2, 3])
            assert status_of(port, short + tensor[:10], {HEADER: str(len(short))}) == (
                400, "unexpected size for input 'x', expecting 14 additional bytes")
            # Huge declared shapes: refused by their element count, nothing allocated.
            huge, _ = binary_body(24, [2**40, 2**40])
            status, error = status_of(port, huge + tensor, {HEADER: str(len(huge))})
            assert status == 400 and "unexpected size for input 'x'" in error, error
            status, error = status_of(port, json.dumps({"inputs": [
                {"name": "x", "datatype": "FP32", "shape": [2**62, 2**62, 3],
                 "data": [1.0, 2.0, 3.0]},
                {"name": "k", "datatype": "INT64", "shape": [2], "data": [1, 2]}]}).encode(), {})
            assert status == 400 and "unexpected number of elements for input 'x'" in error, \
                error
            # A body shorter than its Content-Length, the client then waiting for an answer:
            # aiohttp answers 400 when the stream ends early, or closes the connection.
            answer = raw_exchange(port, head(len(document) + 24, len(document)),
                                  document + tensor[:8])
            assert answer == b"" or answer.startswith(b"HTTP/1.1 400"), answer[:200]
            # A client that hangs up mid-body.
            raw_exchange(port, head(10_000_000, len(document)), document + tensor[:8],
                         hang_up=True)
    good.assert_all_succeeded(at_least=9)
    # The server still answers, and nothing is left running.
    assert status_of(port, json.dumps(good_document()).encode(), {})[0] == 200
    assert list(server.core.manager.available_versions("m")) == [1]


def test_lying_and_huge_grpc_requests_get_clear_statuses_next_to_a_good_client(server, stub):
    def refused(request: pb.ModelInferRequest) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request, TIMEOUT)
        return caught.value.code(), caught.value.details()

    def infer(shape: list[int], raw: bytes) -> pb.ModelInferRequest:
        request = pb.ModelInferRequest(model_name="m")
        request.inputs.add(name="x", datatype="FP32", shape=shape)
        request.inputs.add(name="k", datatype="INT64", shape=[2])
        request.raw_input_contents.extend([raw, K.tobytes()])
        return request

    with GoodClient(server, stub) as good:
        for _ in range(3):
            code, text = refused(infer([2**40, 2**40], X.tobytes()))
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            assert "unexpected size for input 'x'" in text, text
            code, text = refused(infer([2, 3], X.tobytes()[:20]))
            assert (code, text) == (grpc.StatusCode.INVALID_ARGUMENT,
                                    "unexpected size for input 'x', expecting 24 bytes for "
                                    "FP32 [2, 3] but got 20")
            typed = pb.ModelInferRequest(model_name="m")
            typed.inputs.add(name="x", datatype="FP32", shape=[2**62, 2**62])
            typed.inputs[0].contents.fp32_contents.extend([1.0, 2.0])
            code, text = refused(typed)
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            assert "unexpected number of elements for input 'x'" in text, text
            # A client that gives up at once: its call is cancelled, nothing else is.
            future = stub.ModelInfer.future(infer([2, 3], X.tobytes()), TIMEOUT)
            future.cancel()
    good.assert_all_succeeded(at_least=9)
