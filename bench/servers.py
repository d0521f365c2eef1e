"""The gRPC servers under test, each run in its own process (so it owns its GIL).

Every kind serves tensorflow.serving.PredictionService/Predict on a free loopback port:

- ``sync``: pyserving's ModelServer as shipped (grpc.server + ThreadPoolExecutor).
- ``aio-executor``: the same ServingCore (of a started ModelServer whose own port stays
  idle) behind grpc.aio, each Predict handed to a thread pool with ``loop.run_in_executor``.
- ``aio-direct``: the same core behind grpc.aio, ``core.predict`` called on the event loop.
- ``echo-sync`` / ``echo-aio``: no model; Predict returns a canned PredictResponse, so
  request parsing and response serialisation still happen (the transport floor).
"""

from __future__ import annotations

import asyncio
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Awaitable, Callable

KINDS = ("echo-sync", "echo-aio", "sync", "aio-executor", "aio-direct")
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


def serve(spec: ServerSpec, conn: Connection) -> None:
    """Process entry point: start the server, send ("ready", port), stop on any message."""
    log = open(spec.log_path, "a", encoding="utf-8")
    os.dup2(log.fileno(), sys.stderr.fileno())
    try:
        if spec.kind in ("sync", "echo-sync"):
            _serve_sync(spec, conn)
        else:
            asyncio.run(_serve_aio(spec, conn))
    except BaseException as error:  # report start-up failures to the orchestrator
        conn.send(("error", f"{type(error).__name__}: {error}"))
        raise


def _model_server(spec: ServerSpec) -> Any:
    from inprocess import start_server

    return start_server(spec.base_path, spec.model_name, spec.inter_op_threads, spec.threads)


def _serve_sync(spec: ServerSpec, conn: Connection) -> None:
    if spec.kind == "sync":
        server = _model_server(spec)
        conn.send(("ready", server.port))
        conn.recv()
        server.stop(grace=None)
        return
    import grpc

    from pyserving.server.apis import prediction_service_pb2_grpc

    grpc_server = grpc.server(ThreadPoolExecutor(max_workers=spec.threads), options=GRPC_OPTIONS)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        _echo_service(spec.canned_response), grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    conn.send(("ready", port))
    conn.recv()
    grpc_server.stop(None).wait()


async def _serve_aio(spec: ServerSpec, conn: Connection) -> None:
    import grpc

    from pyserving.server.apis import prediction_service_pb2_grpc

    loop = asyncio.get_running_loop()
    model_server = None
    if spec.kind == "echo-aio":
        service: Any = _echo_service(spec.canned_response, asynchronous=True)
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
    await loop.run_in_executor(None, conn.recv)
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
