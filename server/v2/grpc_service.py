"""gRPC ``inference.GRPCInferenceService`` (Triton's grpc_service.proto, a superset of KServe's
grpc_predict_v2.proto): the health, metadata and ModelInfer RPCs over the V2 adapter; every
other RPC of the service answers UNIMPLEMENTED naming itself.

ModelInfer is a coroutine on the grpc.aio server's loop, like Predict; the other handlers are
plain functions grpc.aio runs on its thread pool."""

from __future__ import annotations

import time
from typing import Any

import grpc

from pyserving.server.apis import grpc_service_pb2 as pb
from pyserving.server.apis import grpc_service_pb2_grpc
from pyserving.server.errors import invalid_argument
from pyserving.server.grpc_services import Rpc
from pyserving.server.metrics import ServerMetrics
from pyserving.server.servable import AsyncRunner, EncodeObserver, run_steps_async
from pyserving.server.tracing import Tracing
from pyserving.server.v2 import codec
from pyserving.server.v2.inference import (
    SIGNATURE_PARAMETER,
    InferInput,
    InferRequest,
    V2Inference,
)
from pyserving.server.v2.rest import INFER_API, within

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
SERVICE_NAME = SERVICE.full_name


class GRPCInferenceService(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    """The Open Inference Protocol's gRPC service over one ``V2Inference``."""

    def __init__(self, inference: V2Inference, server_metadata: dict[str, Any],
                 run: AsyncRunner, metrics: ServerMetrics | None = None,
                 tracing: Tracing | None = None,
                 on_encode: EncodeObserver | None = None) -> None:
        self._inference = inference
        self._run = run
        self._server_metadata = pb.ServerMetadataResponse(**server_metadata)
        self._metrics = metrics
        self._tracing = tracing  # ModelInfer and ModelMetadata are spans
        self._on_encode = on_encode  # the encode stage's histogram (and span)

    def ServerLive(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=self._inference.server_ready())

    def ServerMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._server_metadata

    def ModelReady(self, request: Any, context: grpc.ServicerContext) -> Any:
        with Rpc(context, request, model="") as rpc:
            return pb.ModelReadyResponse(
                ready=self._inference.model_ready(request.name, request.version))
        context.abort(rpc.status, rpc.details)

    def ModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        with Rpc(context, request, None, "ModelMetadata", self._tracing, model=request.name,
                 service=SERVICE_NAME) as rpc:
            metadata = self._inference.model_metadata(request.name, request.version)
            response = pb.ModelMetadataResponse(name=metadata["name"],
                                                versions=metadata["versions"],
                                                platform=metadata["platform"])
            for kind in ("inputs", "outputs"):
                for tensor in metadata[kind]:
                    getattr(response, kind).add(**tensor)
            return response
        context.abort(rpc.status, rpc.details)

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """A coroutine on the server's loop, as Predict: its TensorFlow call awaited on the
        pool or as its batch's future (one queue per signature, shared with Predict)."""
        with Rpc(context, request, self._metrics, INFER_API, self._tracing,
                 model=request.model_name, service=SERVICE_NAME) as rpc:
            infer = InferRequest(request.model_name, request.model_version,
                                 _signature_name(request.parameters), _inputs(request),
                                 [output.name for output in request.outputs])
            with within(_timeout_seconds(request.parameters)):
                version, outputs = await run_steps_async(self._inference.infer_steps(infer),
                                                         self._run)
            started = time.monotonic()
            response = pb.ModelInferResponse(model_name=request.model_name,
                                             model_version=str(version), id=request.id)
            for output in outputs:
                response.outputs.add(name=output.name, datatype=output.datatype,
                                     shape=output.array.shape)
                response.raw_output_contents.append(
                    codec.raw_bytes(output.array, output.datatype))
            if self._on_encode is not None:
                self._on_encode(request.model_name, INFER_API, started,
                                time.monotonic() - started)
            return response
        await context.abort(rpc.status, rpc.details)


def _signature_name(parameters: Any) -> str:
    if SIGNATURE_PARAMETER not in parameters:
        return ""
    parameter = parameters[SIGNATURE_PARAMETER]
    if parameter.WhichOneof("parameter_choice") != "string_param":
        raise invalid_argument(f"Unable to parse '{SIGNATURE_PARAMETER}': expected a "
                               "string_param")
    return str(parameter.string_param)


def _timeout_seconds(parameters: Any) -> float | None:
    """The ``timeout`` parameter in microseconds, as Triton reads it."""
    if "timeout" not in parameters:
        return None
    parameter = parameters["timeout"]
    kind = parameter.WhichOneof("parameter_choice")
    if kind not in ("int64_param", "uint64_param") or getattr(parameter, kind) < 0:
        raise invalid_argument("Unable to parse 'timeout'")
    return float(getattr(parameter, kind)) / 1e6


def _inputs(request: Any) -> list[InferInput]:
    """Typed ``contents``, or ``raw_input_contents`` for every input (not a mix)."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise invalid_argument(f"expected {len(request.inputs)} raw_input_contents, one per "
                               f"input, got {len(raw)} for model '{request.model_name}'")
    inputs = []
    for index, tensor in enumerate(request.inputs):
        shape = list(tensor.shape)
        if raw:
            if tensor.HasField("contents"):
                raise invalid_argument(f"contents field must not be specified when using "
                                       f"raw_input_contents for '{tensor.name}' for model "
                                       f"'{request.model_name}'")
            array = codec.array_from_raw(tensor.name, tensor.datatype, shape, raw[index])
        else:
            array = codec.array_from_contents(tensor.name, tensor.datatype, shape,
                                              tensor.contents)
        inputs.append(InferInput(tensor.name, tensor.datatype, shape, array))
    return inputs


def _unimplemented(method: str) -> Any:
    def handler(self: GRPCInferenceService, request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNIMPLEMENTED,
                      f"{SERVICE_NAME}/{method} is not implemented by pyserving; see docs/v2.md")
    handler.__name__ = method
    return handler


for _method in SERVICE.methods_by_name:
    if _method not in GRPCInferenceService.__dict__:
        setattr(GRPCInferenceService, _method, _unimplemented(_method))


def add_service(server: grpc.Server, service: GRPCInferenceService) -> None:
    grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(service, server)
