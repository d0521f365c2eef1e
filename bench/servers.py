"""The gRPC servers under test, each run in its own process (so it owns its GIL).

Every kind serves tensorflow.serving.PredictionService/Predict on a free loopback port:

- ``sync``: pyserving's ModelServer as shipped (grpc.server + ThreadPoolExecutor).
- ``aio-executor``: the same ServingCore (of a started ModelServer whose own port stays
  idle) behind grpc.aio, each Predict handed to a thread pool with ``loop.run_in_executor``.
- ``aio-direct``: the same core behind grpc.aio, ``core.predict`` called on the event loop.
- ``echo-sync`` / ``echo-aio``: no model; Predict returns a canned PredictResponse, so
  request parsing and response serialisation still happen (the transport floor).
- ``echo-wait``: echo-sync whose handler blocks until another thread wakes it, as a
  request waits for its batch in pyserving's batcher (the sync server's batching floor).
- ``naive``: not pyserving: bench/naive_server.py, the server a user would write
  (tf.saved_model.load, the signature called per request in a thread pool).
- ``aio-batched``: a prototype (bench/aio_batching.py): the same core's decode, TF call and
  encode behind grpc.aio, batched with asyncio futures by ``batching_parameters_file``.

A ``sync`` server with a ``batching_parameters_file`` runs with --enable_batching and answers
``"batch-stats"`` on its pipe with (batches, rows) run so far.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from typing import Any

KINDS = ("echo-sync", "echo-aio", "sync", "aio-executor", "aio-direct", "naive", "aio-batched",
         "echo-wait")
BATCH_STATS = "batch-stats"
ECHO_KINDS = ("echo-sync", "echo-aio")

# The same message limits pyserving's server sets (TF Serving's defaults).
GRPC_OPTIONS = (
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
)


@dataclass(frozen=True)
class ServerSpec:
    """What one server process runs."""

    kind: str
    base_path: str
    model_name: str
    threads: int
    inter_op_threads: int
    canned_response: bytes
    log_path: str
    batching_parameters_file: str = ""  # sync only: enable batching with these parameters
    intra_op_threads: int = 0  # --tensorflow_intra_op_parallelism (0: TF's default)
    switch_interval: float = 0.0  # sys.setswitchinterval for the process (0: Python's 5 ms)


def serve(spec: ServerSpec, conn: Connection) -> None:
    """Process entry point: start the server, send ("ready", port), stop on any message."""
    log = open(spec.log_path, "a", encoding="utf-8")  # noqa: SIM115 (stderr for the process's life)
    os.dup2(log.fileno(), sys.stderr.fileno())
    if spec.switch_interval:
        sys.setswitchinterval(spec.switch_interval)
    try:
        if spec.kind == "naive":
            _serve_naive(spec, conn)
        elif spec.kind in ("sync", "echo-sync", "echo-wait"):
            _serve_sync(spec, conn)
        else:
            asyncio.run(_serve_aio(spec, conn))
    except BaseException as error:  # report start-up failures to the orchestrator
        conn.send(("error", f"{type(error).__name__}: {error}"))
        raise


def _model_server(spec: ServerSpec) -> Any:
    from inprocess import start_server

    return start_server(spec.base_path, spec.model_name, spec.inter_op_threads, spec.threads,
                        batching_parameters_file=spec.batching_parameters_file,
                        intra_op_threads=spec.intra_op_threads)


def _serve_sync(spec: ServerSpec, conn: Connection) -> None:
    if spec.kind == "sync":
        server = _model_server(spec)
        stats = _count_batches(server)
        conn.send(("ready", server.port))
        while conn.recv() == BATCH_STATS:
            conn.send(tuple(stats))
        server.stop(grace=None)
        return
    import grpc

    from pyserving.server.apis import prediction_service_pb2_grpc

    grpc_server = grpc.server(ThreadPoolExecutor(max_workers=spec.threads), options=GRPC_OPTIONS)
    service = (_waiting_echo_service(spec.canned_response) if spec.kind == "echo-wait"
               else _echo_service(spec.canned_response))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(service, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    conn.send(("ready", port))
    conn.recv()
    grpc_server.stop(None).wait()


def _count_batches(server: Any) -> list[int]:
    """[batches, rows] the server's batcher has run, updated as it runs them."""
    stats = [0, 0]
    lock = threading.Lock()

    def observe(model: str, size: int, padded: int, waits: list[float]) -> None:
        with lock:
            stats[0] += 1
            stats[1] += size

    # Batcher has no public way to add an observer to a running server; the tests do the same.
    observers = getattr(server.batcher, "_observers", None)
    if observers is not None:
        observers.append(observe)
    return stats


