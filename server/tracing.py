"""OpenTelemetry tracing of requests (``--enable_tracing``; the ``tracing`` extra).

Configured as every OpenTelemetry service is, by the standard environment variables:
``OTEL_SERVICE_NAME`` (default ``pyserving``), ``OTEL_TRACES_EXPORTER`` (``otlp``, the default,
``console`` or ``none``), ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``..._TRACES_ENDPOINT`` and the
OTLP exporter's other variables, ``OTEL_TRACES_SAMPLER`` / ``..._ARG`` (default: follow the
caller's sampling decision, else sample all), ``OTEL_PROPAGATORS`` (default W3C
``tracecontext``) and ``OTEL_BSP_*`` for the batch span processor. The provider is the
server's own: nothing process-wide is set.

One request is one ``RequestTrace``: the transport's span (gRPC ``SERVER`` span, or the REST
request's) continuing the caller's ``traceparent``; its children are made by the hooks the
server installs only when tracing is on (``ModelServer`` wires them): admission (with the
rollout's routing decision), the TensorFlow run (``traced_runner``), the batch queue wait and
the batch's run, linked to every request span of its batch (``observe_batch_run``), response
encoding (``observe_encode``) and a shadow copy as its own span linked to the primary
(``RequestTrace.shadowed``). Without tracing none of this runs: the transports test
``tracing is None`` once per request and the core ``self.tracing is None`` once.

A new transport (e.g. the V2 API) calls ``Tracing.start_request`` at its edge, puts the trace
in its ``RequestContext`` and calls ``RequestTrace.end`` with the outcome; every child span
then follows from the core's hooks.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import unquote

import grpc

from pyserving.server import request_context
from pyserving.server.errors import ServingError, invalid_argument

if TYPE_CHECKING:
    from pyserving.server.batching.batcher import BatchRun
    from pyserving.server.servable import AsyncRunner, Runner, Servable, SignatureDef

log = logging.getLogger(__name__)

INSTRUMENTATION = "pyserving.server"
DEFAULT_SERVICE_NAME = "pyserving"
V2_SERVICE = "inference.GRPCInferenceService"  # spans with pyserving.protocol=v2
T = TypeVar("T")


class Admitted(Protocol):
    """What admission gives (core._Admitted): the version, and the rollout route if any."""

    @property
    def version(self) -> int: ...

    route: Any


A = TypeVar("A", bound=Admitted)
S = TypeVar("S")


def _epoch_ns(monotonic: float) -> int:
    """A ``time.monotonic()`` instant as OpenTelemetry's nanoseconds since the epoch."""
    return time.time_ns() - int((time.monotonic() - monotonic) * 1e9)


class _HeaderGetter:
    """The propagator's getter over a ``header(name)`` callable (RequestContext.header)."""

    def get(self, carrier: Callable[[str], str | None], key: str) -> list[str] | None:
        value = carrier(key)
        return None if value is None else [value]

    def keys(self, carrier: Callable[[str], str | None]) -> list[str]:
        return []


_GETTER = _HeaderGetter()


