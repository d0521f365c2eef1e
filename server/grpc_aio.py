"""gRPC on grpc.aio, used with --enable_batching: a request waiting for its batch is an asyncio
future, not a blocked worker thread, so batches are not capped by --grpc_max_threads and a
finished batch wakes the event loop once for all of its requests (bench/README.md measures it).

Predict, Classify and Regress are coroutines on the server's event loop (resolve, decode, await
the batcher, encode); every other RPC keeps its plain handler, which grpc.aio runs on the
server's thread pool, so slow calls (metadata, config reloads) never block the loop.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from concurrent.futures import Executor
from typing import Any, TypeVar

import grpc

from pyserving.server.core import ServingCore
from pyserving.server.grpc_services import PredictionServiceBase, Rpc
from pyserving.server.metrics import ServerMetrics
from pyserving.server.servable import AsyncRunner, run_steps_async
from pyserving.server.tracing import Tracing

T = TypeVar("T")


class LoopServer(grpc.Server):
    """A ``grpc.aio.Server`` on its own event-loop thread, driven like a ``grpc.Server``."""

    def __init__(self, executor: Executor, options: Sequence[tuple[str, Any]],
                 maximum_concurrent_rpcs: int | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="grpc-aio",
                                        daemon=True)
        self._thread.start()

        async def create() -> grpc.aio.Server:
            return grpc.aio.server(migration_thread_pool=executor, options=options,
                                   maximum_concurrent_rpcs=maximum_concurrent_rpcs)
        self._server = self._run(create())

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def _call(self, function: Callable[..., T], *args: Any) -> T:
        async def call() -> T:
            return function(*args)
        return self._run(call())

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self._call(self._server.add_generic_rpc_handlers,
                   [_CheckedDecoding(handler) for handler in handlers])

    def add_registered_method_handlers(
            self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler[Any, Any]]) -> None:
        self._call(self._server.add_registered_method_handlers, service,
                   {name: checked_decoding(handler) for name, handler in handlers.items()})

    def add_insecure_port(self, address: str) -> int:
        return self._call(self._server.add_insecure_port, address)

    def add_secure_port(self, address: str, credentials: grpc.ServerCredentials) -> int:
        return self._call(self._server.add_secure_port, address, credentials)

    def start(self) -> None:
        self._run(self._server.start())

    def stop(self, grace: float | None) -> threading.Event:
        """Stop taking RPCs, cancel those left after ``grace`` seconds, end the loop."""
        stopped = threading.Event()

        async def stop() -> None:
            try:
                await self._server.stop(grace)
                # RPCs gRPC cancelled may still wait on a batch: end them before the loop.
                left = [task for task in asyncio.all_tasks()
                        if task is not asyncio.current_task()]
                for task in left:
                    task.cancel()
                if left:
                    await asyncio.wait(left, timeout=1.0)
            finally:
                self.loop.stop()

        def finish() -> None:
            self._thread.join()
            self.loop.close()
            stopped.set()

        asyncio.run_coroutine_threadsafe(stop(), self.loop)
        threading.Thread(target=finish, name="grpc-aio-stop", daemon=True).start()
        return stopped

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Wait until the loop ended (after ``stop``); True when ``timeout`` passed first."""
        self._thread.join(timeout)
        return self._thread.is_alive()


# What the sync grpc.Server answers to a request its deserializer refuses (as gRPC C++ does:
# INTERNAL); grpc.aio would answer UNKNOWN and log a traceback.
UNDECODABLE = "Exception deserializing request!"
_UNDECODABLE = object()


def checked_decoding(handler: Any) -> Any:
    """A unary-unary handler whose undecodable requests end with INTERNAL, as on the sync
    server; other handlers unchanged."""
    parse = getattr(handler, "request_deserializer", None)
    behavior = getattr(handler, "unary_unary", None)
    if parse is None or behavior is None:
        return handler

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception:  # whatever the message class raises: the sync server's answer
            return _UNDECODABLE

    if inspect.iscoroutinefunction(behavior):
        async def checked_async(request: Any, context: Any) -> Any:
            if request is _UNDECODABLE:
                await context.abort(grpc.StatusCode.INTERNAL, UNDECODABLE)
            return await behavior(request, context)
        checked: Callable[[Any, Any], Any] = checked_async
    else:
        def checked(request: Any, context: Any) -> Any:
            if request is _UNDECODABLE:
                context.abort(grpc.StatusCode.INTERNAL, UNDECODABLE)
            return behavior(request, context)
    return grpc.unary_unary_rpc_method_handler(
        checked, request_deserializer=deserialize,
        response_serializer=handler.response_serializer)


class _CheckedDecoding(grpc.GenericRpcHandler):
    """A generic handler whose methods are ``checked_decoding``."""

    def __init__(self, inner: grpc.GenericRpcHandler) -> None:
        self._inner = inner

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = self._inner.service(handler_call_details)
        return None if handler is None else checked_decoding(handler)


class AsyncPredictionService(PredictionServiceBase):
    """tensorflow.serving.PredictionService whose Predict, Classify and Regress are coroutines
    awaiting ``run`` (the batcher) on the event loop; MultiInference and GetModelMetadata keep
    their plain handlers, which grpc.aio runs on its thread pool."""

    def __init__(self, core: ServingCore, run: AsyncRunner,
                 metrics: ServerMetrics | None = None, tracing: Tracing | None = None) -> None:
        super().__init__(core, metrics, tracing)
        self._run = run

    async def Predict(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        with Rpc(context, request, self._metrics, "Predict", self._tracing) as rpc:
            return await run_steps_async(self._core.predict_steps(request), self._run)
        await context.abort(rpc.status, rpc.details)

    async def Classify(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        with Rpc(context, request, self._metrics, "Classify", self._tracing) as rpc:
            return await run_steps_async(self._core.classify_steps(request), self._run)
        await context.abort(rpc.status, rpc.details)

    async def Regress(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        with Rpc(context, request, self._metrics, "Regress", self._tracing) as rpc:
            return await run_steps_async(self._core.regress_steps(request), self._run)
        await context.abort(rpc.status, rpc.details)
