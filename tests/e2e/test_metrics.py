"""The metrics page after real gRPC traffic: TF Serving's metric names and labels, load and
batching metrics, and the per-version state gauge; plus --monitoring_config_file parsing."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import numpy as np
import pytest
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from inference_requests import (
    CLASSIFY_METHOD,
    REGRESS_METHOD,
    classify_request,
    multi_request,
    regress_request,
)
from pyserving.server.errors import ServingError
from pyserving.server.metrics import PrometheusSettings, read_monitoring_config
from support import TESTDATA, free_port, metrics_page_samples, wait_until

MODEL = "saved_model_half_plus_two_cpu"
DEFAULT_PATH = "/monitoring/prometheus/metrics"  # TF Serving's PrometheusExporter::kPrometheusPath


def x_is(value: float, model: str = "default") -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT,
                                    tensor_content=np.array([value], np.float32).tobytes())
    tensor.tensor_shape.dim.add().size = 1
    request.inputs["x"].CopyFrom(tensor)
    return request


def scrape(server: object) -> dict[tuple[str, frozenset], float]:
    """Every sample of the server's metrics page, keyed by (name, labels)."""
    body, content_type = server.metrics.render()
    assert content_type.startswith("text/plain")
    return metrics_page_samples(body.decode())


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_request_count_and_latency_use_tf_serving_names(serve, testdata_model, channel_to):
    server = serve(model_base_path=testdata_model(MODEL))
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel_to(server.grpc_target))
    for number in range(3):
        stub.Predict(x_is(number), timeout=10)
    with pytest.raises(grpc.RpcError) as raised:
        stub.Predict(x_is(1.0, model="missing"), timeout=10)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND

    samples = scrape(server)
    assert value(samples, ":tensorflow:serving:request_count",
                 model_name="default", status="OK") == 3
    assert value(samples, ":tensorflow:serving:request_count",
                 model_name="missing", status="NOT_FOUND") == 1
    latency = {"model_name": "default", "API": "Predict", "entrypoint": "GRPC"}
    assert value(samples, ":tensorflow:serving:request_latency_count", **latency) == 3
    assert value(samples, ":tensorflow:serving:request_latency_sum", **latency) > 0
    assert value(samples, ":tensorflow:serving:request_latency_bucket", le="+Inf",
                 **latency) == 3
    # As in TF Serving, failed requests are counted but add no latency sample.
    assert value(samples, ":tensorflow:serving:request_latency_count", model_name="missing",
                 API="Predict", entrypoint="GRPC") == 0
    assert value(samples, "pyserving_inflight_requests", **latency) == 0

    body, _ = server.metrics.render()
    assert b"# TYPE :tensorflow:serving:request_latency histogram" in body
    assert b':tensorflow:serving:request_count{model_name="default",status="OK"} 3.0' \
        in body.splitlines()


@pytest.mark.parametrize("batching", [False, True], ids=["unbatched", "batched"])
def test_runtime_latency_and_example_counts_use_tf_serving_names(serve, testdata_model,
                                                                 channel_to, batching):
    server = serve(model_base_path=testdata_model(MODEL), enable_batching=batching)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel_to(server.grpc_target))
    for number in range(2):
        stub.Predict(x_is(number), timeout=10)
    stub.Classify(classify_request("classify_x_to_y", 1.0), timeout=10)
    stub.Regress(regress_request("regress_x_to_y", 1.0, 2.0), timeout=10)
    stub.MultiInference(multi_request(("default", "regress_x_to_y", REGRESS_METHOD),
                                      ("default", "classify_x_to_y", CLASSIFY_METHOD),
                                      xs=(1.0, 2.0, 3.0)), timeout=10)
    bad = x_is(1.0)
    bad.inputs["x"].dtype = types_pb2.DT_STRING
    with pytest.raises(grpc.RpcError):  # fails before TensorFlow runs: no runtime sample
        stub.Predict(bad, timeout=10)

    samples = scrape(server)
    for api, count in (("Predict", 2), ("Classify", 1), ("Regress", 1)):
        labels = {"model_name": "default", "API": api, "runtime": "TF1"}
        assert value(samples, ":tensorflow:serving:runtime_latency_count", **labels) == count
        assert value(samples, ":tensorflow:serving:runtime_latency_sum", **labels) > 0
        assert value(samples, ":tensorflow:serving:runtime_latency_bucket", le="+Inf",
                     **labels) == count
    assert value(samples, ":tensorflow:serving:request_example_counts_count",
                 model="default") == 1
    assert value(samples, ":tensorflow:serving:request_example_counts_sum",
                 model="default") == 3
    assert value(samples, ":tensorflow:serving:request_example_count_total",
                 model="default") == 3
    body, _ = server.metrics.render()
    assert b"# TYPE :tensorflow:serving:runtime_latency histogram" in body
    assert b':tensorflow:serving:request_example_count_total{model="default"} 3.0' \
        in body.splitlines()


