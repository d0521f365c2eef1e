"""--enable_tracing for the Open Inference Protocol (V2) over the real OTLP/gRPC wire: ModelInfer
and ModelMetadata over gRPC (stubs compiled from protos/) and REST (tritonclient[http] and raw
HTTP) get the spans Predict gets, named by V2's own service and routes; a caller's traceparent
continues its trace; V2 and TF Serving requests batched together are linked by one run span;
a rollout's routing and shadow show on V2 spans."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from pyserving.client.protos.inference import grpc_service_pb2 as pb
from pyserving.client.protos.inference import grpc_service_pb2_grpc
from pyserving.server.apis import predict_pb2, prediction_service_pb2_grpc
from support import free_port, wait_until
from v2_support import http

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
MODEL_INFER = "inference.GRPCInferenceService/ModelInfer"
REST_INFER = "POST /v2/models/{model}/infer"
TIMEOUT = 20


@pytest.fixture
def collector(monkeypatch: pytest.MonkeyPatch) -> Iterator[Collector]:
    yield from collector_at_work(monkeypatch)


def infer_request(value: float, model: str = "default") -> Any:
    request = pb.ModelInferRequest(model_name=model, id="v2-request")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 1])
    request.raw_input_contents.append(np.array([value], np.float32).tobytes())
    return request


def y_of(response: Any) -> float:
    return float(np.frombuffer(response.raw_output_contents[0], np.float32)[0])


def v2_stub(channel: grpc.Channel) -> Any:
    return grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)


def rest_infer(server: Any, value: float, headers: dict[str, str] | None = None,
               model: str = "default", datatype: str = "FP32") -> tuple[int, dict, dict]:
    body = {"inputs": [{"name": "x", "datatype": datatype, "shape": [1, 1], "data": [[value]]}]}
    status, payload, answer_headers = http(
        "POST", f"http://127.0.0.1:{server.rest_port}/v2/models/{model}/infer",
        json.dumps(body).encode(), headers, timeout=TIMEOUT)
    return status, json.loads(payload), {key.lower(): value for key, value in
                                         answer_headers.items()}


def assert_request_children_in_order(collector: Collector, span: Any) -> None:
    wait_until(lambda: {"admission", "run", "encode"} <= set(collector.children(span)),
               "the admission, run and encode spans")
    children = collector.children(span)
    for name in ("admission", "run", "encode"):
        assert span.start_time_unix_nano <= children[name].start_time_unix_nano
        assert children[name].end_time_unix_nano <= span.end_time_unix_nano
    assert children["admission"].end_time_unix_nano <= children["run"].start_time_unix_nano
    assert children["run"].end_time_unix_nano <= children["encode"].start_time_unix_nano


def test_grpc_model_infer_is_a_span_of_v2s_service_continuing_the_callers_trace(
        serve, testdata_model, channel_to, collector):
    server = serve(model_base_path=testdata_model(MODEL), enable_tracing=True)
    stub = v2_stub(channel_to(server.grpc_target))
    response, call = stub.ModelInfer.with_call(infer_request(1.0), timeout=TIMEOUT, metadata=(
        ("traceparent", TRACEPARENT), ("x-request-id", "v2-grpc-1")))
    assert y_of(response) == 2.5
    assert ("x-request-id", "v2-grpc-1") in call.trailing_metadata()

    (span,) = collector.wait_for(MODEL_INFER, trace_id=TRACE_ID)
    assert span.parent_span_id.hex() == PARENT_ID
    assert span.kind == span.SPAN_KIND_SERVER
    assert attributes(span) == {
        "rpc.system": "grpc", "rpc.service": "inference.GRPCInferenceService",
        "rpc.method": "ModelInfer", "rpc.grpc.status_code": 0, "pyserving.protocol": "v2",
        "pyserving.api": "ModelInfer", "pyserving.model.name": "default",
        "pyserving.model.version": 123, "pyserving.signature": "serving_default",
        "pyserving.request_id": "v2-grpc-1"}
    assert_request_children_in_order(collector, span)
    assert attributes(collector.children(span)["run"]) == {"pyserving.batch.size": 1}


def test_grpc_errors_and_model_metadata(serve, testdata_model, channel_to, collector):
    server = serve(model_base_path=testdata_model(MODEL), enable_tracing=True)
    stub = v2_stub(channel_to(server.grpc_target))
    with pytest.raises(grpc.RpcError) as raised:
        stub.ModelInfer(infer_request(1.0, model="missing"), timeout=TIMEOUT,
                        metadata=(("traceparent", TRACEPARENT),))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    (span,) = collector.wait_for(MODEL_INFER, trace_id=TRACE_ID)
    assert attributes(span)["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert attributes(span)["pyserving.model.name"] == "missing"
    assert span.status.code == span.status.STATUS_CODE_ERROR
    assert "NOT_FOUND" in span.status.message
    wait_until(lambda: "admission" in collector.children(span), "the admission span")
    assert collector.children(span)["admission"].status.code == span.status.STATUS_CODE_ERROR

    bad = infer_request(1.0)
    bad.inputs[0].datatype = "INT32"  # the signature wants FP32: refused after admission
    with pytest.raises(grpc.RpcError) as raised:
        stub.ModelInfer(bad, timeout=TIMEOUT)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    failed = next(s for s in collector.wait_for(MODEL_INFER, count=2)
                  if s.trace_id.hex() != TRACE_ID)
    assert attributes(failed)["rpc.grpc.status_code"] == \
        grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "data-type is 'INT32'" in failed.status.message

    metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name="default"), timeout=TIMEOUT,
                                  metadata=(("x-request-id", "meta-1"),))
    assert metadata.name == "default"
    (span,) = collector.wait_for("inference.GRPCInferenceService/ModelMetadata")
    found = attributes(span)
    assert (found["pyserving.model.name"], found["rpc.method"], found["pyserving.request_id"],
            found["rpc.grpc.status_code"]) == ("default", "ModelMetadata", "meta-1", 0)


def test_rest_infer_with_tritonclient_continues_the_callers_trace(serve, testdata_model,
                                                                  collector):
    import tritonclient.http as triton

    server = serve(model_base_path=testdata_model(MODEL), enable_tracing=True,
                   rest_api_port=free_port())
    client = triton.InferenceServerClient(f"127.0.0.1:{server.rest_port}")
    try:
        x = triton.InferInput("x", [1, 1], "FP32")
        x.set_data_from_numpy(np.array([[3.0]], np.float32), binary_data=True)
        answer = client.infer("default", [x], headers={"traceparent": TRACEPARENT,
                                                       "x-request-id": "triton-1"})
        assert answer.as_numpy("y").tolist() == [[3.5]]
        assert client.get_model_metadata("default", model_version="123")["name"] == "default"
        assert client.is_server_ready() and client.is_model_ready("default")
    finally:
        client.close()
    (span,) = collector.wait_for(REST_INFER, trace_id=TRACE_ID)
    assert span.parent_span_id.hex() == PARENT_ID
    found = attributes(span)
    assert found["http.route"] == "/v2/models/{model}/infer"
    assert found["http.response.status_code"] == 200
    assert (found["pyserving.protocol"], found["pyserving.api"]) == ("v2", "ModelInfer")
    assert (found["pyserving.model.name"], found["pyserving.model.version"],
            found["pyserving.signature"]) == ("default", 123, "serving_default")
    assert found["pyserving.request_id"] == "triton-1"
    assert_request_children_in_order(collector, span)
    (metadata,) = collector.wait_for("GET /v2/models/{model}/versions/{version}")
    assert attributes(metadata)["pyserving.api"] == "ModelMetadata"
    # readiness probes are not traced
    assert not [s for s in collector.spans if "health" in s.name or "ready" in s.name]


def test_rest_errors_and_request_ids(serve, testdata_model, collector):
    server = serve(model_base_path=testdata_model(MODEL), enable_tracing=True,
                   rest_api_port=free_port())
    status, answer, headers = rest_infer(server, 1.0, {"X-Request-Id": "rest-bad"},
                                         datatype="INT32")
    assert status == 400 and "INT32" in answer["error"]
    assert headers["x-request-id"] == "rest-bad"
    status, _, headers = rest_infer(server, 1.0, model="missing")
    assert status == 404
    spans = collector.wait_for(REST_INFER, count=2)
    by_id = {attributes(span)["pyserving.request_id"]: span for span in spans}
    bad = by_id["rest-bad"]
    assert attributes(bad)["http.response.status_code"] == 400
    assert bad.status.code == bad.status.STATUS_CODE_ERROR
    missing = by_id[headers["x-request-id"]]
    assert attributes(missing)["http.response.status_code"] == 404
    assert attributes(missing)["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]


def test_v2_and_tf_serving_requests_in_one_batch_are_linked_by_its_run(
        serve, testdata_model, channel_to, collector, tmp_path: Path):
    parameters = tmp_path / "batching.pbtxt"
    parameters.write_text("max_batch_size { value: 8 }\nbatch_timeout_micros { value: 300000 }\n"
                          "num_batch_threads { value: 1 }\nallowed_batch_sizes: 4\n"
                          "allowed_batch_sizes: 8\n")
    server = serve(model_base_path=testdata_model(MODEL), enable_tracing=True,
                   enable_batching=True, batching_parameters_file=str(parameters),
                   batching_wait_for_full_batch=True, rest_api_port=free_port())
    channel = channel_to(server.grpc_target)

    def predict(value: float) -> float:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "default"
        request.inputs["x"].dtype = 1
        request.inputs["x"].tensor_shape.dim.add().size = 1
        request.inputs["x"].tensor_shape.dim.add().size = 1
        request.inputs["x"].float_val.append(value)
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            request, timeout=TIMEOUT)
        return float(response.outputs["y"].float_val[0])

    def v2_grpc(value: float) -> float:
        return y_of(v2_stub(channel).ModelInfer(infer_request(value), timeout=TIMEOUT))

    def v2_rest(value: float) -> float:
        status, answer, _ = rest_infer(server, value)
        assert status == 200, answer
        return float(answer["outputs"][0]["data"][0])

    with futures.ThreadPoolExecutor(3) as pool:
        answers = [pool.submit(call, value) for call, value in
                   ((predict, 1.0), (v2_grpc, 2.0), (v2_rest, 3.0))]
        assert [answer.result() for answer in answers] == [2.5, 3.0, 3.5]

    requests = [*collector.wait_for("tensorflow.serving.PredictionService/Predict"),
                *collector.wait_for(MODEL_INFER), *collector.wait_for(REST_INFER)]
    (run,) = [run for run in collector.wait_for("run") if len(run.links) == 3]
    assert {(link.trace_id, link.span_id) for link in run.links} == \
        {(span.trace_id, span.span_id) for span in requests}
    assert attributes(run)["pyserving.batch.size"] == 3
    assert attributes(run)["pyserving.batch.padded_size"] == 4
    queued = collector.wait_for("batch_queue", count=3)
    assert {span.parent_span_id for span in queued} == {span.span_id for span in requests}
    for span in requests:
        wait_until(lambda span=span: "encode" in collector.children(span), "its encode span")


def test_a_rollout_routes_v2_requests_on_their_spans_and_their_shadow_is_linked(
        collector, tmp_path: Path):
    server = traced_rollout_server(tmp_path)
    try:
        with grpc.insecure_channel(server.grpc_target) as channel:
            response = v2_stub(channel).ModelInfer(infer_request(1.0, model="m"),
                                                   timeout=TIMEOUT, metadata=(("user", "ann"),))
        assert response.model_version == "1"
        (span,) = collector.wait_for(MODEL_INFER)
        found = attributes(span)
        assert (found["pyserving.rollout.arm"], found["pyserving.rollout.routing"],
                found["pyserving.model.version"]) == ("version:1", "sticky", 1)
        wait_until(lambda: sum(server.core.rollout_status("m")["shadow"][key]
                               for key in ("compared", "dropped", "errors")) == 1,
                   "the shadow compared or shed", timeout=30)
        if server.core.rollout_status("m")["shadow"]["compared"]:  # not shed under load
            (shadow,) = collector.wait_for("shadow")
            assert [(link.trace_id, link.span_id) for link in shadow.links] == \
                [(span.trace_id, span.span_id)]
            wait_until(lambda: "run" in collector.children(shadow), "the shadow's run span")
    finally:
        server.stop(grace=None)


def test_a_caller_that_does_not_sample_gets_no_spans_and_others_still_do(
        serve, testdata_model, channel_to, collector):
    server = serve(model_base_path=testdata_model(MODEL), enable_tracing=True)
    stub = v2_stub(channel_to(server.grpc_target))
    unsampled = f"00-{'1' * 32}-{PARENT_ID}-00"
    answer, call = stub.ModelInfer.with_call(infer_request(1.0), timeout=TIMEOUT,
                                             metadata=(("traceparent", unsampled),))
    assert y_of(answer) == 2.5 and dict(call.trailing_metadata())["x-request-id"]
    stub.ModelInfer(infer_request(2.0), timeout=TIMEOUT,
                    metadata=(("traceparent", TRACEPARENT),))
    (span,) = collector.wait_for(MODEL_INFER, trace_id=TRACE_ID)
    assert_request_children_in_order(collector, span)
    server.stop()  # flushes whatever is buffered
    assert {s.trace_id.hex() for s in collector.spans} == {TRACE_ID}
