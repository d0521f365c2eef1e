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

A transport calls ``Tracing.start_request`` (``start_grpc``, ``start_rest``) at its edge, puts
the trace in its ``RequestContext`` and calls ``RequestTrace.end`` with the outcome; every
child span then follows from the core's hooks. TF Serving's API and V2's (gRPC through
``Rpc(..., service=...)``, REST in ``rest/server.py``) do.
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
    """The span of one request and what its children need. Attributes learnt on the way
    (version, routing, signature) gather in ``attributes`` and go on the span once, at
    ``end``; children are recorded after the fact, with their start and end times
    (``finished``), and only when the request's span is sampled."""

    __slots__ = ("attributes", "recording", "span", "span_context", "tracing")

    def __init__(self, tracing: Tracing, span: Any) -> None:
        self.tracing = tracing
        self.span = span
        self.span_context = span.get_span_context()
        self.recording: bool = span.is_recording()
        self.attributes: dict[str, Any] = {}

    def finished(self, name: str, started_ns: int, ended_ns: int,
                 attributes: Mapping[str, Any] | None = None,
                 error: BaseException | None = None) -> None:
        """A child span that began and ended at these instants (ns since the epoch)."""
        if self.recording:
            self.tracing.record(name, self.span_context, started_ns, ended_ns, attributes,
                                error)

    def end(self, code: grpc.StatusCode, message: str = "",
            attributes: Mapping[str, Any] | None = None) -> None:
        """End the request's span with its outcome (TF Serving's status code)."""
        span = self.span
        gathered = self.attributes
        gathered["rpc.grpc.status_code"] = code.value[0]
        if attributes:
            gathered.update(attributes)
        span.set_attributes(gathered)
        if code != grpc.StatusCode.OK:
            from opentelemetry.trace import Status, StatusCode

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


def _error_status(error: BaseException) -> Any:
    from opentelemetry.trace import Status, StatusCode

    return Status(StatusCode.ERROR,
                  error.code.name if isinstance(error, ServingError) else type(error).__name__)


def _epoch_clock() -> Callable[[float], int]:
    """ns since the epoch of ``time.monotonic()`` instants (one clock reading for many)."""
    offset = time.time_ns() - int(time.monotonic() * 1e9)
    return lambda instant: offset + int(instant * 1e9)


class Tracing:
    """The server's tracer and propagator, and the hooks that make request spans' children."""

    def __init__(self, provider: Any, propagator: Any, processors: Sequence[Any]) -> None:
        """``processors``: the span processors added to ``provider`` (children go to them)."""
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        from opentelemetry.trace import SpanContext, SpanKind

        self.provider = provider
        self.tracer = provider.get_tracer(INSTRUMENTATION)
        self._propagator = propagator
        self._kinds = {kind.name: kind for kind in SpanKind}
        self._processors = tuple(processors)
        self._readable_span = ReadableSpan
        self._span_context = SpanContext
        self._new_span_id = provider.id_generator.generate_span_id
        self._resource = provider.resource
        self._scope = InstrumentationScope(INSTRUMENTATION)

    def record(self, name: str, parent: Any, started_ns: int, ended_ns: int,
               attributes: Mapping[str, Any] | None = None,
               error: BaseException | None = None, links: Sequence[Any] = ()) -> None:
        """A finished child of the sampled span ``parent`` (a SpanContext), handed to the
        span processors as the SDK hands a span that ends. Made directly as the SDK's
        ReadableSpan rather than through ``Tracer.start_span`` + ``end``: a quarter of the
        cost (sampler, limits, locks, a second copy at ``end``; measured 6.7 against 26.5 us
        a span). Every built-in sampler samples a sampled span's child (parent-based, or by
        the same trace ID), so the child needs no sampling of its own."""
        context = self._span_context(parent.trace_id, self._new_span_id(), False,
                                     parent.trace_flags, parent.trace_state)
        span = self._readable_span(
            name=name, context=context, parent=parent, resource=self._resource,
            attributes=attributes or {}, links=links, start_time=started_ns,
            end_time=ended_ns, instrumentation_scope=self._scope,
            **({} if error is None else {"status": _error_status(error)}))
        for processor in self._processors:
            processor.on_end(span)

    def start_request(self, name: str, header: Callable[[str], str | None], *,
                      kind: str = "SERVER", attributes: Mapping[str, Any]) -> RequestTrace:
        """The span of a request arriving with ``header`` (its ``traceparent`` continues the
        caller's trace), as the transport names it."""
        parent = self._propagator.extract(carrier=header, getter=_GETTER)
        span = self.tracer.start_span(name, context=parent, kind=self._kinds[kind],
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
            "pyserving.request_id": request_id}
        if spec is not None and spec.signature_name:  # else once the signature is known
            attributes["pyserving.signature"] = spec.signature_name
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
        started = time.time_ns()
        try:
            admitted = admit(spec)
        except BaseException as error:
            trace.finished("admission", started, time.time_ns(), error=error)
            raise
        trace.finished("admission", started, time.time_ns())
        attributes = trace.attributes
        attributes["pyserving.model.version"] = admitted.version
        route = admitted.route
        if route is not None:
            key = route.rollout.plan.sticky_metadata_key
            sticky = bool(key) and context.header(key.lower()) is not None
            attributes["pyserving.rollout.arm"] = route.arm.name
            attributes["pyserving.rollout.routing"] = "sticky" if sticky else "random"
        return admitted

    def _note_servable(self, trace: RequestTrace, servable: Servable,
                       signature: SignatureDef) -> None:
        attributes = trace.attributes
        attributes["pyserving.model.name"] = servable.name
        attributes["pyserving.model.version"] = servable.version
        for key, value in servable.signatures.items():
            if value is signature:
                attributes["pyserving.signature"] = key
                break

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
            started = time.time_ns()
            try:
                outputs = runner(servable, signature, feeds, fetches)
            except BaseException as error:
                _run_finished(trace, feeds, started, error)
                raise
            _run_finished(trace, feeds, started)
            return outputs

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
            started = time.time_ns()
            try:
                outputs = await runner(servable, signature, feeds, fetches)
            except BaseException as error:
                _run_finished(trace, feeds, started, error)
                raise
            _run_finished(trace, feeds, started)
            return outputs

        return run

    def observe_batch_run(self, batch: BatchRun) -> None:
        """Batcher observer: each traced request's ``batch_queue`` span, and the batch's
        ``run`` span linked to every request span in it (a child of the first)."""
        from opentelemetry.trace import Link

        traces = [(context.trace, enqueued) for context, enqueued in batch.requests
                  if context.trace is not None and context.trace.recording]
        if not traces:
            return
        epoch_ns = _epoch_clock()
        started = epoch_ns(batch.started)
        for trace, enqueued in traces:
            trace.finished("batch_queue", epoch_ns(enqueued), started)
        self.record("run", traces[0][0].span_context, started,
                    started + int(batch.seconds * 1e9),
                    {"pyserving.model.name": batch.model, "pyserving.batch.size": batch.size,
                     "pyserving.batch.padded_size": batch.padded,
                     "pyserving.batch.padding": batch.padded - batch.size,
                     "pyserving.batch.requests": len(batch.requests)},
                    links=[Link(trace.span_context) for trace, _ in traces])

    def observe_encode(self, model: str, api: str, started: float, seconds: float) -> None:
        """Encode observer: the outputs-to-response step of the current request as a span."""
        trace = request_context.current.get().trace
        if trace is not None:
            began = _epoch_ns(started)
            trace.finished("encode", began, began + int(seconds * 1e9))

    def shutdown(self) -> None:
        """Export what is buffered and stop the exporter."""
        try:
            self.provider.shutdown()
        except Exception:  # an unreachable collector must not fail the server's stop
            log.warning("tracing: exporting the last spans failed", exc_info=True)