def test_load_metrics_and_version_state(serve, testdata_model):
    base_path = testdata_model("saved_model_half_plus_two_2_versions")
    server = serve(model_base_path=base_path, model_name="two")
    samples = scrape(server)
    path = str(Path(base_path) / "00000124")  # the latest policy loads only 124
    assert value(samples, ":tensorflow:cc:saved_model:load_attempt_count",
                 model_path=path, status="success") == 1
    assert value(samples, ":tensorflow:cc:saved_model:load_latency", model_path=path) > 0
    assert value(samples, "pyserving_model_load_seconds_count", model_name="two") == 1
    assert value(samples, "pyserving_model_version_state",
                 model_name="two", version="124", state="AVAILABLE") == 1


def failed_start(base_path: str, retries: int = 1) -> object:
    """A server whose start-up failed on its model (kept for its metrics)."""
    from pyserving.server import ModelServer, ServerOptions

    server = ModelServer(ServerOptions(port=0, model_base_path=base_path,
                                       max_num_load_retries=retries,
                                       load_retry_interval_micros=0), host="127.0.0.1")
    with pytest.raises(ServingError):
        server.start()
    return server


def test_failed_load_attempts_are_counted(tmp_path: Path):
    """TensorFlow's LoadSavedModel counts each failed attempt and adds its latency too."""
    version = tmp_path / "base" / "1"
    version.mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"not a SavedModel")
    samples = scrape(failed_start(str(version.parent)))
    assert value(samples, ":tensorflow:cc:saved_model:load_attempt_count",
                 model_path=str(version), status="fail") == 2
    assert value(samples, ":tensorflow:cc:saved_model:load_attempt_count",
                 model_path=str(version), status="success") == 0
    assert (":tensorflow:cc:saved_model:load_latency",
            frozenset({("model_path", str(version))})) in samples
    assert value(samples, "pyserving_model_version_state",
                 model_name="default", version="1", state="END") == 1


def test_a_session_bundle_is_refused_before_load_saved_model(testdata_model):
    """LoadSessionBundleOrSavedModelBundle refuses export.meta without calling LoadSavedModel,
    so no load attempt is counted."""
    samples = scrape(failed_start(testdata_model("bad_half_plus_two")))
    assert not [key for key in samples if "saved_model:load" in key[0]]


def test_a_warmup_failure_counts_a_successful_load_saved_model(testdata_model):
    """TF Serving warms up after LoadSavedModel has counted the attempt as a success."""
    import tensorflow as tf

    base_path = testdata_model(MODEL)
    version = Path(base_path) / "00000123"
    (version / "assets.extra").mkdir()
    with tf.io.TFRecordWriter(str(version / "assets.extra" / "tf_serving_warmup_requests")) \
            as writer:
        writer.write(b"malformed_record")
    samples = scrape(failed_start(base_path, retries=0))
    assert value(samples, ":tensorflow:cc:saved_model:load_attempt_count",
                 model_path=str(version), status="success") == 1
    assert value(samples, ":tensorflow:cc:saved_model:load_attempt_count",
                 model_path=str(version), status="fail") == 0
    assert value(samples, ":tensorflow:cc:saved_model:load_latency", model_path=str(version)) > 0
    assert value(samples, "pyserving_model_load_seconds_count", model_name="default") == 0


def test_batching_metrics(serve, testdata_model, channel_to):
    server = serve(model_base_path=testdata_model(MODEL), enable_batching=True)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel_to(server.grpc_target))
    for number in range(2):
        stub.Predict(x_is(number), timeout=10)
    samples = scrape(server)
    assert value(samples, ":tensorflow:serving:batching_session:queuing_latency_count",
                 thread_pool_name="batch_threads") == 2
    assert value(samples, ":tensorflow:serving:batching_session:input_batch_size_count") == 2
    assert value(samples, ":tensorflow:serving:batching_session:processed_batch_size_sum") == 2
    assert value(samples, ":tensorflow:serving:batching_session:padding_size_count",
                 execution_batch_size="1") == 2
    assert value(samples, "pyserving_batch_queue_size", model_name="default") == 0


