"""--enable_tracing over the real OTLP/gRPC wire: a test collector (opentelemetry-proto's
TraceService) on loopback receives the spans of real gRPC and REST requests; the tests check
their parent/child links, the batch links, attributes, and that a given traceparent continues
the caller's trace. Also the request ID (x-request-id) both transports return."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from support import free_port, wait_until

pytest.importorskip("opentelemetry.proto", reason="the tracing extra is not installed")
pytest.importorskip("opentelemetry.sdk", reason="the tracing extra is not installed")
from otlp_support import (
    PARENT_ID,
    TRACE_ID,
    TRACEPARENT,
    Collector,
    attributes,
    collector_at_work,
    traced_rollout_server,
)

MODEL = "saved_model_half_plus_two_cpu"
PREDICT = "tensorflow.serving.PredictionService/Predict"


@pytest.fixture
def collector(monkeypatch: pytest.MonkeyPatch) -> Iterator[Collector]:
    yield from collector_at_work(monkeypatch)


def x_is(*values: float, model: str = "default") -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT,
                                    tensor_content=np.array(values, np.float32).tobytes())
    tensor.tensor_shape.dim.add().size = len(values)
    request.inputs["x"].CopyFrom(tensor)
    return request


def test_grpc_predict_continues_the_callers_trace(serve, testdata_model, channel_to,
                                                  collector):
    server = serve(model_base_path=testdata_model(MODEL), enable_tracing=True)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel_to(server.grpc_target))
    _, call = stub.Predict.with_call(x_is(1.0), timeout=10, metadata=(
        ("traceparent", TRACEPARENT), ("x-request-id", "caller-42")))
    assert ("x-request-id", "caller-42") in call.trailing_metadata()

    (span,) = collector.wait_for(PREDICT, trace_id=TRACE_ID)
    assert span.parent_span_id.hex() == PARENT_ID
    assert span.kind == span.SPAN_KIND_SERVER
    found = attributes(span)
    assert found["pyserving.model.name"] == "default"
    assert found["pyserving.model.version"] == 123
    assert found["pyserving.signature"] == "serving_default"
    assert found["pyserving.api"] == "Predict"
    assert found["rpc.grpc.status_code"] == 0
    assert found["pyserving.request_id"] == "caller-42"
    wait_until(lambda: {"admission", "run", "encode"} <= set(collector.children(span)),
               "the admission, run and encode spans")
    children = collector.children(span)
    for name in ("admission", "run", "encode"):
        child = children[name]
        assert span.start_time_unix_nano <= child.start_time_unix_nano
        assert child.end_time_unix_nano <= span.end_time_unix_nano
    assert children["admission"].end_time_unix_nano <= children["run"].start_time_unix_nano
    assert children["run"].end_time_unix_nano <= children["encode"].start_time_unix_nano
    assert collector.resource.attributes[0].key  # the resource came along
    service = {a.key: a.value.string_value for a in collector.resource.attributes}
    assert service["service.name"] == "pyserving-test"


def test_a_request_without_traceparent_starts_a_trace_and_gets_a_request_id(
        serve, testdata_model, channel_to, collector):
    server = serve(model_base_path=testdata_model(MODEL), enable_tracing=True)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel_to(server.grpc_target))
    _, call = stub.Predict.with_call(x_is(1.0), timeout=10)
    request_id = dict(call.trailing_metadata())["x-request-id"]
    assert request_id
    (span,) = collector.wait_for(PREDICT)
    assert not span.parent_span_id
    assert attributes(span)["pyserving.request_id"] == request_id


def test_errors_end_the_span_with_their_status(serve, testdata_model, channel_to, collector):
    server = serve(model_base_path=testdata_model(MODEL), enable_tracing=True)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel_to(server.grpc_target))
    with pytest.raises(grpc.RpcError) as raised:
        stub.Predict(x_is(1.0, model="missing"), timeout=10,
                     metadata=(("traceparent", TRACEPARENT), ("x-request-id", "bad-1")))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert ("x-request-id", "bad-1") in raised.value.trailing_metadata()
    (span,) = collector.wait_for(PREDICT, trace_id=TRACE_ID)
    assert attributes(span)["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert span.status.code == span.status.STATUS_CODE_ERROR
    assert "NOT_FOUND" in span.status.message
    wait_until(lambda: "admission" in collector.children(span), "the admission span")
    assert collector.children(span)["admission"].status.code == span.status.STATUS_CODE_ERROR


def test_metadata_has_a_span(serve, testdata_model, channel_to, collector):
    server = serve(model_base_path=testdata_model(MODEL), enable_tracing=True)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel_to(server.grpc_target))
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "default"
    stub.GetModelMetadata(request, timeout=10, metadata=(("traceparent", TRACEPARENT),))
    (span,) = collector.wait_for("tensorflow.serving.PredictionService/GetModelMetadata",
                                 trace_id=TRACE_ID)
    assert attributes(span)["pyserving.model.name"] == "default"


def test_a_batch_run_links_every_request_of_its_batch(serve, testdata_model, channel_to,
                                                      collector, tmp_path: Path):
    parameters = tmp_path / "batching.pbtxt"
    parameters.write_text("max_batch_size { value: 8 }\nbatch_timeout_micros { value: 300000 }\n"
                          "num_batch_threads { value: 1 }\nallowed_batch_sizes: 4\n"
                          "allowed_batch_sizes: 8\n")
    server = serve(model_base_path=testdata_model(MODEL), enable_tracing=True,
                   enable_batching=True, batching_parameters_file=str(parameters),
                   batching_wait_for_full_batch=True)  # the three share one batch
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel_to(server.grpc_target))
    with futures.ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda v: stub.Predict(x_is(v), timeout=10), [1.0, 2.0, 3.0]))
    assert [list(a.outputs["y"].float_val) for a in answers] == [[2.5], [3.0], [3.5]]

    requests = collector.wait_for(PREDICT, count=3)
    runs = collector.wait_for("run")
    queued = collector.wait_for("batch_queue", count=3)
    linked = {(link.trace_id, link.span_id) for run in runs for link in run.links}
    assert {(span.trace_id, span.span_id) for span in requests} <= linked
    run = next(run for run in runs if len(run.links) == 3)
    found = attributes(run)
    assert (found["pyserving.batch.size"], found["pyserving.batch.padded_size"]) == (3, 4)
    assert found["pyserving.batch.padding"] == 1
    assert any(run.parent_span_id == span.span_id for span in requests)
    by_request = {span.span_id: span for span in requests}
    for wait in queued:
        request = by_request[wait.parent_span_id]
        assert wait.trace_id == request.trace_id
        assert wait.end_time_unix_nano <= run.start_time_unix_nano + 1000
    for span in requests:
        assert attributes(span)["pyserving.model.version"] == 123
    # grpc.aio (batching) returns the request ID on errors too.
    with pytest.raises(grpc.RpcError) as raised:
        stub.Predict(x_is(1.0, model="missing"), timeout=10,
                     metadata=(("x-request-id", "aio-1"),))
    assert ("x-request-id", "aio-1") in raised.value.trailing_metadata()


def test_rest_continues_the_callers_trace(serve, testdata_model, collector):
    server = serve(model_base_path=testdata_model(MODEL), enable_tracing=True,
                   rest_api_port=free_port())
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.rest_port}/v1/models/default:predict",
        data=b'{"instances": [1.0, 2.0]}', method="POST",
        headers={"traceparent": TRACEPARENT, "X-Request-Id": "rest-7"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read()) == {"predictions": [2.5, 3.0]}
        assert response.headers["X-Request-Id"] == "rest-7"
    (span,) = collector.wait_for("POST /v1/models/{model}:predict", trace_id=TRACE_ID)
    assert span.parent_span_id.hex() == PARENT_ID
    found = attributes(span)
    assert found["http.response.status_code"] == 200
    assert found["pyserving.model.version"] == 123
    assert found["pyserving.request_id"] == "rest-7"
    wait_until(lambda: {"admission", "run", "encode"} <= set(collector.children(span)),
               "the admission, run and encode spans")


def test_rest_errors_and_generated_request_ids(serve, testdata_model, collector):
    server = serve(model_base_path=testdata_model(MODEL), enable_tracing=True,
                   rest_api_port=free_port())
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.rest_port}/v1/models/missing:predict",
        data=b'{"instances": [1.0]}', method="POST",
        headers={"X-Request-Id": "has spaces"})  # not a token: replaced
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=10)
    assert raised.value.code == 404
    request_id = raised.value.headers["X-Request-Id"]
    raised.value.close()  # its socket, before the next test
    assert request_id and " " not in request_id
    (span,) = collector.wait_for("POST /v1/models/{model}:predict")
    assert attributes(span)["http.response.status_code"] == 404
    assert attributes(span)["pyserving.request_id"] == request_id
    assert span.status.code == span.status.STATUS_CODE_ERROR


def test_tracing_needs_a_known_exporter(serve, testdata_model, monkeypatch):
    from pyserving.server.errors import ServingError

    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(ServingError, match="zipkin"):
        serve(model_base_path=testdata_model(MODEL), enable_tracing=True)


def test_off_by_default(serve, testdata_model, channel_to, collector):
    server = serve(model_base_path=testdata_model(MODEL))
    assert server.tracing is None and server.core.tracing is None
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel_to(server.grpc_target))
    _, call = stub.Predict.with_call(x_is(1.0), timeout=10)
    assert dict(call.trailing_metadata())["x-request-id"]
    assert collector.spans == []



def test_routing_is_on_the_span_and_the_shadow_is_linked(collector, tmp_path: Path):
    server = traced_rollout_server(tmp_path)
    try:
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            stub.Predict(x_is(1.0, model="m"), timeout=10, metadata=(("user", "ann"),))
            stub.Predict(x_is(1.0, model="m"), timeout=10)
        random, sticky = sorted(collector.wait_for(PREDICT, count=2),
                                key=lambda span: attributes(span)["pyserving.rollout.routing"])
        assert attributes(random)["pyserving.rollout.routing"] == "random"
        assert attributes(sticky)["pyserving.rollout.routing"] == "sticky"
        assert attributes(sticky)["pyserving.rollout.arm"] == "version:1"
        # The shadow runner may shed a copy while the machine is busy (its time budget).
        def shadow_status() -> dict:
            return server.core.rollout_status("m")["shadow"]
        wait_until(lambda: sum(shadow_status()[key] for key in ("compared", "dropped", "errors"))
                   == 2, "both shadows compared or shed", timeout=30)
        compared = shadow_status()["compared"]
        assert compared >= 1
        shadows = collector.wait_for("shadow", count=compared)
        primaries = {(span.trace_id, span.span_id) for span in (sticky, random)}
        for shadow in shadows:
            assert {(link.trace_id, link.span_id) for link in shadow.links} <= primaries
            assert shadow.trace_id not in {span.trace_id for span in (sticky, random)}
        wait_until(lambda: all("run" in collector.children(s) for s in shadows),
                   "the shadows' run spans")
        assert attributes(collector.children(shadows[0])["run"]) == {"pyserving.batch.size": 1}
    finally:
        server.stop(grace=None)


WITHOUT_THE_EXTRA = """
import sys
sys.modules["opentelemetry"] = None  # as if pyserving[tracing] were not installed
import grpc, numpy as np
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from pyserving.server import ModelServer, ServerOptions
from pyserving.server.errors import ServingError

