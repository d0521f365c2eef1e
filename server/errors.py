"""The one error type of the core: a gRPC status code and TF Serving's message."""

from __future__ import annotations

import grpc

# tensorflow.error.Code values, for status protos (GetModelStatus) and logs.
ERROR_CODE_NUMBERS = {code: code.value[0] for code in grpc.StatusCode}


class ServingError(Exception):
    """An error a request sees: ``code`` is the gRPC status, ``message`` TF Serving's text."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


def invalid_argument(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.NOT_FOUND, message)


def failed_precondition(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.FAILED_PRECONDITION, message)


def unavailable(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.UNAVAILABLE, message)


def internal(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INTERNAL, message)


_TF_ERROR_TO_GRPC = {number: code for code, number in ERROR_CODE_NUMBERS.items()}


def from_tensorflow(error: Exception) -> ServingError:
    """Map a tf.errors.OpError (its ``error_code`` is a tensorflow.error.Code) to a ServingError."""
    number = getattr(error, "error_code", None)
    code = _TF_ERROR_TO_GRPC.get(number, grpc.StatusCode.INTERNAL)
    message = getattr(error, "message", None) or str(error)
    return ServingError(code, message)
