"""Request logging (``ModelConfig.logging_config``) end to end: real servers on loopback, gRPC
and REST, the files read back with TensorFlow's own ``tf.data.TFRecordDataset`` as the oracle.
"""

from __future__ import annotations

import logging
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from pyserving.server.errors import ServingError
from server_process import Launcher
from support import free_port, metrics_page_samples, post_json, wait_until

MODEL = "half"
TF1_MODEL = "saved_model_half_plus_two_cpu"
RPC_TIMEOUT = 30.0
Stub = prediction_service_pb2_grpc.PredictionServiceStub


def config_text(base_path: str, prefix: str | Path, rate: float = 1.0,
                collector_type: str = "tfrecord") -> str:
    return f"""model_config_list {{ config {{
  name: "{MODEL}" base_path: "{base_path}" model_platform: "tensorflow"
  logging_config {{
    log_collector_config {{ type: "{collector_type}" filename_prefix: "{prefix}" }}
    sampling_config {{ sampling_rate: {rate} }}
  }} }} }}
"""


def parsed_config(text: str) -> model_server_config_pb2.ModelServerConfig:
    from google.protobuf import text_format
    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())


def read_logs(folder: Path) -> list[prediction_log_pb2.PredictionLog]:
    """Every record of every log file in ``folder``, read by TensorFlow."""
    files = sorted(str(path) for path in folder.glob("*.tfrecord"))
    if not files:
        return []
    return [prediction_log_pb2.PredictionLog.FromString(record)
            for record in tf.data.TFRecordDataset(files).as_numpy_iterator()]


def predict_request(x: float, signature: str = "") -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    if signature:
        request.model_spec.signature_name = signature
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].float_val.append(x)
    request.inputs["x"].tensor_shape.dim.add().size = 1
    return request


def examples(request_input: Any, *xs: float) -> None:
    for x in xs:
        example = request_input.example_list.examples.add()
        example.features.feature["x"].float_list.value.append(x)


@pytest.fixture
def logged_server(testdata_model: Callable[..., str], serve: Callable[..., Any],
                  tmp_path: Path) -> Callable[..., tuple[Any, Path]]:
    def start(rate: float = 1.0, **options: Any) -> tuple[Any, Path]:
        base = testdata_model(TF1_MODEL, MODEL)
        folder = tmp_path / "logs"
        config = tmp_path / "models.config"
        config.write_text(config_text(base, folder / MODEL, rate))
        return serve(model_config_file=str(config), **options), folder
    return start


@pytest.mark.parametrize("batching", [False, True], ids=["plain", "batching"])
def test_answered_requests_are_logged_over_grpc_and_rest(logged_server, channel_to, batching):
    server, folder = logged_server(rest_api_port=free_port(), enable_batching=batching)
    stub = Stub(channel_to(server.grpc_target))
    sent: list[tuple[str, Any, Any]] = []
    predict = predict_request(2.0)
    sent.append(("predict_log", predict, stub.Predict(predict, RPC_TIMEOUT)))
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = MODEL
    classify.model_spec.signature_name = "classify_x_to_y"
    examples(classify.input, 1.0)
    sent.append(("classify_log", classify, stub.Classify(classify, RPC_TIMEOUT)))
    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name = MODEL
    regress.model_spec.signature_name = "regress_x_to_y"
    examples(regress.input, 3.0)
    sent.append(("regress_log", regress, stub.Regress(regress, RPC_TIMEOUT)))
    multi = inference_pb2.MultiInferenceRequest()
    task = multi.tasks.add()
    task.model_spec.name = MODEL
    task.model_spec.signature_name = "regress_x_to_y"
    task.method_name = "tensorflow/serving/regress"
    examples(multi.input, 4.0)
    sent.append(("multi_inference_log", multi, stub.MultiInference(multi, RPC_TIMEOUT)))
    # A bad client beside the good one: refused requests are not logged.
    bad = predict_request(1.0)
    bad.inputs["nope"].CopyFrom(bad.inputs.pop("x"))
    with pytest.raises(grpc.RpcError) as refused:
        stub.Predict(bad, RPC_TIMEOUT)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    url = f"http://127.0.0.1:{server.rest_port}/v1/models/{MODEL}"
    assert post_json(url + ":predict", {"instances": [5.0], "signature_name": "nope"})[0] == 400
    status, body = post_json(url + "/versions/7:predict", {"instances": [5.0]})
    assert status == 404
    status, body = post_json(url + ":predict", {"instances": [5.0, 6.0]})
    assert (status, body) == (200, {"predictions": [4.5, 5.0]})

    server.stop()
    records = read_logs(folder)
    assert [record.WhichOneof("log_type") for record in records] == \
        [kind for kind, _, _ in sent] + ["predict_log"]
    for record, (kind, request, response) in zip(records, sent, strict=False):
        entry = getattr(record, kind)
        assert entry.request == request
        assert entry.response == response
    metadata = records[0].log_metadata
    assert metadata.model_spec.name == MODEL
    assert metadata.model_spec.version.value == 123
    assert metadata.model_spec.signature_name == "serving_default"
    assert metadata.sampling_config.sampling_rate == 1.0
    assert list(metadata.saved_model_tags) == ["serve"]
    assert metadata.timestamp_secs > 1.7e9
    assert records[1].log_metadata.model_spec.signature_name == "classify_x_to_y"
    assert records[3].log_metadata.model_spec.signature_name == "regress_x_to_y"
    rest = records[-1].predict_log  # logged as the gRPC request it is equivalent to
    assert rest.request.model_spec.name == MODEL
    assert tf.make_ndarray(rest.request.inputs["x"]).tolist() == [5.0, 6.0]
    assert tf.make_ndarray(rest.response.outputs["y"]).tolist() == [4.5, 5.0]
    assert rest.response.model_spec.version.value == 123