class RequestTrace:
    """The span of one request and what its children need."""

    __slots__ = ("context", "span", "span_context", "tracing")

    def __init__(self, tracing: Tracing, span: Any) -> None:
        from opentelemetry import trace

        self.tracing = tracing
        self.span = span
        self.context = trace.set_span_in_context(span)  # the parent of its children
        self.span_context = span.get_span_context()

    def child(self, name: str, started: float | None = None,
              attributes: Mapping[str, Any] | None = None) -> Any:
        """A child span, begun now or at ``started`` (time.monotonic()); the caller ends it."""
        return self.tracing.tracer.start_span(
            name, context=self.context, attributes=attributes,
            start_time=None if started is None else _epoch_ns(started))

    def end(self, code: grpc.StatusCode, message: str = "",
            attributes: Mapping[str, Any] | None = None) -> None:
        """End the request's span with its outcome (TF Serving's status code)."""
        from opentelemetry.trace import Status, StatusCode

        span = self.span
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if attributes:
            span.set_attributes(attributes)
        if code != grpc.StatusCode.OK:
            span.set_status(Status(StatusCode.ERROR, f"{code.name}: {message}"))
        span.end()

    def shadowed(self, shadow: Callable[[S], T]) -> Callable[[S], T]:
        """``shadow`` run as its own span (a new trace) linked to this request's span, with
        its TensorFlow run under it."""
        tracing = self.tracing
        primary = self.span_context

        def traced(argument: S) -> T:
            from opentelemetry.trace import Link, SpanKind

            span = tracing.tracer.start_span("shadow", kind=SpanKind.INTERNAL,
                                             links=[Link(primary)],
                                             attributes={"pyserving.shadow": True})
            trace = RequestTrace(tracing, span)
            token = request_context.current.set(
                dataclasses.replace(request_context.current.get(), trace=trace))
            try:
                answer = shadow(argument)
            except ServingError as error:
                trace.end(error.code, error.message)
                raise
            except BaseException as error:
                trace.end(grpc.StatusCode.UNKNOWN, repr(error))
                raise
            finally:
                request_context.current.reset(token)
            trace.end(grpc.StatusCode.OK)
            return answer

        return traced


def _ended(span: Any, error: BaseException | None) -> None:
    if error is not None:
        from opentelemetry.trace import Status, StatusCode

        code = error.code.name if isinstance(error, ServingError) else type(error).__name__
        span.set_status(Status(StatusCode.ERROR, code))
    span.end()


