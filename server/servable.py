"""A servable: one loaded version of a model as the core sees it, without TensorFlow.

It counts the requests that use it, so an unload waits for them (TF Serving's
ServableHandle), and runs signatures through its model: ``saved_model.SavedModel`` in the
server, a plain-Python fake in the core's unit tests (as TF Serving's test_util/fake_loader.h).
"""

from __future__ import annotations

import threading
from typing import Awaitable, Callable, Generator, Mapping, Protocol, Sequence, TypeVar

import numpy as np

from pyserving.server.apis import meta_graph_pb2

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

    def __enter__(self) -> "Servable":
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