def test_metrics_count_records_and_bytes(logged_server, channel_to):
    server, folder = logged_server()
    stub = Stub(channel_to(server.grpc_target))
    for x in range(5):
        stub.Predict(predict_request(float(x)), RPC_TIMEOUT)

    def written() -> float:
        samples = metrics_page_samples(server.metrics.render()[0].decode())
        return samples.get(("pyserving_request_log_records_total",
                            frozenset({("model_name", MODEL)})), 0.0)
    wait_until(lambda: written() == 5, "5 records flushed (at least every second)", 10)
    samples = metrics_page_samples(server.metrics.render()[0].decode())
    size = samples[("pyserving_request_log_bytes_total", frozenset({("model_name", MODEL)}))]
    assert size == sum(path.stat().st_size for path in folder.glob("*.tfrecord"))


def test_sampling_rate_logs_a_uniform_share(logged_server, channel_to):
    server, folder = logged_server(rate=0.25)
    stub = Stub(channel_to(server.grpc_target))
    for x in range(400):
        stub.Predict(predict_request(float(x)), RPC_TIMEOUT)
    server.stop()
    records = read_logs(folder)
    assert 50 <= len(records) <= 150  # binomial(400, 0.25): mean 100, sd 8.7
    assert {record.log_metadata.sampling_config.sampling_rate for record in records} == {0.25}


@pytest.mark.parametrize("text, message", [
    ('type: "kafka" filename_prefix: "{folder}/m"', 'unsupported log_collector_config type '
                                                   '"kafka"'),
    ('filename_prefix: "{file}/sub/m"', "cannot write request logs under filename_prefix"),
    ('type: "tfrecord"', "needs log_collector_config.filename_prefix"),
], ids=["type", "unwritable", "no-prefix"])
def test_bad_logging_config_is_refused_at_start_up(testdata_model, serve, tmp_path, text,
                                                   message):
    base = testdata_model(TF1_MODEL, MODEL)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    collector = text.format(folder=tmp_path, file=blocker)
    config = tmp_path / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "{MODEL}" base_path: "{base}" '
                      f'model_platform: "tensorflow" logging_config {{ log_collector_config '
                      f'{{ {collector} }} }} }} }}')
    with pytest.raises(ServingError) as refused:
        serve(model_config_file=str(config))
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert message in refused.value.message
    assert MODEL in refused.value.message


def test_reload_config_changes_logging_without_reloading_the_model(logged_server, channel_to,
                                                                   tmp_path):
    server, folder = logged_server()
    channel = channel_to(server.grpc_target)
    stub = Stub(channel)
    models = model_service_pb2_grpc.ModelServiceStub(channel)
    stub.Predict(predict_request(1.0), RPC_TIMEOUT)
    base = server.configurator.config.model_config_list.config[0].base_path
    loads_before = _loads(server)

    refused = model_management_pb2.ReloadConfigRequest(
        config=parsed_config(config_text(base, tmp_path / "x", collector_type="syslog")))
    with pytest.raises(grpc.RpcError) as error:
        models.HandleReloadConfigRequest(refused, RPC_TIMEOUT)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert '"syslog"' in error.value.details()
    stub.Predict(predict_request(2.0), RPC_TIMEOUT)  # still logged where it was

    moved = tmp_path / "moved"
    reload = model_management_pb2.ReloadConfigRequest(
        config=parsed_config(config_text(base, moved / MODEL)))
    response = models.HandleReloadConfigRequest(reload, RPC_TIMEOUT)
    assert response.status.error_code == 0
    stub.Predict(predict_request(3.0), RPC_TIMEOUT)
    assert _loads(server) == loads_before  # the model was not reloaded
    server.stop()
    assert [r.predict_log.request.inputs["x"].float_val[0] for r in read_logs(folder)] == \
        [1.0, 2.0]
    assert [r.predict_log.request.inputs["x"].float_val[0] for r in read_logs(moved)] == [3.0]


