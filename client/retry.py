"""Retrying UNAVAILABLE calls with exponential backoff and jitter, within one deadline."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from pyserving.client.errors import PredictionError, from_rpc_error

Metadata = Sequence[tuple[str, str]]


@dataclass(frozen=True)
class RetryPolicy:
    """Which failures are retried, how often and how far apart.

    The call's timeout bounds all attempts together: no attempt starts, and no backoff sleeps,
    past it.
    """

    max_attempts: int = 4  # first call included
    initial_backoff: float = 0.1  # seconds before the first retry
    max_backoff: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.2  # each delay is scaled by a random factor in [1 - jitter, 1 + jitter]
    retry_resource_exhausted: bool = False  # also retry RESOURCE_EXHAUSTED (e.g. full queues)

    def retries(self, code: grpc.StatusCode) -> bool:
        return code == grpc.StatusCode.UNAVAILABLE or (
            self.retry_resource_exhausted and code == grpc.StatusCode.RESOURCE_EXHAUSTED)

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        base = min(self.initial_backoff * self.multiplier ** (attempt - 1), self.max_backoff)
        return base * random.uniform(1 - self.jitter, 1 + self.jitter)

    def delay_after(self, attempt: int, error: PredictionError,
                    deadline: float | None) -> float | None:
        """How long to wait before the next attempt, or None to give up with ``error``."""
        if attempt >= self.max_attempts or not self.retries(error.code):
            return None
        delay = self.backoff(attempt)
        if deadline is not None and time.monotonic() + delay >= deadline:
            return None
        return delay


Retries = int | RetryPolicy


def retry_policy(retries: Retries) -> RetryPolicy:
    """``retries`` as a policy: an int is the number of retries after the first attempt."""
    if isinstance(retries, RetryPolicy):
        return retries
    if retries < 0:
        raise ValueError("retries must be >= 0")
    return RetryPolicy(max_attempts=retries + 1)


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - time.monotonic(), 0.0)


def call_with_retry(method: Callable[..., Any], request: Any, *, timeout: float | None,
                    policy: RetryPolicy, metadata: Metadata | None = None) -> Any:
    """Call a sync unary stub method; failures raise PredictionError."""
    deadline = None if timeout is None else time.monotonic() + timeout
    attempt = 1
    while True:
        try:
            return method(request, timeout=_remaining(deadline), metadata=metadata)
        except grpc.RpcError as rpc_error:
            error = from_rpc_error(rpc_error)
        delay = policy.delay_after(attempt, error, deadline)
        if delay is None:
            raise error
        time.sleep(delay)
        attempt += 1


async def call_with_retry_async(method: Callable[..., Awaitable[Any]], request: Any, *,
                                timeout: float | None, policy: RetryPolicy,
                                metadata: Metadata | None = None) -> Any:
    """The asyncio twin of call_with_retry."""
    deadline = None if timeout is None else time.monotonic() + timeout
    attempt = 1
    while True:
        try:
            return await method(request, timeout=_remaining(deadline), metadata=metadata)
        except grpc.RpcError as rpc_error:
            error = from_rpc_error(rpc_error)
        delay = policy.delay_after(attempt, error, deadline)
        if delay is None:
            raise error
        await asyncio.sleep(delay)
        attempt += 1
