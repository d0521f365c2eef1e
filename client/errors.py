"""The one error type of the client: a gRPC status code and the server's message."""

from __future__ import annotations

import grpc


class PredictionError(Exception):
    """A failed call: ``code`` is the gRPC status, ``message`` the server's text (TF Serving's,
    e.g. ``Servable not found for request: Latest(nope)``)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    def __reduce__(self) -> tuple:
        return type(self), (self.code, self.message)


def from_rpc_error(error: grpc.RpcError) -> PredictionError:
    """The PredictionError of a failed sync or asyncio call."""
    code = error.code() if callable(getattr(error, "code", None)) else None
    details = error.details() if callable(getattr(error, "details", None)) else None
    return PredictionError(code or grpc.StatusCode.UNKNOWN, details or str(error))