def _serve_naive(spec: ServerSpec, conn: Connection) -> None:
    import naive_server

    versions = [entry for entry in os.listdir(spec.base_path) if entry.isdigit()]
    model_dir = os.path.join(spec.base_path, max(versions, key=int))
    server, port = naive_server.serve(model_dir, "127.0.0.1:0", spec.threads)
    conn.send(("ready", port))
    conn.recv()
    server.stop(None).wait()


async def _serve_aio(spec: ServerSpec, conn: Connection) -> None:
    import grpc

    from pyserving.server.apis import prediction_service_pb2_grpc

    loop = asyncio.get_running_loop()
    model_server = None
    stats: Any = None
    if spec.kind == "echo-aio":
        service: Any = _echo_service(spec.canned_response, asynchronous=True)
    elif spec.kind == "aio-batched":
        from aio_batching import AsyncBatcher, aio_batched_service

        from pyserving.server.batching.config import read_batching_parameters

        model_server = _model_server(replace(spec, batching_parameters_file=""))
        options = read_batching_parameters(spec.batching_parameters_file)
        batcher = AsyncBatcher(options.max_batch_size, options.batch_timeout_micros,
                               options.num_batch_threads)
        stats = batcher.stats
        service = aio_batched_service(model_server.core, batcher)
    else:  # the ModelServer's own (sync) port stays idle
        model_server = _model_server(spec)
        core = model_server.core
        if spec.kind == "aio-executor":
            pool = ThreadPoolExecutor(max_workers=spec.threads, thread_name_prefix="predict")

            def predict(request: Any) -> Awaitable[Any]:
                return loop.run_in_executor(pool, core.predict, request)
        else:
            async def predict(request: Any) -> Any:
                return core.predict(request)
        service = _aio_service(predict)
    grpc_server = grpc.aio.server(options=GRPC_OPTIONS)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(service, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    conn.send(("ready", port))
    while await loop.run_in_executor(None, conn.recv) == BATCH_STATS:
        conn.send(tuple(stats or (0, 0)))
    await grpc_server.stop(None)
    if model_server is not None:
        model_server.stop(grace=None)


def _prediction_service(predict: Callable[[Any, Any], Any]) -> Any:
    """A PredictionService servicer whose Predict is ``predict(request, context)``."""
    from pyserving.server.apis import prediction_service_pb2_grpc

    class Service(prediction_service_pb2_grpc.PredictionServiceServicer):
        Predict = staticmethod(predict)

    return Service()


def _aio_service(predict: Callable[[Any], Awaitable[Any]]) -> Any:
    from pyserving.server.errors import ServingError
    from pyserving.server.grpc_services import status_message

    async def handler(request: Any, context: Any) -> Any:
        try:
            return await predict(request)
        except ServingError as error:
            await context.abort(error.code, status_message(error.message))

    return _prediction_service(handler)


def _echo_service(canned_response: bytes, *, asynchronous: bool = False) -> Any:
    """Predict answers with the same PredictResponse whatever the request."""
    from pyserving.server.apis import predict_pb2

    response = predict_pb2.PredictResponse.FromString(canned_response)

    async def async_echo(request: Any, context: Any) -> Any:
        return response

    def echo(request: Any, context: Any) -> Any:
        return response

    return _prediction_service(async_echo if asynchronous else echo)


def _waiting_echo_service(canned_response: bytes) -> Any:
    """Echo whose Predict queues a threading.Event and waits until a 'batch' thread, which
    takes everything queued at once, sets it: the hand-offs of batching without a model."""
    from pyserving.server.apis import predict_pb2

    response = predict_pb2.PredictResponse.FromString(canned_response)
    queued = threading.Condition()
    waiting: list[threading.Event] = []

    def release_batches() -> None:
        while True:
            with queued:
                queued.wait_for(lambda: waiting)
                batch = waiting[:]
                waiting.clear()
            for event in batch:
                event.set()

    threading.Thread(target=release_batches, name="batch", daemon=True).start()

    def echo(request: Any, context: Any) -> Any:
        event = threading.Event()
        with queued:
            waiting.append(event)
            queued.notify()
        event.wait()
        return response

    return _prediction_service(echo)
