"""What the rollout guard holds against a version: only failures that are the version's doing.

A TensorFlow error while the version runs counts (``model_failure`` marks it where the run
raises it), and so does NOT_FOUND for an arm whose version is not loaded (the router counts
that itself). Nothing refused before the version runs counts: validation of input names,
dtypes and shapes, admission, a full batch queue, a shutdown; nor the client's own cancel or
deadline, even when it ends a run.
"""

from __future__ import annotations

import grpc

from pyserving.server.errors import ServingError

_MARK = "pyserving_model_failure"
_CLIENT_ENDED = frozenset({grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED})


def model_failure(error: ServingError) -> ServingError:
    """Mark an error raised by running a version (TensorFlow's); returns it."""
    setattr(error, _MARK, True)
    return error


def counts_against_version(error: BaseException | None) -> bool:
    """Whether a request that ended with ``error`` (None: it succeeded) failed because of the
    version that served it."""
    return (isinstance(error, ServingError) and getattr(error, _MARK, False)
            and error.code not in _CLIENT_ENDED)
