"""gRPC channels for the client: TLS and mTLS, keepalive, message sizes, reconnect backoff."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import grpc

Pem = Union[bytes, str, "os.PathLike[str]"]
"""PEM data as bytes, PEM text, or the path of a PEM file."""


def read_pem(value: Pem) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str) and value.lstrip().startswith("-----BEGIN"):
        return value.encode("ascii")
    return Path(value).read_bytes()


@dataclass(frozen=True)
class TLS:
    """TLS settings; a client certificate and key make it mutual TLS."""

    root_certificates: Pem | None = None  # CA bundle; None: gRPC's default roots
    certificate_chain: Pem | None = None  # client certificate (mTLS)
    private_key: Pem | None = None  # client key (mTLS)
    server_name: str | None = None  # name to verify instead of the target's host

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ValueError("mutual TLS needs both a client certificate and its private key")
        return grpc.ssl_channel_credentials(
            root_certificates=None if self.root_certificates is None
            else read_pem(self.root_certificates),
            private_key=None if self.private_key is None else read_pem(self.private_key),
            certificate_chain=None if self.certificate_chain is None
            else read_pem(self.certificate_chain))


Credentials = TLS | grpc.ChannelCredentials | None


@dataclass(frozen=True)
class ChannelOptions:
    """Channel arguments the client sets; ``extra`` passes any other ``grpc.*`` argument."""

    max_message_bytes: int = -1  # send and receive limit; -1 is unlimited, as TF Serving's
    keepalive_time: float | None = None  # seconds between pings on an idle connection
    keepalive_timeout: float | None = None  # seconds to wait for a ping's answer
    keepalive_without_calls: bool = False  # ping even when no call is in flight
    lb_policy: str | None = None  # grpc.lb_policy_name, e.g. "round_robin"
    # A refused connection is retried after these (seconds, growing in between), so a server
    # that comes up is found by the next retry rather than after gRPC's default 1-120 s.
    initial_reconnect_backoff: float = 0.1
    max_reconnect_backoff: float = 5.0
    extra: tuple[tuple[str, Any], ...] = ()

    def arguments(self, tls: TLS | None = None) -> list[tuple[str, Any]]:
        """The gRPC channel arguments."""
        args: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.initial_reconnect_backoff_ms", _ms(self.initial_reconnect_backoff)),
            ("grpc.max_reconnect_backoff_ms", _ms(self.max_reconnect_backoff)),
        ]
        if self.keepalive_time is not None:
            args.append(("grpc.keepalive_time_ms", _ms(self.keepalive_time)))
        if self.keepalive_timeout is not None:
            args.append(("grpc.keepalive_timeout_ms", _ms(self.keepalive_timeout)))
        if self.keepalive_without_calls:
            args.append(("grpc.keepalive_permit_without_calls", 1))
        if self.lb_policy:
            args.append(("grpc.lb_policy_name", self.lb_policy))
        if tls is not None and tls.server_name:
            args.append(("grpc.ssl_target_name_override", tls.server_name))
        overridden = {key for key, _ in self.extra}
        return [arg for arg in args if arg[0] not in overridden] + list(self.extra)


def _ms(seconds: float) -> int:
    return max(int(seconds * 1000), 1)


def create_channel(target: str, credentials: Credentials = None,
                   options: ChannelOptions | None = None) -> grpc.Channel:
    """A sync channel: plaintext without credentials, else TLS."""
    tls, secure = _split(credentials)
    args = (options or ChannelOptions()).arguments(tls)
    if secure is None:
        return grpc.insecure_channel(target, options=args)
    return grpc.secure_channel(target, secure, options=args)


def create_aio_channel(target: str, credentials: Credentials = None,
                       options: ChannelOptions | None = None) -> grpc.aio.Channel:
    """The asyncio twin of create_channel."""
    tls, secure = _split(credentials)
    args = (options or ChannelOptions()).arguments(tls)
    if secure is None:
        return grpc.aio.insecure_channel(target, options=args)
    return grpc.aio.secure_channel(target, secure, options=args)


def _split(credentials: Credentials) -> tuple[TLS | None, grpc.ChannelCredentials | None]:
    if isinstance(credentials, TLS):
        return credentials, credentials.credentials()
    return None, credentials