def _run_finished(trace: RequestTrace, feeds: Any, started: int,
                  error: BaseException | None = None) -> None:
    """An unbatched request's ``run`` span, from ``started`` (time.time_ns()) to now."""
    trace.finished("run", started, time.time_ns(), {"pyserving.batch.size": _rows(feeds)},
                   error)


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


# The batch span processor's sizes unless OTEL_BSP_MAX_QUEUE_SIZE / ..._EXPORT_BATCH_SIZE set
# them: a server makes 4-5 spans a request, so the SDK's 2048-span queue fills in a fraction
# of a second under load and drops spans; larger export batches make fewer export calls.
_QUEUE_SIZE, _EXPORT_BATCH_SIZE = 16384, 2048


def _batch_processor(exporter: Any) -> Any:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    if "OTEL_BSP_MAX_QUEUE_SIZE" in os.environ or \
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE" in os.environ:
        return BatchSpanProcessor(exporter)
    return BatchSpanProcessor(exporter, max_queue_size=_QUEUE_SIZE,
                              max_export_batch_size=_EXPORT_BATCH_SIZE)


def _hashed_once(resource: Any) -> Any:
    """``resource``, hashing once: the OTLP encoder groups every span it exports by resource,
    and a Resource's hash is a sorted JSON dump of its attributes (about a tenth of the
    encoder's time per span, measured)."""
    from opentelemetry.sdk.resources import Resource

    class HashedOnce(Resource):
        def __init__(self, attributes: Any, schema_url: str | None = None) -> None:
            super().__init__(attributes, schema_url)
            self._hash = super().__hash__()

        def __hash__(self) -> int:
            return self._hash

    return HashedOnce(resource.attributes, resource.schema_url)


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
    except ImportError as error:
        raise invalid_argument(f"--enable_tracing needs OpenTelemetry ({error}): install "
                               "pyserving[tracing]") from None
    names = [name.strip().lower() for name in
             os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",") if name.strip()]
    exporters = _exporters(names)
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    provider = TracerProvider(resource=_hashed_once(resource), shutdown_on_exit=False)
    processors = [_batch_processor(exporter) for exporter in exporters]
    for processor in processors:
        provider.add_span_processor(processor)
    log.info("tracing on: service %s, exporting to %s", resource.attributes[SERVICE_NAME],
             ", ".join(names) or "nowhere")
    return Tracing(provider, get_global_textmap(), processors)