class Tracing:
    """The server's tracer and propagator, and the hooks that make request spans' children."""

    def __init__(self, provider: Any, propagator: Any) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer(INSTRUMENTATION)
        self._propagator = propagator

    def start_request(self, name: str, header: Callable[[str], str | None], *,
                      kind: str = "SERVER", attributes: Mapping[str, Any]) -> RequestTrace:
        """The span of a request arriving with ``header`` (its ``traceparent`` continues the
        caller's trace), as the transport names it."""
        from opentelemetry.trace import SpanKind

        parent = self._propagator.extract(carrier=header, getter=_GETTER)
        span = self.tracer.start_span(name, context=parent, kind=SpanKind[kind],
                                      attributes=attributes)
        return RequestTrace(self, span)

    def start_grpc(self, service: str, method: str, request: Any,
                   header: Callable[[str], str | None], request_id: str,
                   model: str | None = None) -> RequestTrace:
        """The span of a gRPC call, named as OpenTelemetry names RPC spans
        (``{rpc.service}/{rpc.method}``); ``model`` names the model of a request without a
        ``model_spec`` (V2's)."""
        spec = _model_spec(request) if model is None else None
        attributes = {
            "rpc.system": "grpc", "rpc.service": service, "rpc.method": method,
            "pyserving.api": method,
            "pyserving.model.name": model if spec is None else spec.name,
            "pyserving.signature": "" if spec is None else spec.signature_name,
            "pyserving.request_id": request_id}
        if service == V2_SERVICE:
            attributes["pyserving.protocol"] = "v2"
        return self.start_request(f"{service}/{method}", header, attributes=attributes)

    def start_rest(self, method: str, path: str, header: Callable[[str], str | None],
                   request_id: str) -> RequestTrace:
        """The span of a REST request (``POST /v1/models/{model}:predict``,
        ``POST /v2/models/{model}/infer``), named by its route."""
        model, api, route = _rest_route(path)
        attributes = {
            "http.request.method": method, "url.path": path, "http.route": route,
            "pyserving.api": api, "pyserving.model.name": model,
            "pyserving.request_id": request_id}
        if route.startswith("/v2"):
            attributes["pyserving.protocol"] = "v2"
        return self.start_request(f"{method} {route}", header, attributes=attributes)

    def admission(self, admit: Callable[[Any], A], spec: Any) -> A:
        """``admit(spec)`` (resolve the version, route through a rollout, take an in-flight
        slot) as the ``admission`` span; the version and routing go on the request span."""
        context = request_context.current.get()
        trace = context.trace
        if trace is None:  # warmup, a shadow without a primary span
            return admit(spec)
        span = trace.child("admission")
        error: BaseException | None = None
        try:
            admitted = admit(spec)
        except BaseException as raised:
            error = raised
            raise
        finally:
            _ended(span, error)
        attributes: dict[str, Any] = {"pyserving.model.version": admitted.version}
        route = admitted.route
        if route is not None:
            key = route.rollout.plan.sticky_metadata_key
            sticky = bool(key) and context.header(key.lower()) is not None
            attributes.update({"pyserving.rollout.arm": route.arm.name,
                               "pyserving.rollout.routing": "sticky" if sticky else "random"})
        trace.span.set_attributes(attributes)
        return admitted

    def _note_servable(self, trace: RequestTrace, servable: Servable,
                       signature: SignatureDef) -> None:
        name = next((key for key, value in servable.signatures.items() if value is signature),
                    None)
        attributes: dict[str, Any] = {"pyserving.model.name": servable.name,
                                      "pyserving.model.version": servable.version}
        if name is not None:
            attributes["pyserving.signature"] = name
        trace.span.set_attributes(attributes)

    def traced_runner(self, runner: Runner, *, batched: bool) -> Runner:
        """``runner`` noting the servable on the request span; unbatched, each call is a
        ``run`` span (batched, the batcher's observer makes the batch's spans)."""
        def run(servable: Servable, signature: SignatureDef, feeds: Any,
                fetches: Any) -> Any:
            trace = request_context.current.get().trace
            if trace is None:
                return runner(servable, signature, feeds, fetches)
            self._note_servable(trace, servable, signature)
            if batched:
                return runner(servable, signature, feeds, fetches)
            span = trace.child("run", attributes={"pyserving.batch.size": _rows(feeds)})
            error: BaseException | None = None
            try:
                return runner(servable, signature, feeds, fetches)
            except BaseException as raised:
                error = raised
                raise
            finally:
                _ended(span, error)

        return run

    def traced_async_runner(self, runner: AsyncRunner, *, batched: bool) -> AsyncRunner:
        """``traced_runner`` for an event-loop transport's awaited runner."""
        async def run(servable: Servable, signature: SignatureDef, feeds: Any,
                      fetches: Any) -> Any:
            trace = request_context.current.get().trace
            if trace is None:
                return await runner(servable, signature, feeds, fetches)
            self._note_servable(trace, servable, signature)
            if batched:
                return await runner(servable, signature, feeds, fetches)
            span = trace.child("run", attributes={"pyserving.batch.size": _rows(feeds)})
            error: BaseException | None = None
            try:
                return await runner(servable, signature, feeds, fetches)
            except BaseException as raised:
                error = raised
                raise
            finally:
                _ended(span, error)

        return run

    def observe_batch_run(self, batch: BatchRun) -> None:
        """Batcher observer: each traced request's ``batch_queue`` span, and the batch's
        ``run`` span linked to every request span in it (a child of the first)."""
        from opentelemetry.trace import Link

        traces = [(context.trace, enqueued) for context, enqueued in batch.requests
                  if context.trace is not None]
        if not traces:
            return
        started = _epoch_ns(batch.started)
        for trace, enqueued in traces:
            trace.child("batch_queue", enqueued).end(end_time=started)
        first = traces[0][0]
        span = self.tracer.start_span(
            "run", context=first.context, start_time=started,
            links=[Link(trace.span_context) for trace, _ in traces],
            attributes={"pyserving.model.name": batch.model,
                        "pyserving.batch.size": batch.size,
                        "pyserving.batch.padded_size": batch.padded,
                        "pyserving.batch.padding": batch.padded - batch.size,
                        "pyserving.batch.requests": len(batch.requests)})
        span.end(end_time=started + int(batch.seconds * 1e9))

    def observe_encode(self, model: str, api: str, started: float, seconds: float) -> None:
        """Encode observer: the outputs-to-response step of the current request as a span."""
        trace = request_context.current.get().trace
        if trace is not None:
            span = trace.child("encode", started, {"pyserving.api": api})
            span.end(end_time=_epoch_ns(started) + int(seconds * 1e9))

    def shutdown(self) -> None:
        """Export what is buffered and stop the exporter."""
        try:
            self.provider.shutdown()
        except Exception:  # an unreachable collector must not fail the server's stop
            log.warning("tracing: exporting the last spans failed", exc_info=True)


