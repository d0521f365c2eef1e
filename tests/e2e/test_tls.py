"""--ssl_config_file: TLS and mutual TLS on the gRPC ports, with certificates made at test time.

Every server loads TF Serving's half_plus_two; clients are plain gRPC and pyserving's own.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from client_fakes import Certificates, make_certificates
from pyserving.client import TLS, PredictionClient, PredictionError
from pyserving.client.apis import predict_pb2, prediction_service_pb2_grpc, types_pb2
from pyserving.server.errors import ServingError
from server_process import RUNNING_TCP, Launcher, assert_clean_startup_failure

pytest.importorskip("cryptography")

MODEL = "saved_model_half_plus_two_cpu"


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A CA, a server certificate for localhost and 127.0.0.1, and a client certificate."""
    return make_certificates(tmp_path_factory.mktemp("certificates"),
                             server_name="localhost", server_ip="127.0.0.1")


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """The same set from an unrelated CA: its client certificate must be refused."""
    return make_certificates(tmp_path_factory.mktemp("stranger"))


def pem_text(path: Path) -> str:
    """A PEM file as a text-format string value: its newlines escaped."""
    return '"' + path.read_text().strip().replace("\n", "\\n") + '"'


def write_ssl_config(folder: Path, certificates: Certificates, *, custom_ca: Path | None = None,
                     client_verify: bool = False) -> str:
    lines = [f"server_key: {pem_text(certificates.server_key)}",
             f"server_cert: {pem_text(certificates.server_cert)}"]
    if custom_ca is not None:
        lines.append(f"custom_ca: {pem_text(custom_ca)}")
    if client_verify:
        lines.append("client_verify: true")
    path = folder / "ssl_config.txt"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture
def tls_server(serve: Callable, testdata_model: Callable[..., str], tmp_path: Path,
               certificates: Certificates) -> Callable[..., object]:
    """Start a server of half_plus_two with an SSLConfig of the test certificates."""

    def start(enable_batching: bool = False, **ssl: object) -> object:
        config = write_ssl_config(tmp_path, certificates, **ssl)
        return serve(model_base_path=testdata_model(MODEL), ssl_config_file=config,
                     enable_batching=enable_batching)

    return start


def predict(target: str, tls: TLS | None) -> list[float]:
    with PredictionClient(target, credentials=tls, timeout=10, retries=0) as client:
        return client.predict("default", {"x": [1.0, 2.0]})["y"].tolist()


def refused(target: str, tls: TLS | None) -> PredictionError:
    with pytest.raises(PredictionError) as caught:
        predict(target, tls)
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    return caught.value


def client_tls(certificates: Certificates, client: Certificates | None = None) -> TLS:
    """Trust ``certificates``' CA; present ``client``'s certificate when given."""
    if client is None:
        return TLS(root_certificates=certificates.ca)
    return TLS(root_certificates=certificates.ca, certificate_chain=client.client_cert,
               private_key=client.client_key)


def grpc_predict(channel: grpc.Channel) -> list[float]:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "default"
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].tensor_shape.dim.add().size = 1
    request.inputs["x"].float_val.append(4.0)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    return list(stub.Predict(request, timeout=10).outputs["y"].float_val)


# TLS: the server proves who it is; any client may call.

def test_tls_client_trusting_the_ca_predicts(tls_server: Callable, certificates: Certificates):
    server = tls_server()
    credentials = grpc.ssl_channel_credentials(certificates.ca.read_bytes())
    with grpc.secure_channel(f"localhost:{server.port}", credentials) as channel:
        assert grpc_predict(channel) == [4.0]
    assert predict(server.grpc_target, client_tls(certificates)) == [2.5, 3.0]


def test_tls_refuses_a_plaintext_client(tls_server: Callable):
    server = tls_server()
    with grpc.insecure_channel(server.grpc_target) as channel, \
            pytest.raises(grpc.RpcError) as caught:
            grpc_predict(channel)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    refused(server.grpc_target, None)


def test_tls_client_trusting_another_ca_refuses_the_server(tls_server: Callable,
                                                           certificates: Certificates):
    server = tls_server()
    refused(server.grpc_target, TLS(root_certificates=certificates.other_ca))


def test_custom_ca_without_client_verify_asks_for_no_client_certificate(
        tls_server: Callable, certificates: Certificates, stranger: Certificates):
    # As TF Serving: custom_ca alone changes nothing; client certificates are not requested.
    server = tls_server(custom_ca=certificates.ca)
    assert predict(server.grpc_target, client_tls(certificates)) == [2.5, 3.0]
    assert predict(server.grpc_target, client_tls(certificates, stranger)) == [2.5, 3.0]


# Mutual TLS: client_verify with custom_ca.

@pytest.mark.parametrize("enable_batching", [False, True], ids=["threads", "batching"])
def test_client_verify_accepts_a_certificate_the_custom_ca_signed(
        tls_server: Callable, certificates: Certificates, enable_batching: bool):
    server = tls_server(enable_batching, custom_ca=certificates.ca, client_verify=True)
    assert predict(server.grpc_target, client_tls(certificates, certificates)) == [2.5, 3.0]


def test_client_verify_refuses_a_client_without_a_certificate(tls_server: Callable,
                                                              certificates: Certificates):
    server = tls_server(custom_ca=certificates.ca, client_verify=True)
    refused(server.grpc_target, client_tls(certificates))


