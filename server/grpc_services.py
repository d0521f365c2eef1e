"""gRPC adapters: PredictionService and ModelService over the serving core."""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any, Union

import grpc

from pyserving.server import request_context
from pyserving.server.apis import model_service_pb2_grpc, prediction_service_pb2_grpc
from pyserving.server.core import ServingCore
from pyserving.server.errors import ServingError
from pyserving.server.metrics import GRPC, ServerMetrics
from pyserving.server.request_context import RequestContext
from pyserving.server.request_id import HEADER as REQUEST_ID_HEADER
from pyserving.server.request_id import request_id
from pyserving.server.tracing import Tracing

# TF Serving truncates long error messages (grpc_status_util.cc), counting bytes.
_MESSAGE_LIMIT = 1024
PREDICTION_SERVICE = "tensorflow.serving.PredictionService"


def status_message(message: str) -> str:
    encoded = message.encode("utf-8", "replace")
    if len(encoded) > _MESSAGE_LIMIT:  # a character cut in two is dropped
        return encoded[:_MESSAGE_LIMIT].decode("utf-8", "ignore") + "...TRUNCATED"
    return message


AnyContext = Union[grpc.ServicerContext, "grpc.aio.ServicerContext[Any, Any]"]


def _request_context(context: AnyContext, tracing: Tracing | None, service: str,
                     method: str, request: Any, model: str | None) -> RequestContext:
    remaining = context.time_remaining()
    deadline = None if remaining is None else time.monotonic() + remaining
    header = functools.partial(_metadata_value, context)
    rid = request_id(header)
    context.set_trailing_metadata(((REQUEST_ID_HEADER, rid),))
    trace = None if tracing is None else \
        tracing.start_grpc(service, method, request, header, rid, model)
    # grpc.aio's contexts cannot tell whether the caller left (a coroutine is cancelled).
    is_active = getattr(context, "is_active", None)
    return RequestContext(deadline, is_active, header, rid, trace) if is_active else \
        RequestContext(deadline, header=header, request_id=rid, trace=trace)


def _metadata_value(context: AnyContext, name: str) -> str | None:
    """The first value of a metadata key (gRPC keys are lower-case), read only when asked."""
    for key, value in context.invocation_metadata() or ():
        if key == name:
            return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return None


class Rpc:
    """``with``: the edge of one RPC, for the sync and the grpc.aio services alike. Sets the
    request context (deadline, liveness), counts the request and its latency when ``api`` is
    given (TF Serving's request_count / request_latency), and catches the ServingError it
    ends with into ``status`` / ``details`` for ``context.abort``. Every RPC gets a request
    ID (x-request-id, returned in the trailing metadata); with ``tracing`` it is a span named
    ``{service}/{api}``."""

    __slots__ = (
        "_api",
        "_context",
        "_in_flight",
        "_metrics",
        "_model",
        "_model_name",
        "_request",
        "_service",
        "_started",
        "_token",
        "_trace",
        "_tracing",
        "details",
        "status",
    )

    def __init__(self, context: AnyContext, request: Any,
                 metrics: ServerMetrics | None = None, api: str = "",
                 tracing: Tracing | None = None, model: str | None = None,
                 service: str = PREDICTION_SERVICE) -> None:
        self._context = context
        self._metrics = metrics if api else None
        self._api = api
        self._request = request
        self._tracing = tracing
        self._service = service
        self._model_name = model
        # ``model``: the model's name for a request without a model_spec (V2's)
        self._model = "" if self._metrics is None else \
            request.model_spec.name if model is None else model
        self.status = grpc.StatusCode.OK
        self.details = ""

    def __enter__(self) -> Rpc:
        context = _request_context(self._context, self._tracing, self._service, self._api,
                                   self._request, self._model_name)
        self._trace = context.trace
        self._token = request_context.current.set(context)
        if self._metrics is not None:
            self._started = time.monotonic()
            self._in_flight = self._metrics.in_flight(self._model, self._api, GRPC)
            self._in_flight.__enter__()
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, _: object) -> bool:
        request_context.current.reset(self._token)
        if isinstance(error, ServingError):
            self.status, self.details = error.code, status_message(error.message)
        elif isinstance(error, asyncio.CancelledError):
            self.status = grpc.StatusCode.CANCELLED
        elif error is not None:
            self.status = grpc.StatusCode.UNKNOWN
        if self._metrics is not None:
            self._in_flight.__exit__(None, None, None)
            self._metrics.observe_request(self._model, self._api, GRPC, self.status,
                                          time.monotonic() - self._started)
        if self._trace is not None:
            self._trace.end(self.status, self.details)
        return isinstance(error, ServingError)  # the caller aborts with it


class PredictionServiceBase(prediction_service_pb2_grpc.PredictionServiceServicer):
    """tensorflow.serving.PredictionService (prediction_service_impl.cc): each RPC sets its
    context, calls the core, converts the status and records metrics. The RPCs with plain
    handlers; Predict, Classify and Regress are coroutines in grpc_aio.py."""

    def __init__(self, core: ServingCore, metrics: ServerMetrics | None = None,
                 tracing: Tracing | None = None) -> None:
        self._core = core
        self._metrics = metrics
        self._tracing = tracing

    def MultiInference(self, request: Any, context: grpc.ServicerContext) -> Any:
        with Rpc(context, request, None, "MultiInference", self._tracing) as rpc:
            return self._core.multi_inference(request)
        context.abort(rpc.status, rpc.details)

    def GetModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        with Rpc(context, request, None, "GetModelMetadata", self._tracing) as rpc:
            return self._core.model_metadata(request)
        context.abort(rpc.status, rpc.details)


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """tensorflow.serving.ModelService."""

    def __init__(self, core: ServingCore) -> None:
        self._core = core

    def GetModelStatus(self, request: Any, context: grpc.ServicerContext) -> Any:
        with Rpc(context, request) as rpc:
            return self._core.model_status(request)
        context.abort(rpc.status, rpc.details)

    def HandleReloadConfigRequest(self, request: Any, context: grpc.ServicerContext) -> Any:
        with Rpc(context, request) as rpc:
            return self._core.reload_config(request)
        context.abort(rpc.status, rpc.details)


def add_services(server: grpc.Server, core: ServingCore,
                 prediction: PredictionServiceBase) -> None:
    """``prediction`` (sync or grpc.aio flavour) and ModelService on ``server``."""
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(prediction, server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(core), server)
