"""A servable: one loaded version of a model as the core sees it, without TensorFlow.

It counts the requests that use it, so an unload waits for them (TF Serving's
ServableHandle), and runs signatures through its model: ``saved_model.SavedModel`` in the
server, a plain-Python fake in the core's unit tests (as TF Serving's test_util/fake_loader.h).
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from concurrent.futures import Executor
from typing import Protocol, TypeVar

import numpy as np

from pyserving.server.apis import meta_graph_pb2, model_pb2

SignatureDef = meta_graph_pb2.SignatureDef
T = TypeVar("T")


class Model(Protocol):
    """What a servable runs: signatures, a thread-safe ``run``, and ``close``."""

    @property
    def signatures(self) -> Mapping[str, SignatureDef]: ...

    def run(self, feeds: Sequence[tuple[str, np.ndarray]],
            fetches: Sequence[str]) -> list[np.ndarray]: ...

    def close(self) -> None: ...


class Servable:
    """A version of a model, resident and ready to run; thread-safe."""

    def __init__(self, name: str, version: int, path: str, model: Model) -> None:
        self.name = name
        self.version = version
        self.path = path
        self.model = model
        self.signatures: dict[str, SignatureDef] = dict(model.signatures)
        self._usage = threading.Condition()
        self._in_flight = 0
        self._retired = False
        self._after_close: list[Callable[[], None]] = []
        # unbatched_async: id(signature) -> seconds of its latest calls on the pool, and the
        # signatures measured fast enough to run on the event loop
        self.call_seconds: dict[int, list[float]] = {}
        self.inline: set[int] = set()
        self.slow_inline: dict[int, int] = {}

    def run(self, feeds: Sequence[tuple[str, np.ndarray]],
            fetches: Sequence[str]) -> list[np.ndarray]:
        """Feed tensor names to arrays; the fetched tensors' values, in ``fetches`` order."""
        return self.model.run(feeds, fetches)

    @property
    def retired(self) -> bool:
        """True once unloading began: no new requests are admitted."""
        return self._retired

    @property
    def drained(self) -> bool:
        """True once unloading began and no request holds the servable: none can use it
        again."""
        with self._usage:
            return self._retired and not self._in_flight

    def try_acquire(self) -> bool:
        """Count a request in; False once the servable is being unloaded."""
        with self._usage:
            if self._retired:
                return False
            self._in_flight += 1
            return True

    def release(self) -> None:
        with self._usage:
            self._in_flight -= 1
            if self._retired and not self._in_flight:
                self._usage.notify_all()

    def __enter__(self) -> Servable:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def retire(self, drain_seconds: float | None = None) -> None:
        """Take no new requests, wait for the in-flight ones (at most ``drain_seconds``),
        then close the model (a TensorFlow session cancels any run still going)."""
        with self._usage:
            self._retired = True
            self._usage.wait_for(lambda: not self._in_flight, drain_seconds)
        self.model.close()
        for callback in self._after_close:
            callback()

    def after_close(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once retire() has closed the model (e.g. delete its files)."""
        self._after_close.append(callback)


class Acquirer(Protocol):
    """What hands out counted-in servables (the ModelManager)."""

    def acquire(self, name: str, version: int | None = None,
                label: str | None = None) -> Servable: ...


def acquire(manager: Acquirer, spec: model_pb2.ModelSpec) -> Servable:
    """The servable a ModelSpec names (a version, a label, or the latest), counted in: use it
    as ``with ... as servable``."""
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return manager.acquire(spec.name, version=spec.version.value)
    if choice == "version_label":
        return manager.acquire(spec.name, label=spec.version_label)
    return manager.acquire(spec.name)


# How a request's signature is run: (servable, signature, feeds, fetches) -> outputs; the async
# form is awaited on an event loop (the batcher on grpc.aio).
Runner = Callable[[Servable, SignatureDef, Sequence[tuple[str, np.ndarray]], Sequence[str]],
                  list[np.ndarray]]
AsyncRunner = Callable[[Servable, SignatureDef, Sequence[tuple[str, np.ndarray]], Sequence[str]],
                       Awaitable[list[np.ndarray]]]
# A request's work written once for both kinds of runner: a generator that yields the
# TensorFlow call it needs as (servable, signature, feeds, fetches), is sent that call's
# outputs, and returns its answer. ``run_steps`` drives it in a thread, ``run_steps_async`` on
# an event loop; an error of the call is raised inside it, where it was yielded.
RunCall = tuple[Servable, SignatureDef, Sequence[tuple[str, np.ndarray]], Sequence[str]]
Steps = Generator[RunCall, list[np.ndarray], T]


def run_steps(steps: Steps[T], runner: Runner) -> T:
    """Drive ``steps`` in this thread, each call through ``runner``."""
    try:
        call = next(steps)
        while True:
            try:
                outputs = runner(*call)
            except BaseException as error:
                call = steps.throw(error)
            else:
                call = steps.send(outputs)
    except StopIteration as done:
        answer: T = done.value
        return answer


async def run_steps_async(steps: Steps[T], runner: AsyncRunner) -> T:
    """Drive ``steps`` on an event loop, each call awaited through ``runner``."""
    try:
        call = next(steps)
        while True:
            try:
                outputs = await runner(*call)
            except BaseException as error:
                call = steps.throw(error)
            else:
                call = steps.send(outputs)
    except StopIteration as done:
        answer: T = done.value
        return answer


# Told of each successful run: model name, API ("Predict", "Classify", "Regress"), seconds
# (TF Serving's runtime_latency: the TensorFlow call, batch queueing included).
RuntimeObserver = Callable[[str, str, float], None]
# Told of each response made from a run's outputs: model name, API, when it began
# (time.monotonic()), seconds.
EncodeObserver = Callable[[str, str, float, float], None]


def run_unbatched(servable: Servable, signature: SignatureDef,
                  feeds: Sequence[tuple[str, np.ndarray]],
                  fetches: Sequence[str]) -> list[np.ndarray]:
    """The Runner used without --enable_batching: one TensorFlow call per request."""
    return servable.run(feeds, fetches)


# A signature whose fastest of INLINE_AFTER calls on the pool took less than INLINE_MAX_SECONDS
# (the fastest: a pool thread's clock also counts its waits for the GIL) runs on the event loop
# itself, as the hop to a pool thread and back costs more than such a call; two calls in a row
# there that take DEMOTE_FACTOR times longer send it back (one may be the thread descheduled on
# a busy machine) (docs/performance.md). A call long enough to
# gain from the pool (the MLP's ~0.4 ms) lets the loop take the next request meanwhile.
INLINE_MAX_SECONDS = 0.00015
INLINE_AFTER = 16
DEMOTE_FACTOR = 4


def unbatched_async(executor: Executor) -> AsyncRunner:
    """The AsyncRunner used without --enable_batching: a signature measured fast runs inline,
    any other on ``executor`` (TensorFlow releases the GIL while it runs; the request's context
    goes with it for its deadline). A cancelled request whose call has not started is not run."""
    async def run(servable: Servable, signature: SignatureDef,
                  feeds: Sequence[tuple[str, np.ndarray]],
                  fetches: Sequence[str]) -> list[np.ndarray]:
        key = id(signature)
        if key in servable.inline:
            started = time.perf_counter()
            outputs = servable.run(feeds, fetches)
            if time.perf_counter() - started < INLINE_MAX_SECONDS * DEMOTE_FACTOR:
                servable.slow_inline.pop(key, None)
            elif servable.slow_inline.setdefault(key, 0) >= 1:  # twice in a row: not noise
                servable.inline.discard(key)
                del servable.slow_inline[key]
            else:
                servable.slow_inline[key] = 1
            return outputs
        outputs, seconds = await asyncio.get_running_loop().run_in_executor(
            executor, contextvars.copy_context().run, _timed, servable, feeds, fetches)
        samples = servable.call_seconds.setdefault(key, [])
        samples.append(seconds)
        if len(samples) >= INLINE_AFTER:
            if min(samples) < INLINE_MAX_SECONDS:
                servable.inline.add(key)
            samples.clear()
        return outputs
    return run


def _timed(servable: Servable, feeds: Sequence[tuple[str, np.ndarray]],
           fetches: Sequence[str]) -> tuple[list[np.ndarray], float]:
    """The call's outputs and its seconds (the pool's queueing left out)."""
    started = time.perf_counter()
    outputs = servable.run(feeds, fetches)
    return outputs, time.perf_counter() - started
