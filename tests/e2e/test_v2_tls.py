"""V2 with --ssl_config_file: the inference.GRPCInferenceService over TLS and mutual TLS
(stubs from protos/ with grpc.ssl_channel_credentials), plaintext V2 clients refused; the
REST port, plain HTTP as in TF Serving (docs/tls.md), still serves tritonclient.http next to
it, and a TLS client there fails at once without harming the server."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from client_fakes import Certificates, make_certificates
from pyserving.client.protos.inference import grpc_service_pb2 as pb
from pyserving.client.protos.inference import grpc_service_pb2_grpc
from support import free_port
from v2_support import export_v2_model

pytest.importorskip("cryptography")
httpclient = pytest.importorskip("tritonclient.http")

TIMEOUT = 20.0
X = np.arange(6, dtype=np.float32).reshape(2, 3)
K = np.array([1, 2], np.int64)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certificates"),
                             server_name="localhost", server_ip="127.0.0.1")


@pytest.fixture(scope="module")
def v2_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return export_v2_model(tmp_path_factory.mktemp("models") / "m")


def pem_text(path: Path) -> str:
    return '"' + path.read_text().strip().replace("\n", "\\n") + '"'


@pytest.fixture
def tls_server(serve: Callable, v2_model: str, tmp_path: Path, certificates: Certificates
               ) -> Callable[..., Any]:
    """A server of the V2 test model as "m" whose gRPC port speaks TLS (mutual TLS with
    ``client_verify``)."""

    def start(client_verify: bool = False, enable_batching: bool = False) -> Any:
        lines = [f"server_key: {pem_text(certificates.server_key)}",
                 f"server_cert: {pem_text(certificates.server_cert)}"]
        if client_verify:
            lines += [f"custom_ca: {pem_text(certificates.ca)}", "client_verify: true"]
        config = tmp_path / "ssl_config.txt"
        config.write_text("\n".join(lines) + "\n")
        return serve(model_name="m", model_base_path=v2_model, ssl_config_file=str(config),
                     rest_api_port=free_port(), enable_batching=enable_batching)

    return start


def credentials(certificates: Certificates, client_certificate: bool = False
                ) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=certificates.ca.read_bytes(),
        private_key=certificates.client_key.read_bytes() if client_certificate else None,
        certificate_chain=certificates.client_cert.read_bytes() if client_certificate else None)


def infer_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m", id="tls-1")
    request.inputs.add(name="x", datatype="FP32", shape=[2, 3])
    request.inputs.add(name="k", datatype="INT64", shape=[2])
    request.raw_input_contents.extend([X.tobytes(), K.tobytes()])
    request.outputs.add(name="doubled")
    return request


def v2_calls(channel: grpc.Channel) -> None:
    """Liveness, readiness, metadata and an inference over one channel, each checked."""
    stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    assert stub.ServerLive(pb.ServerLiveRequest(), TIMEOUT).live
    assert stub.ServerReady(pb.ServerReadyRequest(), TIMEOUT).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name="m"), TIMEOUT).ready
    metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name="m"), TIMEOUT)
    assert [tensor.name for tensor in metadata.inputs] == ["k", "x"]
    response = stub.ModelInfer(infer_request(), TIMEOUT)
    assert response.id == "tls-1"
    assert [output.name for output in response.outputs] == ["doubled"]
    assert np.frombuffer(response.raw_output_contents[0], "<f4").tolist() == \
        (X * 2).ravel().tolist()


def refused_code(channel: grpc.Channel) -> grpc.StatusCode:
    stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(infer_request(), TIMEOUT)
    return caught.value.code()


@pytest.mark.parametrize("enable_batching", [False, True], ids=["unbatched", "batching"])
def test_v2_grpc_over_tls_and_a_plaintext_client_refused(tls_server, certificates,
                                                         enable_batching):
    server = tls_server(enable_batching=enable_batching)
    with grpc.secure_channel(server.grpc_target, credentials(certificates)) as channel:
        v2_calls(channel)
    with grpc.insecure_channel(server.grpc_target) as plaintext:
        assert refused_code(plaintext) == grpc.StatusCode.UNAVAILABLE
    # A client that trusts another CA is refused too, and the server still serves.
    other = grpc.ssl_channel_credentials(root_certificates=certificates.other_ca.read_bytes())
    with grpc.secure_channel(server.grpc_target, other) as stranger:
        assert refused_code(stranger) == grpc.StatusCode.UNAVAILABLE
    with grpc.secure_channel(server.grpc_target, credentials(certificates)) as channel:
        v2_calls(channel)


def test_v2_grpc_over_mutual_tls_needs_the_client_certificate(tls_server, certificates):
    server = tls_server(client_verify=True)
    with grpc.secure_channel(server.grpc_target,
                             credentials(certificates, client_certificate=True)) as channel:
        v2_calls(channel)
    with grpc.secure_channel(server.grpc_target, credentials(certificates)) as anonymous:
        assert refused_code(anonymous) == grpc.StatusCode.UNAVAILABLE
    with grpc.insecure_channel(server.grpc_target) as plaintext:
        assert refused_code(plaintext) == grpc.StatusCode.UNAVAILABLE


def test_v2_rest_stays_plain_http_beside_tls_grpc(tls_server):
    server = tls_server()
    url = f"127.0.0.1:{server.rest_port}"
    # A client that speaks TLS to the plain HTTP port fails at once (no hang, no 5xx) ...
    secure = httpclient.InferenceServerClient(url, ssl=True, connection_timeout=TIMEOUT,
                                              network_timeout=TIMEOUT)
    try:
        with pytest.raises(Exception) as caught:  # gevent's SSL errors vary
            secure.is_server_live()
        assert "ssl" in f"{type(caught.value).__module__} {caught.value!r}".lower()
    finally:
        secure.close()
    # ... and tritonclient over plain HTTP is served as ever.
    client = httpclient.InferenceServerClient(url, connection_timeout=TIMEOUT,
                                              network_timeout=TIMEOUT)
    try:
        assert client.is_server_ready()
        x = httpclient.InferInput("x", [2, 3], "FP32")
        x.set_data_from_numpy(X, binary_data=True)
        k = httpclient.InferInput("k", [2], "INT64")
        k.set_data_from_numpy(K, binary_data=False)
        result = client.infer("m", [x, k], outputs=[
            httpclient.InferRequestedOutput("doubled", binary_data=True)])
        assert result.as_numpy("doubled").tolist() == (X * 2).tolist()
    finally:
        client.close()