def test_client_verify_refuses_a_certificate_of_another_ca(
        tls_server: Callable, certificates: Certificates, stranger: Certificates):
    server = tls_server(custom_ca=certificates.ca, client_verify=True)
    refused(server.grpc_target, client_tls(certificates, stranger))


def test_client_verify_without_custom_ca_refuses_every_client(
        tls_server: Callable, certificates: Certificates, caplog: pytest.LogCaptureFixture):
    # TF Serving requires a client certificate but has no CA to check it against.
    server = tls_server(client_verify=True)
    assert "every client will be refused" in caplog.text
    refused(server.grpc_target, client_tls(certificates, certificates))


def test_the_unix_socket_speaks_tls_too(serve: Callable, testdata_model: Callable[..., str],
                                        tmp_path_factory: pytest.TempPathFactory,
                                        certificates: Certificates):
    folder = tmp_path_factory.mktemp("uds")
    server = serve(port=0, grpc_socket_path=str(folder / "s.sock"),
                   model_base_path=testdata_model(MODEL),
                   ssl_config_file=write_ssl_config(folder, certificates))
    target = server.grpc_target
    assert target == f"unix:{folder / 's.sock'}"
    # A Unix socket's authority is its path: the client names the certificate's host.
    tls = TLS(root_certificates=certificates.ca, server_name="localhost")
    assert predict(target, tls) == [2.5, 3.0]
    refused(target, None)


# A bad --ssl_config_file stops start-up with TF Serving's message.

def start_with_config(serve: Callable, testdata_model: Callable[..., str],
                      config: Path) -> ServingError:
    with pytest.raises(ServingError) as caught:
        serve(model_base_path=testdata_model(MODEL), ssl_config_file=str(config))
    return caught.value


def test_a_missing_ssl_config_file(serve: Callable, testdata_model: Callable[..., str],
                                   tmp_path: Path):
    error = start_with_config(serve, testdata_model, tmp_path / "missing.txt")
    assert error.code == grpc.StatusCode.NOT_FOUND  # TensorFlow's ENOENT
    assert error.message == f"{tmp_path / 'missing.txt'}; No such file or directory"


def test_an_ssl_config_file_that_is_not_text_format(serve: Callable,
                                                    testdata_model: Callable[..., str],
                                                    tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture):
    config = tmp_path / "ssl.txt"
    config.write_text('server_key: "k"\nserver_certificate: "c"\n')
    with caplog.at_level(logging.ERROR, logger="pyserving.server.config"):
        error = start_with_config(serve, testdata_model, config)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.message == f"Invalid protobuf file: '{config}'"  # the parser's reason: logged
    assert any(record.getMessage().startswith(
        "Error parsing text-format tensorflow.serving.SSLConfig: 2:")
        and "server_certificate" in record.getMessage() for record in caplog.records)


def test_file_names_instead_of_pem_text(serve: Callable, testdata_model: Callable[..., str],
                                        tmp_path: Path, certificates: Certificates):
    config = tmp_path / "ssl.txt"
    config.write_text(f'server_key: "{certificates.server_key}"\n'
                      f'server_cert: "{certificates.server_cert}"\n')
    error = start_with_config(serve, testdata_model, config)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.message.startswith(f"SSLConfig server_key in '{config}' is not PEM text")


def test_a_corrupt_key_fails_the_bind(serve: Callable, testdata_model: Callable[..., str],
                                      tmp_path: Path, certificates: Certificates):
    config = tmp_path / "ssl.txt"
    config.write_text('server_key: "-----BEGIN PRIVATE KEY-----\\nAAAA\\n'
                      '-----END PRIVATE KEY-----"\n'
                      f"server_cert: {pem_text(certificates.server_cert)}\n")
    error = start_with_config(serve, testdata_model, config)
    assert error.code == grpc.StatusCode.UNAVAILABLE
    assert error.message.startswith("Failed to bind gRPC server to 127.0.0.1:0 with the TLS "
                                    "credentials of --ssl_config_file")


# The command line.

@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launcher]:
    launcher = Launcher(tmp_path / "processes")
    yield launcher
    launcher.close()


def test_the_command_line_serves_mutual_tls(launch: Launcher, tmp_path: Path,
                                            testdata_model: Callable[..., str],
                                            certificates: Certificates):
    config = write_ssl_config(tmp_path, certificates, custom_ca=certificates.ca,
                              client_verify=True)
    bad_config = tmp_path / "bad_ssl.txt"
    bad_config.write_text("client_verify: maybe\n")
    base_path = testdata_model(MODEL)
    good = launch("--port=0", f"--ssl_config_file={config}", f"--model_base_path={base_path}")
    bad = launch("--port=0", f"--ssl_config_file={bad_config}",
                 f"--model_base_path={base_path}")

    target = good.tcp_target()
    assert predict(target, client_tls(certificates, certificates)) == [2.5, 3.0]
    refused(target, client_tls(certificates))
    assert "Using SSL credentials" in good.stderr()
    assert "--ssl_config_file is accepted" not in good.stderr()

    assert_clean_startup_failure(bad, f"Invalid protobuf file: '{bad_config}'")
    assert re.search(r"Error parsing text-format tensorflow\.serving\.SSLConfig: 1:\d+",
                     bad.stderr())
    assert not RUNNING_TCP.search(bad.stderr())