def test_monitoring_config_file(tmp_path: Path):
    assert read_monitoring_config(str(TESTDATA / "monitoring_config.txt")) == \
        PrometheusSettings(enable=True, path=DEFAULT_PATH)
    custom = tmp_path / "monitoring.txt"
    custom.write_text('prometheus_config { enable: true path: "/metrics" }')
    assert read_monitoring_config(str(custom)) == PrometheusSettings(True, "/metrics")
    assert read_monitoring_config("") == PrometheusSettings(enable=False)


def test_unparsable_monitoring_config_fails_start_up(serve, testdata_model, tmp_path: Path):
    """proto_util.h ParseProtoTextFile: INVALID_ARGUMENT without the parser's detail."""
    bad = tmp_path / "monitoring.txt"
    bad.write_text("prometheus_config { bogus: 1 }")
    with pytest.raises(ServingError) as raised:
        serve(model_base_path=testdata_model(MODEL), rest_api_port=free_port(),
              monitoring_config_file=str(bad))
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.message == f"Invalid protobuf file: '{bad}'"


@pytest.mark.parametrize("contents", ["prometheus_config { bogus: 1 }", None],
                         ids=["unparsable", "missing"])
def test_monitoring_config_is_not_read_without_rest(serve, testdata_model, channel_to,
                                                    tmp_path: Path, contents: str | None):
    """server.cc reads --monitoring_config_file only when --rest_api_port is not 0."""
    path = tmp_path / "monitoring.txt"
    if contents is not None:
        path.write_text(contents)
    server = serve(model_base_path=testdata_model(MODEL), rest_api_port=0,
                   monitoring_config_file=str(path))
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel_to(server.grpc_target))
    assert stub.Predict(x_is(2.0), timeout=10).outputs["y"].float_val == [3.0]


def test_one_structured_log_line_per_model_event(serve, testdata_model, caplog, tmp_path):
    source = Path(testdata_model("saved_model_half_plus_two_2_versions"))
    base_path = tmp_path / "growing"
    base_path.mkdir()
    (source / "00000123").rename(base_path / "00000123")
    caplog.set_level(logging.INFO, logger="pyserving.server.events")
    serve(model_base_path=str(base_path), model_name="two",
              file_system_poll_wait_seconds=1)
    (source / "00000124").rename(base_path / "00000124")
    wait_until(lambda: len(_events(caplog)) >= 4, "four model events", 30, interval=0.1)
    events = _events(caplog)
    assert [(e["event"], e["model"], e["version"]) for e in events] == [
        ("load", "two", 123), ("load", "two", 124), ("swap", "two", 124), ("unload", "two", 123)]
    assert events[2]["previous_version"] == 123
    assert all(e["duration_ms"] >= 0 for e in events)
    line = next(r.getMessage() for r in caplog.records if hasattr(r, "model_event"))
    assert line.startswith("model_event event=load model=two version=123 duration_ms=")


def _events(caplog: pytest.LogCaptureFixture) -> list[dict]:
    return [record.model_event for record in caplog.records if hasattr(record, "model_event")]


def test_prometheus_page_on_the_rest_port_after_traffic(testdata_model, serve, channel_to):
    """TF Serving's testPrometheusEndpoint: the monitoring config puts the page on REST."""
    import socket
    import urllib.request

    from tensorflow.core.framework import types_pb2
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from support import TESTDATA

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        rest_port = probe.getsockname()[1]
    server = serve(model_base_path=testdata_model("saved_model_half_plus_two_cpu"),
                   rest_api_port=rest_port,
                   monitoring_config_file=str(TESTDATA / "monitoring_config.txt"))
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel_to(server.grpc_target))
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "default"
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].float_val.append(2.0)
    stub.Predict(request, 10)
    rest_predict = urllib.request.Request(
        f"http://127.0.0.1:{server.rest_port}/v1/models/default:predict",
        data=b'{"instances": [1.0, 2.0]}', method="POST")
    with urllib.request.urlopen(rest_predict, timeout=10) as response:
        assert response.status == 200
    url = f"http://127.0.0.1:{server.rest_port}/monitoring/prometheus/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        page = response.read().decode()
    assert "# TYPE" in page
    assert ':tensorflow:serving:request_count{model_name="default",status="OK"} 2.0' \
        in page.splitlines()
    assert 'entrypoint="REST"' in page


