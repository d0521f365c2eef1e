"""servable.py's step drivers: one generator per request kind, driven in a thread or on an
event loop, with the runner's errors raised where the call was yielded."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pyserving.server.servable import Steps, run_steps, run_steps_async


def _steps(log: list[str]) -> Steps[Any]:
    try:
        outputs = yield "servable", "signature", [("x", 1)], ["y"]
    except ValueError as error:
        log.append(f"raised inside: {error}")
        raise
    finally:
        log.append("closed")
    return outputs


def _runner(*call: Any) -> Any:
    return [call[3]]


def _failing(*call: Any) -> Any:
    raise ValueError("no")


async def _async_runner(*call: Any) -> Any:
    return _runner(*call)


async def _async_failing(*call: Any) -> Any:
    return _failing(*call)


def test_run_steps_sends_the_outputs_back() -> None:
    log: list[str] = []
    assert run_steps(_steps(log), _runner) == [["y"]]
    assert asyncio.run(run_steps_async(_steps(log), _async_runner)) == [["y"]]
    assert log == ["closed", "closed"]


def test_a_runner_error_is_raised_where_the_call_was_yielded() -> None:
    log: list[str] = []
    with pytest.raises(ValueError):
        run_steps(_steps(log), _failing)
    with pytest.raises(ValueError):
        asyncio.run(run_steps_async(_steps(log), _async_failing))
    assert log == ["raised inside: no", "closed"] * 2
