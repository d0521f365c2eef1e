"""gRPC adapters: PredictionService and ModelService over the serving core."""

from __future__ import annotations

import functools
import time
from typing import Any, Callable

import grpc

from pyserving.server import request_context
from pyserving.server.apis import model_service_pb2_grpc, prediction_service_pb2_grpc
from pyserving.server.core import ServingCore
from pyserving.server.errors import ServingError
from pyserving.server.metrics import GRPC, ServerMetrics
from pyserving.server.request_context import RequestContext

# TF Serving truncates long error messages (grpc_status_util.cc), counting bytes.
_MESSAGE_LIMIT = 1024


def status_message(message: str) -> str:
    encoded = message.encode("utf-8", "replace")
    if len(encoded) > _MESSAGE_LIMIT:  # a character cut in two is dropped
        return encoded[:_MESSAGE_LIMIT].decode("utf-8", "ignore") + "...TRUNCATED"
    return message


def _request_context(context: grpc.ServicerContext) -> RequestContext:
    remaining = context.time_remaining()
    deadline = None if remaining is None else time.monotonic() + remaining
    # grpc.aio runs plain handlers with a context that cannot tell whether the caller left.
    is_active = getattr(context, "is_active", None)
    return RequestContext(deadline, is_active) if is_active else RequestContext(deadline)


def _unary(call: Callable[[Any], Any]) -> Callable[[Any, grpc.ServicerContext], Any]:
    @functools.wraps(call)
    def handler(request: Any, context: grpc.ServicerContext) -> Any:
        token = request_context.current.set(_request_context(context))
        try:
            return call(request)
        except ServingError as error:
            context.abort(error.code, status_message(error.message))
        finally:
            request_context.current.reset(token)
    return handler


def _measured(call: Callable[[Any], Any], metrics: ServerMetrics | None,
              api: str) -> Callable[[Any], Any]:
    """Count the request and its latency (TF Serving's request_count/request_latency)."""
    if metrics is None:
        return call

    @functools.wraps(call)
    def measured(request: Any) -> Any:
        model = request.model_spec.name
        started = time.monotonic()
        code = grpc.StatusCode.OK
        try:
            with metrics.in_flight(model, api, GRPC):
                return call(request)
        except ServingError as error:
            code = error.code
            raise
        except Exception:
            code = grpc.StatusCode.UNKNOWN
            raise
        finally:
            metrics.observe_request(model, api, GRPC, code, time.monotonic() - started)
    return measured


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """tensorflow.serving.PredictionService."""

    def __init__(self, core: ServingCore, metrics: ServerMetrics | None = None) -> None:
        self.Predict = _unary(_measured(core.predict, metrics, "Predict"))
        self.Classify = _unary(_measured(core.classify, metrics, "Classify"))
        self.Regress = _unary(_measured(core.regress, metrics, "Regress"))
        self.MultiInference = _unary(core.multi_inference)
        self.GetModelMetadata = _unary(core.model_metadata)


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """tensorflow.serving.ModelService."""

    def __init__(self, core: ServingCore) -> None:
        self.GetModelStatus = _unary(core.model_status)
        self.HandleReloadConfigRequest = _unary(core.reload_config)


def add_services(server: grpc.Server, core: ServingCore,
                 prediction: PredictionService) -> None:
    """``prediction`` (sync or grpc.aio flavour) and ModelService on ``server``."""
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(prediction, server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(core), server)
