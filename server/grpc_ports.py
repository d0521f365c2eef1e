"""The gRPC server's ports and options: --grpc_channel_arguments, TF Serving's message-size
defaults, and binding a TCP port or a Unix socket (owner-only), over TLS when configured."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import grpc

from pyserving.server.errors import invalid_argument, unavailable

# TF Serving's gRPC defaults: unlimited message sizes (INT32_MAX).
DEFAULT_GRPC_OPTIONS = (
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
)


def parse_channel_arguments(text: str) -> list[tuple[str, Any]]:
    """--grpc_channel_arguments "k=v,k=v": integers become ints, the rest stay strings."""
    arguments: list[tuple[str, Any]] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, separator, value = item.partition("=")
        if not separator:
            raise invalid_argument(f"Invalid gRPC channel argument {item!r}; expected key=value")
        try:
            arguments.append((key.strip(), int(value)))
        except ValueError:
            arguments.append((key.strip(), value.strip()))
    return arguments


def server_options(channel_arguments: str) -> list[tuple[str, Any]]:
    """The gRPC server's options: gRPC keeps the first value of a repeated key, so the flag's
    go first to override TF Serving's defaults."""
    return parse_channel_arguments(channel_arguments) + list(DEFAULT_GRPC_OPTIONS)


@contextlib.contextmanager
def owner_only_files(address: str) -> Iterator[None]:
    """Around binding ``address``: a Unix socket is created 0600. gRPC has no option for a
    socket's mode and listens as soon as it binds, so the umask makes it owner-only from the
    start (a later chmod would leave a window)."""
    umask = os.umask(0o177) if address.startswith("unix:") else None
    try:
        yield
    finally:
        if umask is not None:
            os.umask(umask)


def bind(server: grpc.Server | grpc.aio.Server, address: str,
         credentials: grpc.ServerCredentials | None) -> int:
    """Listen on one address, over TLS when given credentials; a Unix socket is owner-only."""
    with owner_only_files(address):
        try:
            if credentials is not None:
                return server.add_secure_port(address, credentials)
            return server.add_insecure_port(address)
        except RuntimeError as error:
            tls = " with the TLS credentials of --ssl_config_file" if credentials else ""
            raise unavailable(f"Failed to bind gRPC server to {address}{tls}: {error}") from None