def _loads(server: Any) -> float:
    samples = metrics_page_samples(server.metrics.render()[0].decode())
    return sum(value for (name, _), value in samples.items()
               if name == "pyserving_model_load_seconds_count")


def test_polled_config_file_turns_logging_off_and_refuses_a_bad_type(logged_server,
                                                                     channel_to, tmp_path,
                                                                     caplog):
    caplog.set_level(logging.ERROR, logger="pyserving.server.configurator")
    server, folder = logged_server(model_config_file_poll_wait_seconds=1)
    stub = Stub(channel_to(server.grpc_target))
    stub.Predict(predict_request(1.0), RPC_TIMEOUT)
    config = tmp_path / "models.config"
    base = server.configurator.config.model_config_list.config[0].base_path
    config.write_text(config_text(base, folder / MODEL, collector_type="bigquery"))
    wait_until(lambda: '"bigquery"' in caplog.text, "the poll refusing the config", 10)
    stub.Predict(predict_request(1.5), RPC_TIMEOUT)  # logged as before
    config.write_text(config_text(base, folder / MODEL, rate=0.0))
    wait_until(lambda: not server.request_log.models, "logging turned off by the poll", 10)
    stub.Predict(predict_request(2.0), RPC_TIMEOUT)
    server.stop()
    assert [r.predict_log.request.inputs["x"].float_val[0] for r in read_logs(folder)] == \
        [1.0, 1.5]


def test_deleted_folder_is_counted_and_serving_goes_on(logged_server, channel_to):
    server, folder = logged_server()
    stub = Stub(channel_to(server.grpc_target))
    stub.Predict(predict_request(1.0), RPC_TIMEOUT)
    wait_until(lambda: list(folder.glob("*.tfrecord")), "the first log file")
    shutil.rmtree(folder)

    def dropped() -> float:
        samples = metrics_page_samples(server.metrics.render()[0].decode())
        return sum(value for (name, labels), value in samples.items()
                   if name == "pyserving_request_log_dropped_total")
    for x in range(20):
        response = stub.Predict(predict_request(float(x)), RPC_TIMEOUT)
        assert response.outputs["y"].float_val == [x / 2 + 2]
    stub.Predict(predict_request(3.0), RPC_TIMEOUT)
    # Every record sent so far is lost: in the deleted file, or with no folder to open one in.
    wait_until(lambda: dropped() == 22, "the 22 lost records counted", 10)
    folder.mkdir()  # once the folder is back, logging resumes in a new file
    stub.Predict(predict_request(4.0), RPC_TIMEOUT)
    server.stop()
    assert [r.predict_log.request.inputs["x"].float_val[0] for r in read_logs(folder)] == [4.0]


def test_sigterm_loses_nothing(tmp_path, testdata_model, channel_to):
    """Requests in flight when SIGTERM comes: every one answered OK is in the files, exactly
    once, equal to what was sent and answered (TensorFlow's reader as the oracle)."""
    base = testdata_model(TF1_MODEL, MODEL)
    folder = tmp_path / "logs"
    config = tmp_path / "models.config"
    config.write_text(config_text(base, folder / MODEL))
    launch = Launcher(tmp_path)
    try:
        process = launch("--port=0", f"--model_config_file={config}",
                         "--request_log_max_file_bytes=4000")
        stub = Stub(channel_to(process.tcp_target()))
        futures = [(request, stub.Predict.future(request, RPC_TIMEOUT))
                   for request in (predict_request(float(x)) for x in range(400))]
        wait_until(lambda: sum(future.done() for _, future in futures) >= 100,
                   "a quarter of the requests answered", 30)
        process.popen.send_signal(signal.SIGTERM)
        answered = [(request, future.result()) for request, future in futures
                    if future.exception() is None]
        assert process.popen.wait(30) == 0
    finally:
        launch.close()
    assert len(answered) >= 100
    assert len(list(folder.glob("*.tfrecord"))) > 1  # rotated at 4000 bytes
    records = read_logs(folder)
    assert len(records) == len(answered)
    logged = sorted((r.predict_log.request.SerializeToString(deterministic=True),
                     r.predict_log.response.SerializeToString(deterministic=True))
                    for r in records)
    assert logged == sorted((q.SerializeToString(deterministic=True),
                             a.SerializeToString(deterministic=True)) for q, a in answered)
