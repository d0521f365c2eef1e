"""The one error type of the core: a gRPC status code and TF Serving's message."""

from __future__ import annotations

import errno
import os

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


def unimplemented(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.UNIMPLEMENTED, message)


def internal(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INTERNAL, message)


_TF_ERROR_TO_GRPC = {number: code for code, number in ERROR_CODE_NUMBERS.items()}


def from_tensorflow(error: Exception) -> ServingError:
    """Map a tf.errors.OpError (its ``error_code`` is a tensorflow.error.Code) to a ServingError."""
    number = getattr(error, "error_code", None)
    code = _TF_ERROR_TO_GRPC.get(number, grpc.StatusCode.INTERNAL) \
        if isinstance(number, int) else grpc.StatusCode.INTERNAL
    message = getattr(error, "message", None) or str(error)
    return ServingError(code, message)


def _errno_codes() -> dict[int, grpc.StatusCode]:
    """TensorFlow's ErrnoToCode (tsl/platform/errors.cc); anything else is UNKNOWN."""
    names = {
        grpc.StatusCode.INVALID_ARGUMENT: "EINVAL ENAMETOOLONG E2BIG EDESTADDRREQ EDOM EFAULT "
                                          "EILSEQ ENOPROTOOPT ENOSTR ENOTSOCK ENOTTY "
                                          "EPROTOTYPE ESPIPE",
        grpc.StatusCode.DEADLINE_EXCEEDED: "ETIMEDOUT ETIME",
        grpc.StatusCode.NOT_FOUND: "ENODEV ENOENT ENXIO ESRCH",
        grpc.StatusCode.ALREADY_EXISTS: "EEXIST EADDRNOTAVAIL EALREADY",
        grpc.StatusCode.PERMISSION_DENIED: "EPERM EACCES EROFS",
        grpc.StatusCode.FAILED_PRECONDITION: "ENOTEMPTY EISDIR ENOTDIR EADDRINUSE EBADF EBUSY "
                                             "ECHILD EISCONN ENOTBLK ENOTCONN EPIPE ESHUTDOWN "
                                             "ETXTBSY",
        grpc.StatusCode.RESOURCE_EXHAUSTED: "ENOSPC EDQUOT EMFILE EMLINK ENFILE ENOBUFS "
                                            "ENODATA ENOMEM ENOSR EUSERS",
        grpc.StatusCode.OUT_OF_RANGE: "EFBIG EOVERFLOW ERANGE",
        grpc.StatusCode.UNIMPLEMENTED: "ENOSYS ENOTSUP EAFNOSUPPORT EPFNOSUPPORT "
                                       "EPROTONOSUPPORT ESOCKTNOSUPPORT EXDEV",
        grpc.StatusCode.UNAVAILABLE: "EAGAIN ECONNREFUSED ECONNABORTED ECONNRESET EINTR "
                                     "EHOSTDOWN EHOSTUNREACH ENETDOWN ENETRESET ENETUNREACH "
                                     "ENOLCK ENOLINK ENONET",
        grpc.StatusCode.ABORTED: "EDEADLK ESTALE",
        grpc.StatusCode.CANCELLED: "ECANCELED",
    }
    return {getattr(errno, name): code for code, text in names.items()
            for name in text.split() if hasattr(errno, name)}


_ERRNO_CODES = _errno_codes()


def io_error(path: str, number: int) -> ServingError:
    """TensorFlow's IOError(path, errno): ``<path>; <strerror>`` with ErrnoToCode's code."""
    return ServingError(_ERRNO_CODES.get(number, grpc.StatusCode.UNKNOWN),
                        f"{path}; {os.strerror(number)}")