with ModelServer(ServerOptions(port=0, model_base_path=sys.argv[1]), host="127.0.0.1") as s:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "default"
    request.inputs["x"].dtype = 1
    request.inputs["x"].float_val.append(1.0)
    with grpc.insecure_channel(s.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        answer, call = stub.Predict.with_call(request, timeout=10)
    print("y", list(answer.outputs["y"].float_val), dict(call.trailing_metadata())["x-request-id"])
try:
    ModelServer(ServerOptions(port=0, model_base_path=sys.argv[1], enable_tracing=True))
except ServingError as error:
    print(error)
print("imported", sorted(name for name in sys.modules if name.startswith("opentelemetry.")))
"""


def test_without_the_extra_serving_works_and_tracing_is_refused(testdata_model):
    answer = subprocess.run([sys.executable, "-c", WITHOUT_THE_EXTRA, testdata_model(MODEL)],
                            capture_output=True, text=True, timeout=180)
    assert answer.returncode == 0, answer.stderr
    lines = answer.stdout.splitlines()
    assert lines[0].startswith("y [2.5] ")
    assert lines[1].startswith("INVALID_ARGUMENT: --enable_tracing needs OpenTelemetry")
    assert lines[1].endswith("install pyserving[tracing]")
    assert lines[2] == "imported []"
