"""The client's TLS and mutual-TLS channels against a TLS gRPC server, with certificates
made at test time."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator

import grpc
import pytest

from client_fakes import (
    Certificates,
    EchoPredictionService,
    make_certificates,
    server_credentials,
    start_fake_server,
)
from pyserving.client import (
    TLS,
    AsyncPredictionClient,
    ChannelOptions,
    PredictionClient,
    PredictionError,
)

pytest.importorskip("cryptography")


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certificates"))


def _serve(certificates: Certificates, *, require_client_auth: bool) -> Iterator[str]:
    credentials = server_credentials(certificates, require_client_auth=require_client_auth)
    server, port = start_fake_server(EchoPredictionService(), credentials)
    yield f"127.0.0.1:{port}"
    server.stop(None)


@pytest.fixture(scope="module")
def tls_target(certificates: Certificates) -> Iterator[str]:
    yield from _serve(certificates, require_client_auth=False)


@pytest.fixture(scope="module")
def mtls_target(certificates: Certificates) -> Iterator[str]:
    yield from _serve(certificates, require_client_auth=True)


def echo(target: str, tls: TLS | None) -> list[float]:
    with PredictionClient(target, credentials=tls, timeout=5, retries=0) as client:
        return client.predict("m", {"x": [1.0, 2.0]})["x"].tolist()


def refused(target: str, tls: TLS | None) -> PredictionError:
    with pytest.raises(PredictionError) as caught:
        echo(target, tls)
    return caught.value


def test_tls_with_the_ca_as_a_path(tls_target: str, certificates: Certificates):
    tls = TLS(root_certificates=certificates.ca, server_name=certificates.server_name)
    assert echo(tls_target, tls) == [1.0, 2.0]


def test_tls_with_pem_bytes_and_text(tls_target: str, certificates: Certificates):
    pem = certificates.ca.read_bytes()
    for root in (pem, pem.decode(), str(certificates.ca)):
        assert echo(tls_target, TLS(root, server_name=certificates.server_name)) == [1.0, 2.0]


def test_tls_checks_the_servers_name(tls_target: str, certificates: Certificates):
    error = refused(tls_target, TLS(root_certificates=certificates.ca))  # 127.0.0.1 is not it
    assert error.code == grpc.StatusCode.UNAVAILABLE


def test_tls_refuses_a_server_of_another_ca(tls_target: str, certificates: Certificates):
    tls = TLS(root_certificates=certificates.other_ca, server_name=certificates.server_name)
    assert refused(tls_target, tls).code == grpc.StatusCode.UNAVAILABLE


def test_a_plaintext_client_cannot_talk_to_a_tls_server(tls_target: str):
    assert refused(tls_target, None).code == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_with_a_client_certificate(mtls_target: str, certificates: Certificates):
    tls = TLS(root_certificates=certificates.ca, certificate_chain=certificates.client_cert,
              private_key=certificates.client_key, server_name=certificates.server_name)
    assert echo(mtls_target, tls) == [1.0, 2.0]


def test_mutual_tls_refuses_a_client_without_a_certificate(mtls_target: str,
                                                           certificates: Certificates):
    tls = TLS(root_certificates=certificates.ca, server_name=certificates.server_name)
    assert refused(mtls_target, tls).code == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_needs_the_certificate_and_its_key(certificates: Certificates):
    with pytest.raises(ValueError, match="both"):
        PredictionClient("127.0.0.1:1", credentials=TLS(
            root_certificates=certificates.ca, certificate_chain=certificates.client_cert))


def test_grpc_channel_credentials_are_taken_as_they_are(tls_target: str,
                                                        certificates: Certificates):
    credentials = grpc.ssl_channel_credentials(certificates.ca.read_bytes())
    override = ChannelOptions(extra=(("grpc.ssl_target_name_override",
                                      certificates.server_name),))
    with PredictionClient(tls_target, credentials=credentials, channel_options=override,
                          retries=0, timeout=5) as client:
        assert client.predict("m", {"x": [1.0]})["x"].tolist() == [1.0]


def test_async_client_over_mutual_tls(mtls_target: str, certificates: Certificates):
    tls = TLS(root_certificates=certificates.ca, certificate_chain=certificates.client_cert,
              private_key=certificates.client_key, server_name=certificates.server_name)

    async def main() -> list[float]:
        async with AsyncPredictionClient(mtls_target, credentials=tls, timeout=5) as client:
            return (await client.predict("m", {"x": [3.0]}))["x"].tolist()

    assert asyncio.run(main()) == [3.0]


def test_the_command_line_speaks_mutual_tls(mtls_target: str, certificates: Certificates):
    def predict(*tls_flags: object) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "pyserving.client.cli", "predict", "--target", mtls_target,
             "--model", "m", "--input", "x=[1.5]", "--retries", "0", "--timeout", "5",
             "--ca-cert", certificates.ca, "--server-name", certificates.server_name,
             *tls_flags], capture_output=True, text=True, timeout=60)

    result = predict("--client-cert", certificates.client_cert, "--client-key",
                     certificates.client_key)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"x": [1.5]}
    refused = predict()
    assert refused.returncode == 1 and "UNAVAILABLE" in refused.stderr
    half = predict("--client-cert", certificates.client_cert)
    assert half.returncode == 2 and "both" in half.stderr