def _metrics_url(server: object, suffix: str = "") -> str:
    return f"http://127.0.0.1:{server.rest_port}{DEFAULT_PATH}{suffix}"


def _serve_page(serve, testdata_model, **options: object) -> object:
    return serve(model_base_path=testdata_model(MODEL), rest_api_port=free_port(),
                 monitoring_config_file=str(TESTDATA / "monitoring_config.txt"), **options)


def test_page_is_prometheus_clients_text_with_tf_serving_names(serve, testdata_model,
                                                                channel_to):
    """prometheus-client writes the page; names, label names and values and bucket limits are
    TF Serving's. TF's counters are gauges: the text format would add _total to a counter."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    server = _serve_page(serve, testdata_model, enable_batching=True)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel_to(server.grpc_target))
    stub.Predict(x_is(1.0), timeout=10)
    with pytest.raises(grpc.RpcError):
        stub.Predict(x_is(1.0, model='a"b\\c'), timeout=10)
    with urllib.request.urlopen(_metrics_url(server), timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        page = response.read().decode()
    families = {family.name: family for family in text_string_to_metric_families(page)}
    types = {name: family.type for name, family in families.items()}
    for name in ("request_count", "model_warmup_records_read"):
        assert types[":tensorflow:serving:" + name] == "gauge"
    assert types[":tensorflow:cc:saved_model:load_latency"] == "gauge"
    assert types[":tensorflow:serving:request_latency"] == "histogram"
    assert types["pyserving_inflight_requests"] == "gauge"
    counts = {(sample.labels["model_name"], sample.labels["status"]): sample.value
              for sample in families[":tensorflow:serving:request_count"].samples}
    assert counts == {('a"b\\c', "NOT_FOUND"): 1, ("default", "OK"): 1}
    samples = metrics_page_samples(page)
    labels = {"model_name": "default", "API": "Predict", "entrypoint": "GRPC"}
    limits = [float(dict(key[1])["le"]) for key in samples
              if key[0] == ":tensorflow:serving:request_latency_bucket"
              and set(labels.items()) <= key[1]]
    assert limits[:4] == [10, 18, 10 * 1.8 * 1.8, 10 * 1.8 * 1.8 * 1.8]
    assert len(limits) == 34 and limits[-1] == float("inf")
    assert value(samples, ":tensorflow:serving:request_latency_bucket", le="+Inf",
                 **labels) == 1
    assert value(samples, ":tensorflow:serving:request_latency_count", **labels) == 1
    # Prometheus' le is "less than or equal": a batch of 1 counts under le="1".
    size = ":tensorflow:serving:batching_session:input_batch_size"
    assert value(samples, size + "_bucket", le="1.0") == 1
    assert value(samples, size + "_sum") == 1 and value(samples, size + "_count") == 1


def test_unlabeled_histograms_start_at_zero(serve, testdata_model):
    body, _ = serve(model_base_path=testdata_model(MODEL)).metrics.render()
    size = ":tensorflow:serving:batching_session:input_batch_size"
    assert f"# TYPE {size} histogram" in body.decode().splitlines()
    assert value(metrics_page_samples(body.decode()), size + "_count") == 0


def test_page_path_with_a_query_is_refused(serve, testdata_model):
    """ProcessPrometheusRequest compares uri_path, query included, with the configured path."""
    import urllib.error
    import urllib.request

    server = _serve_page(serve, testdata_model)
    for suffix in ("?x=1", "?"):
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(_metrics_url(server, suffix), timeout=10)
        assert raised.value.code == 400
        assert raised.value.headers["Content-Type"] == "text/plain"
        assert raised.value.read().decode() == \
            f"Unexpected path: {DEFAULT_PATH}{suffix}. Should be {DEFAULT_PATH}"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "HEAD", "OPTIONS"])
def test_page_is_served_for_any_method(serve, testdata_model, method):
    """TF Serving registers the page's handler by URI, so the method does not matter."""
    import urllib.request

    server = _serve_page(serve, testdata_model)
    request = urllib.request.Request(_metrics_url(server), method=method,
                                     data=b"{}" if method in ("POST", "PUT") else None)
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        body = response.read().decode()
    if method == "HEAD":
        assert body == ""
    else:
        assert "# TYPE :tensorflow:serving:request_count gauge\n" in body