def _rows(feeds: Sequence[tuple[str, Any]]) -> int:
    shape = getattr(feeds[0][1], "shape", ()) if feeds else ()
    return int(shape[0]) if shape else 1


def _model_spec(request: Any) -> Any:
    spec = getattr(request, "model_spec", None)
    if spec is None and getattr(request, "tasks", None):  # MultiInference
        spec = request.tasks[0].model_spec
    return spec


_V2_MODEL_PATH = re.compile(r"/v2/models/([^/?#]+)(/versions/[^/?#]+)?(?:/([a-z_/]+))?")
_V2_APIS = {None: "ModelMetadata", "infer": "ModelInfer", "ready": "ModelReady"}


def _rest_route(path: str) -> tuple[str, str, str]:
    """(model name, API, route) of a /v1 or /v2 models path; ("", "", path) for others."""
    path = path.split("?", 1)[0]
    if path.startswith("/v1/models/"):
        rest, colon, verb = path[len("/v1/models/"):].partition(":")
        name, *tail = rest.split("/")
        route, api = "/v1/models/{model}", verb.capitalize()
        if len(tail) >= 2 and tail[0] in ("versions", "labels"):
            route += f"/{tail[0]}/{{{tail[0][:-1]}}}"
            tail = tail[2:]
        if tail == ["metadata"]:
            route, api = route + "/metadata", "GetModelMetadata"
        return name, api, route + colon + verb
    match = _V2_MODEL_PATH.fullmatch(path)
    if match is None:
        return "", "", path
    verb = match.group(3)
    route = "/v2/models/{model}" + ("/versions/{version}" if match.group(2) else "") + \
        (f"/{verb}" if verb else "")
    return unquote(match.group(1)), _V2_APIS.get(verb, ""), route


def _exporters(names: Iterable[str]) -> list[Any]:
    exporters: list[Any] = []
    for name in names:
        if name == "otlp":
            protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                                      os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"))
            if protocol != "grpc":
                raise invalid_argument(f"--enable_tracing: OTLP protocol {protocol!r} is not "
                                       "supported; pyserving exports OTLP over gRPC")
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter,
            )
            exporters.append(OTLPSpanExporter())
        elif name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            exporters.append(ConsoleSpanExporter())
        elif name != "none":
            raise invalid_argument(f"--enable_tracing: OTEL_TRACES_EXPORTER {name!r} is not "
                                   "supported (otlp, console or none)")
    return exporters


def build_tracing(enabled: bool) -> Tracing | None:
    """The server's Tracing from the OTEL_* environment when ``enabled``, else None;
    INVALID_ARGUMENT when OpenTelemetry is not installed or the environment asks for what
    pyserving cannot do."""
    if not enabled:
        return None
    try:
        from opentelemetry.propagate import get_global_textmap
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as error:
        raise invalid_argument(f"--enable_tracing needs OpenTelemetry ({error}): install "
                               "pyserving[tracing]") from None
    names = [name.strip().lower() for name in
             os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",") if name.strip()]
    exporters = _exporters(names)
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    log.info("tracing on: service %s, exporting to %s", resource.attributes[SERVICE_NAME],
             ", ".join(names) or "nowhere")
    return Tracing(provider, get_global_textmap())
