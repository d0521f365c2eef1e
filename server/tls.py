"""TF Serving's SSLConfig: the text-format file of --ssl_config_file, as gRPC credentials.

tensorflow-serving-api does not ship ssl_config.proto: protos/pyserving/ssl_config.proto is
TF Serving's message (same names and numbers), compiled by `make protos`. The fields hold PEM
text, not file names.
"""

from __future__ import annotations

import logging

import grpc

from pyserving.client.protos.pyserving.ssl_config_pb2 import SSLConfig
from pyserving.server.config import parse_proto_text_file
from pyserving.server.errors import invalid_argument

log = logging.getLogger(__name__)


def read_ssl_config(path: str) -> SSLConfig:
    """Parse a text-format SSLConfig file (errors as TF Serving's ParseProtoTextFile)."""
    return parse_proto_text_file(path, SSLConfig())


def _check_pem(config: SSLConfig, field: str, marker: str, path: str) -> None:
    # gRPC only says "Failed to bind"; the usual mistake is a file name instead of PEM text.
    if marker not in getattr(config, field):
        raise invalid_argument(f"SSLConfig {field} in '{path}' is not PEM text (no '{marker}'); "
                               f"it holds the PEM data itself, not a file name")


def credentials_from_ssl_config(config: SSLConfig, path: str) -> grpc.ServerCredentials:
    """TF Serving's BuildServerCredentials: client_verify requires a client certificate that
    custom_ca signed; without client_verify no client certificate is asked for."""
    _check_pem(config, "server_key", "PRIVATE KEY-----", path)
    _check_pem(config, "server_cert", "-----BEGIN CERTIFICATE-----", path)
    pairs = [(config.server_key.encode(), config.server_cert.encode())]
    if config.client_verify and not config.custom_ca:
        # As in TF Serving: client certificates are required, but nothing can vouch for one.
        log.warning("SSLConfig in '%s' sets client_verify without custom_ca: every client "
                    "will be refused", path)
        return grpc.dynamic_ssl_server_credentials(
            grpc.ssl_server_certificate_configuration(pairs),
            _unchanged,  # type: ignore[arg-type]  # typeshed's stub omits the None gRPC allows
            require_client_authentication=True)
    return grpc.ssl_server_credentials(
        pairs, root_certificates=config.custom_ca.encode() if config.custom_ca else None,
        require_client_auth=config.client_verify)


def _unchanged() -> None:
    """A certificate fetcher whose None tells gRPC to keep the current certificates."""
    return None


def server_credentials(ssl_config_file: str) -> grpc.ServerCredentials | None:
    """The credentials of every gRPC port: TLS from --ssl_config_file, None (plaintext)
    when it is empty."""
    if not ssl_config_file:
        return None
    log.info("Using SSL credentials")
    return credentials_from_ssl_config(read_ssl_config(ssl_config_file), ssl_config_file)
