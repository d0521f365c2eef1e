"""Fakes for the client tests: a PredictionService that echoes, fails or stalls on demand,
served on a free loopback port (plaintext or TLS), and test certificates made at run time."""

from __future__ import annotations

import datetime
import ipaddress
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc

from pyserving.client.apis import predict_pb2, prediction_service_pb2_grpc


class EchoPredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict returns its inputs as outputs, after failing with ``failures`` codes first and
    waiting up to ``max_delay`` seconds; counts calls and the most in flight at once."""

    def __init__(self, failures: tuple[grpc.StatusCode, ...] = (), max_delay: float = 0.0,
                 delay: float = 0.0) -> None:
        self.failures = list(failures)
        self.max_delay = max_delay
        self.delay = delay
        self.calls = 0
        self.metadata: list[tuple[tuple[str, str], ...]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self._lock = threading.Lock()

    def Predict(self, request: predict_pb2.PredictRequest,
                context: grpc.ServicerContext) -> predict_pb2.PredictResponse:
        with self._lock:
            self.calls += 1
            self.metadata.append(tuple(context.invocation_metadata()))
            failure = self.failures.pop(0) if self.failures else None
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if failure is not None:
                context.abort(failure, f"fake {failure.name}")
            time.sleep(self.delay + random.uniform(0, self.max_delay))
            response = predict_pb2.PredictResponse()
            response.model_spec.CopyFrom(request.model_spec)
            for name, tensor in request.inputs.items():
                if not request.output_filter or name in request.output_filter:
                    response.outputs[name].CopyFrom(tensor)
            return response
        finally:
            with self._lock:
                self.in_flight -= 1


def start_fake_server(service: EchoPredictionService,
                      credentials: grpc.ServerCredentials | None = None) -> tuple[grpc.Server,
                                                                                  int]:
    server = grpc.server(ThreadPoolExecutor(max_workers=16))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(service, server)
    address = "127.0.0.1:0"
    port = server.add_secure_port(address, credentials) if credentials \
        else server.add_insecure_port(address)
    server.start()
    return server, port


@dataclass(frozen=True)
class Certificates:
    """PEM files: a CA, a server certificate for ``server_name`` and a client certificate,
    all signed by the CA; ``other_ca`` signed none of them."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    server_name: str


def make_certificates(folder: Path, server_name: str = "pyserving.test",
                      server_ip: str | None = None) -> Certificates:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    def certificate(subject: str, key, issuer: str, issuer_key, *, ca: bool = False,
                    alt_names: Iterator[x509.GeneralName] = ()) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(name(subject))
                   .issuer_name(name(issuer)).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None),
                                  critical=True))
        alt_names = list(alt_names)
        if alt_names:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt_names),
                                            critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    def write(file_name: str, data: bytes) -> Path:
        path = folder / file_name
        path.write_bytes(data)
        return path

    def pem_key(key) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM,
                                 serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    def pem_cert(cert: x509.Certificate) -> bytes:
        return cert.public_bytes(serialization.Encoding.PEM)

    folder.mkdir(parents=True, exist_ok=True)
    ca_key, other_key = ec.generate_private_key(ec.SECP256R1()), \
        ec.generate_private_key(ec.SECP256R1())
    server_key, client_key = ec.generate_private_key(ec.SECP256R1()), \
        ec.generate_private_key(ec.SECP256R1())
    ca = certificate("pyserving test CA", ca_key, "pyserving test CA", ca_key, ca=True)
    other_ca = certificate("another CA", other_key, "another CA", other_key, ca=True)
    alt_names = [x509.DNSName(server_name)]
    if server_ip:
        alt_names.append(x509.IPAddress(ipaddress.ip_address(server_ip)))
    server = certificate(server_name, server_key, "pyserving test CA", ca_key,
                         alt_names=alt_names)
    client = certificate("pyserving test client", client_key, "pyserving test CA", ca_key)
    return Certificates(
        ca=write("ca.pem", pem_cert(ca)),
        server_cert=write("server.pem", pem_cert(server)),
        server_key=write("server.key", pem_key(server_key)),
        client_cert=write("client.pem", pem_cert(client)),
        client_key=write("client.key", pem_key(client_key)),
        other_ca=write("other_ca.pem", pem_cert(other_ca)),
        server_name=server_name)


def server_credentials(certificates: Certificates, *,
                       require_client_auth: bool = False) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(certificates.server_key.read_bytes(), certificates.server_cert.read_bytes())],
        root_certificates=certificates.ca.read_bytes() if require_client_auth else None,
        require_client_auth=require_client_auth)
