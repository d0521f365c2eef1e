"""TF Serving's SSLConfig: the text-format file of --ssl_config_file, as gRPC credentials.

tensorflow-serving-api does not ship ssl_config.proto, so the message is built here from its
definition (tensorflow_serving/config/ssl_config.proto), in a private descriptor pool so it
never clashes with another copy. The fields hold PEM text, not file names.
"""

from __future__ import annotations

import logging
from typing import Protocol

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from pyserving.server.config import parse_proto_text_file
from pyserving.server.errors import invalid_argument

log = logging.getLogger(__name__)

_FIELDS = (  # name, number, type
    ("server_key", 1, descriptor_pb2.FieldDescriptorProto.TYPE_STRING),
    ("server_cert", 2, descriptor_pb2.FieldDescriptorProto.TYPE_STRING),
    ("custom_ca", 3, descriptor_pb2.FieldDescriptorProto.TYPE_STRING),
    ("client_verify", 4, descriptor_pb2.FieldDescriptorProto.TYPE_BOOL),
)


def _message_class() -> type:
    pool = descriptor_pool.DescriptorPool()
    file = descriptor_pb2.FileDescriptorProto(
        name="pyserving/ssl_config.proto", package="tensorflow.serving", syntax="proto3")
    message = file.message_type.add(name="SSLConfig")
    for name, number, kind in _FIELDS:
        message.field.add(name=name, number=number, type=kind,
                          label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    pool.Add(file)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.SSLConfig"))


SSLConfig = _message_class()


class SSLConfigFields(Protocol):
    """What an SSLConfig message holds (its class is built at run time, so mypy sees no
    fields)."""

    server_key: str
    server_cert: str
    custom_ca: str
    client_verify: bool


def read_ssl_config(path: str) -> SSLConfigFields:
    config: SSLConfigFields = parse_proto_text_file(path, SSLConfig())
    return config


def _check_pem(config: SSLConfigFields, field: str, marker: str, path: str) -> None:
    # gRPC only says "Failed to bind"; the usual mistake is a file name instead of PEM text.
    if marker not in getattr(config, field):
        raise invalid_argument(f"SSLConfig {field} in '{path}' is not PEM text (no '{marker}'); "
                               f"it holds the PEM data itself, not a file name")


def credentials_from_ssl_config(config: SSLConfigFields, path: str) -> grpc.ServerCredentials:
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
