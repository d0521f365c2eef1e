"""The tests' OTLP/gRPC trace receiver: opentelemetry-proto's TraceService on loopback,
keeping every span it is sent, and the OTEL_* environment that points a server at it."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as trace_service

from support import TESTDATA, wait_until

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


class Collector(trace_service.TraceServiceServicer):
    """An OTLP trace receiver keeping every span it is sent, by name."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.spans: list[Any] = []

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self._lock:
            for resource_spans in request.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend(scope_spans.spans)
                self.resource = resource_spans.resource
        return trace_service_pb2.ExportTraceServiceResponse()

    def named(self, name: str) -> list[Any]:
        with self._lock:
            return [span for span in self.spans if span.name == name]

    def wait_for(self, name: str, count: int = 1, trace_id: str | None = None) -> list[Any]:
        def found() -> list[Any] | None:
            spans = [span for span in self.named(name)
                     if trace_id is None or span.trace_id.hex() == trace_id]
            return spans if len(spans) >= count else None
        wait_until(found, f"{count} span(s) named {name}", timeout=20)
        return found() or []

    def children(self, parent: Any) -> dict[str, Any]:
        with self._lock:
            return {span.name: span for span in self.spans
                    if span.trace_id == parent.trace_id and span.parent_span_id == parent.span_id}


def attributes(span: Any) -> dict[str, Any]:
    values = {}
    for item in span.attributes:
        kind = item.value.WhichOneof("value")
        values[item.key] = getattr(item.value, kind) if kind else None
    return values


def collector_at_work(monkeypatch: pytest.MonkeyPatch) -> Iterator[Collector]:
    """(A fixture's body) a collector on a free loopback port, and the OTEL_* environment
    that points at it."""
    receiver = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "pyserving-test")
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    yield receiver
    server.stop(None)


def traced_rollout_server(tmp_path: Path) -> Any:
    """A started ModelServer with --enable_tracing and model "m" (versions 1 and 2 of
    half_plus_two) under a rollout: all traffic to version 1, sticky on the "user" metadata,
    every request shadowed to version 2. The caller stops it."""
    from pyserving.server import ModelServer, ServerOptions

    for version in (1, 2):
        shutil.copytree(TESTDATA / "saved_model_half_plus_two_cpu" / "00000123",
                        tmp_path / "m" / str(version))
    config = tmp_path / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "m" base_path: "{tmp_path / "m"}" '
                      'model_platform: "tensorflow" model_version_policy { all {} } } }')
    rollout = tmp_path / "rollout.txt"
    rollout.write_text('rollouts { model_name: "m" split { version: 1 weight: 1 } '
                       'sticky_metadata_key: "user" shadow { version: 2 fraction: 1.0 } }')
    return ModelServer(ServerOptions(
        port=0, model_config_file=str(config), rollout_config_file=str(rollout),
        rollout_config_poll_wait_seconds=0, enable_tracing=True), host="127.0.0.1").start()
