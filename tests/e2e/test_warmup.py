"""Model warmup: assets.extra/tf_serving_warmup_requests is replayed before a version serves.

Expected behaviour and texts come from TF Serving's saved_model_warmup_util.cc and
saved_model_warmup.cc (and their tests). The replay is observed through a model built here
whose every signature adds to a counter variable: Predict +1, Classify +10, Regress +100, so
a MultiInference of classify and regress adds 110 however it is run.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

import grpc
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)

from pyserving.server import ModelServer, ServerOptions
from pyserving.server.errors import ServingError
from support import metrics_page_samples, wait_until

TIMEOUT = 10.0
VERSION = 1
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_RECORDS = 1000
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
END = get_model_status_pb2.ModelVersionStatus.END
DATA_LOSS_NUMBER = 15
# One replay of MIXED_LOG_TYPES: predict 1 + classify 10 + regress 100 + multi_inference 110.
MIXED_INCREMENT = 221

PredictionStub = prediction_service_pb2_grpc.PredictionServiceStub
ModelStub = model_service_pb2_grpc.ModelServiceStub
PredictionLog = prediction_log_pb2.PredictionLog


# --- the counter model -----------------------------------------------------------------------


def build_counter_model(export_dir: Path) -> None:
    """A TF1 SavedModel: y = 0.5x + 2 through predict/classify/regress signatures, each adding
    its own amount to a variable that the ``get_counter`` signature reads."""
    signatures = tf.compat.v1.saved_model.signature_def_utils
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        counter = tf.compat.v1.get_variable("counter", shape=[], dtype=tf.float32,
                                            initializer=tf.compat.v1.zeros_initializer(),
                                            use_resource=True)

        def counted(amount: float, tensor: tf.Tensor) -> tf.Tensor:
            with tf.control_dependencies([counter.assign_add(amount)]):
                return tf.identity(tensor)

        x = tf.compat.v1.placeholder(tf.float32, [None], name="x")
        examples = tf.compat.v1.placeholder(tf.string, [None], name="examples")
        features = tf.io.parse_example(examples, {"x": tf.io.FixedLenFeature([1], tf.float32)})
        example_y = features["x"] * 0.5 + 2.0
        signature_map = {
            "incr": signatures.predict_signature_def({"x": x}, {"y": counted(1.0, x * 0.5 + 2)}),
            "classify": signatures.classification_signature_def(
                examples, None, counted(10.0, example_y)),
            "regress": signatures.regression_signature_def(examples, counted(100.0, example_y)),
            "get_counter": signatures.build_signature_def(
                {}, {"counter": tf.compat.v1.saved_model.utils.build_tensor_info(
                    counter.read_value())},
                tf.compat.v1.saved_model.signature_constants.PREDICT_METHOD_NAME),
        }
        session.run(tf.compat.v1.global_variables_initializer())
        builder = tf.compat.v1.saved_model.Builder(str(export_dir))
        builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map=signature_map)
        builder.save()


@pytest.fixture(scope="module")
def counter_model_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("counter_source") / "counter"
    build_counter_model(base / str(VERSION))
    return base


@pytest.fixture
def counter_model(counter_model_source: Path, tmp_path: Path) -> Path:
    """A fresh copy of the counter model's base path (version 1)."""
    base = tmp_path / "counter"
    shutil.copytree(counter_model_source, base)
    return base


# --- warmup records --------------------------------------------------------------------------


def _example_input(request: object) -> None:
    example = request.input.example_list.examples.add()
    example.features.feature["x"].float_list.value.append(2.0)


def predict_log(signature: str = "incr") -> PredictionLog:
    log = PredictionLog()
    request = log.predict_log.request
    request.model_spec.name = "counter"
    request.model_spec.signature_name = signature
    request.inputs["x"].CopyFrom(tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT, float_val=[2.0], tensor_shape={"dim": [{"size": 1}]}))
    return log


def classify_log() -> PredictionLog:
    log = PredictionLog()
    log.classify_log.request.model_spec.name = "counter"
    log.classify_log.request.model_spec.signature_name = "classify"
    _example_input(log.classify_log.request)
    return log


def regress_log() -> PredictionLog:
    log = PredictionLog()
    log.regress_log.request.model_spec.name = "counter"
    log.regress_log.request.model_spec.signature_name = "regress"
    _example_input(log.regress_log.request)
    return log


def multi_inference_log() -> PredictionLog:
    log = PredictionLog()
    request = log.multi_inference_log.request
    for signature, method in (("classify", "tensorflow/serving/classify"),
                              ("regress", "tensorflow/serving/regress")):
        task = request.tasks.add(method_name=method)
        task.model_spec.name = "counter"
        task.model_spec.signature_name = signature
    _example_input(request)
    return log


MIXED_LOG_TYPES = (predict_log, classify_log, regress_log, multi_inference_log)


def warmup_path(base: Path, version: int = VERSION) -> Path:
    return base / str(version) / WARMUP_FILE


def write_records(base: Path, records: Iterable[bytes], version: int = VERSION) -> Path:
    """Write a TFRecord warmup file into a version's assets.extra."""
    path = warmup_path(base, version)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)
    return path


def write_logs(base: Path, logs: Iterable[PredictionLog], version: int = VERSION) -> Path:
    return write_records(base, (log.SerializeToString() for log in logs), version)


def mixed_logs() -> list[PredictionLog]:
    return [make() for make in MIXED_LOG_TYPES]


# --- serving ---------------------------------------------------------------------------------


def start(serve: Callable[..., ModelServer], base: Path, **options: object) -> ModelServer:
    options.setdefault("max_num_load_retries", 0)
    return serve(model_name="counter", model_base_path=str(base), **options)


# How start-up reports a version that failed to load (ServerCore's initial load).
FAILED_AT_START_UP = re.compile(r"1 servable\(s\) did not become available: "
                                r"\{\{\{name: counter version: \d+\} due to error: "
                                r"([A-Z_]+): (.*)\}, \}", re.DOTALL)


def start_failure(serve: Callable[..., ModelServer], base: Path, **options: object
                  ) -> tuple[grpc.StatusCode, str]:
    """The code and message of the load error that failed start-up."""
    with pytest.raises(ServingError) as raised:
        start(serve, base, **options)
    assert raised.value.code == grpc.StatusCode.UNKNOWN
    wrapped = FAILED_AT_START_UP.fullmatch(raised.value.message)
    assert wrapped, raised.value.message
    return grpc.StatusCode[wrapped.group(1)], wrapped.group(2)


def counter_value(stub: PredictionStub, version: int | None = None) -> float:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "counter"
    request.model_spec.signature_name = "get_counter"
    if version is not None:
        request.model_spec.version.value = version
    return stub.Predict(request, TIMEOUT).outputs["counter"].float_val[0]


def statuses(stub: ModelStub) -> list[tuple[int, int]]:
    request = get_model_status_pb2.GetModelStatusRequest(
        model_spec=model_pb2.ModelSpec(name="counter"))
    return [(status.version, status.state)
            for status in stub.GetModelStatus(request, TIMEOUT).model_version_status]


def stubs(server: ModelServer, channel_to: Callable[[str], grpc.Channel]
          ) -> tuple[PredictionStub, ModelStub]:
    channel = channel_to(server.grpc_target)
    return PredictionStub(channel), ModelStub(channel)


# --- a warmup file that is present -----------------------------------------------------------


def test_counter_model_counts_each_request_kind(counter_model: Path, serve, channel_to):
    """The observation the other tests rely on: what one request of each kind adds."""
    predictions, _ = stubs(start(serve, counter_model), channel_to)
    assert counter_value(predictions) == 0.0
    request = predict_log().predict_log.request
    predictions.Predict(request, TIMEOUT)
    assert counter_value(predictions) == 1.0
    predictions.Classify(classify_log().classify_log.request, TIMEOUT)
    predictions.Regress(regress_log().regress_log.request, TIMEOUT)
    predictions.MultiInference(multi_inference_log().multi_inference_log.request, TIMEOUT)
    assert counter_value(predictions) == MIXED_INCREMENT


def test_every_record_kind_is_replayed_before_the_version_serves(counter_model: Path, serve,
                                                                 channel_to):
    write_logs(counter_model, mixed_logs())
    predictions, models = stubs(start(serve, counter_model), channel_to)
    assert statuses(models) == [(VERSION, AVAILABLE)]
    # start() returns once the version is AVAILABLE, so the replay came first.
    assert counter_value(predictions) == MIXED_INCREMENT


def test_each_record_is_replayed_num_request_iterations_for_warmup_times(
        counter_model: Path, serve, channel_to):
    write_logs(counter_model, mixed_logs() * 2)
    predictions, _ = stubs(start(serve, counter_model, num_request_iterations_for_warmup=3),
                           channel_to)
    assert counter_value(predictions) == 3 * 2 * MIXED_INCREMENT


def test_a_thousand_records_are_allowed(counter_model: Path, serve, channel_to):
    write_logs(counter_model, [predict_log()] * MAX_RECORDS)
    predictions, _ = stubs(start(serve, counter_model), channel_to)
    assert counter_value(predictions) == MAX_RECORDS


def test_a_record_without_a_request_is_skipped(counter_model: Path, serve, channel_to):
    # TF Serving's RunWarmupRequest returns OK for a PredictionLog with no log_type set.
    metadata_only = PredictionLog()
    metadata_only.log_metadata.model_spec.name = "counter"
    write_logs(counter_model, [metadata_only, predict_log()])
    predictions, _ = stubs(start(serve, counter_model), channel_to)
    assert counter_value(predictions) == 1.0


def test_enable_model_warmup_false_skips_the_file(counter_model: Path, serve, channel_to):
    write_logs(counter_model, mixed_logs())
    predictions, _ = stubs(start(serve, counter_model, enable_model_warmup=False), channel_to)
    assert counter_value(predictions) == 0.0


# --- no warmup file --------------------------------------------------------------------------


def test_without_a_warmup_file_the_version_loads(counter_model: Path, serve, channel_to):
    assert not warmup_path(counter_model).parent.exists()
    predictions, models = stubs(start(serve, counter_model), channel_to)
    assert statuses(models) == [(VERSION, AVAILABLE)]
    assert counter_value(predictions) == 0.0


def test_an_empty_warmup_file_replays_nothing(counter_model: Path, serve, channel_to):
    write_records(counter_model, [])
    predictions, _ = stubs(start(serve, counter_model), channel_to)
    assert counter_value(predictions) == 0.0


# --- warmup files that fail the load ---------------------------------------------------------


# TF Serving's composition: TensorFlow's record reader message, then its own hint.
NOT_TFRECORD = ("corrupted record at 0 (Is this even a TFRecord file?). "
                "Please verify your warmup data is in TFRecord format.")


def write_bytes(base: Path, data: bytes, version: int = VERSION) -> Path:
    path = warmup_path(base, version)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("content", [
    random.Random(0).randbytes(256),
    # TF Serving's UnsupportedFileFormat test: serialized PredictionLogs without TFRecord framing.
    predict_log().SerializeToString() * 10,
], ids=["random_bytes", "unframed_protos"])
def test_a_file_that_is_not_tfrecord_fails_the_load_with_data_loss(
        counter_model: Path, serve, content: bytes):
    write_bytes(counter_model, content)
    assert start_failure(serve, counter_model) == (grpc.StatusCode.DATA_LOSS, NOT_TFRECORD)


def test_a_truncated_tfrecord_file_fails_the_load_with_data_loss(counter_model: Path, serve):
    path = write_logs(counter_model, [predict_log()] * 2)
    path.write_bytes(path.read_bytes()[:-3])
    code, message = start_failure(serve, counter_model)
    assert code == grpc.StatusCode.DATA_LOSS
    assert message.startswith("truncated record at ")
    assert message.endswith(". Please verify your warmup data is in TFRecord format.")


def test_a_record_that_is_not_a_prediction_log_fails_the_load(counter_model: Path, serve):
    # TF Serving's UnparsableRecord test writes this record.
    path = write_records(counter_model, [b"malformed_record"])
    assert start_failure(serve, counter_model) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        f"Failed to parse warmup record: malformed_record from {path}")


def test_more_than_a_thousand_records_fail_the_load(counter_model: Path, serve):
    path = write_logs(counter_model, [predict_log()] * (MAX_RECORDS + 1))
    assert start_failure(serve, counter_model) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        f"Number of warmup records exceeds the maximum ({MAX_RECORDS}) at {path}")


def test_a_session_run_log_is_unimplemented(counter_model: Path, serve):
    session_run = PredictionLog()
    session_run.session_run_log.SetInParent()
    write_logs(counter_model, [predict_log(), session_run])
    field_number = PredictionLog.DESCRIPTOR.fields_by_name["session_run_log"].number
    assert start_failure(serve, counter_model) == (
        grpc.StatusCode.UNIMPLEMENTED, f"Unsupported log_type for warmup: {field_number}")


def test_a_failing_warmup_request_fails_the_load_with_its_error(counter_model: Path, serve):
    write_logs(counter_model, [predict_log(signature="no_such_signature")])
    assert start_failure(serve, counter_model) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        'Serving signature key "no_such_signature" not found.')


def test_enable_model_warmup_false_skips_a_corrupt_file(counter_model: Path, serve,
                                                        channel_to):
    write_bytes(counter_model, random.Random(0).randbytes(256))
    predictions, models = stubs(start(serve, counter_model, enable_model_warmup=False),
                                channel_to)
    assert statuses(models) == [(VERSION, AVAILABLE)]
    assert counter_value(predictions) == 0.0


def test_a_corrupt_new_version_ends_with_data_loss_and_the_old_one_keeps_serving(
        counter_model: Path, serve, channel_to, tmp_path: Path):
    """Seen over GetModelStatus: version 2 arrives (file-system polling) with a corrupt file."""
    predictions, models = stubs(start(serve, counter_model, file_system_poll_wait_seconds=1),
                                channel_to)
    staging = tmp_path / "staging"
    shutil.copytree(counter_model / str(VERSION), staging)
    (staging / "assets.extra").mkdir()
    (staging / WARMUP_FILE).write_bytes(random.Random(0).randbytes(256))
    staging.rename(counter_model / "2")  # appears whole to the poller

    request = get_model_status_pb2.GetModelStatusRequest(
        model_spec=model_pb2.ModelSpec(name="counter"))
    def newest() -> get_model_status_pb2.ModelVersionStatus:
        return models.GetModelStatus(request, TIMEOUT).model_version_status[0]

    wait_until(lambda: (newest().version, newest().state) == (2, END), "version 2 to end", 30,
               interval=0.1)
    new = newest()
    assert new.status.error_code == DATA_LOSS_NUMBER
    assert new.status.error_message == NOT_TFRECORD
    assert statuses(models)[1] == (VERSION, AVAILABLE)
    assert counter_value(predictions) == 0.0
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(
        name="counter", signature_name="get_counter"))
    assert predictions.Predict(request, TIMEOUT).model_spec.version.value == VERSION


# --- TF Serving's model_warmup_* metrics -----------------------------------------------------


def warmup_metrics(server: ModelServer) -> dict[tuple[str, str], float]:
    """(metric, status) -> value of the records-read counter and the latency sample count."""
    body, _ = server.metrics.render()
    found = {}
    for (name, label_pairs), value in metrics_page_samples(body.decode()).items():
        labels = dict(label_pairs)
        if name in (":tensorflow:serving:model_warmup_records_read",
                    ":tensorflow:serving:model_warmup_latency_count"):
            assert labels["model_path"] == str(counter_path(server))
            found[(name.rsplit(":", 1)[1], labels["status"])] = value
    return found


def counter_path(server: ModelServer) -> Path:
    return Path(server.options.model_base_path) / str(VERSION)


def failed_server(base: Path) -> ModelServer:
    """A server whose start-up failed on the warmup file (kept for its metrics)."""
    server = ModelServer(ServerOptions(port=0, model_name="counter", model_base_path=str(base),
                                       max_num_load_retries=0), host="127.0.0.1")
    with pytest.raises(ServingError):
        server.start()
    return server


def test_warmup_metrics_after_a_replay(counter_model: Path, serve):
    write_logs(counter_model, mixed_logs() * 2)
    server = start(serve, counter_model, num_request_iterations_for_warmup=3)
    # Records read, not requests replayed; one latency sample per warmup, status "OK".
    assert warmup_metrics(server) == {("model_warmup_records_read", "OK"): 8,
                                      ("model_warmup_latency_count", "OK"): 1}


def test_warmup_metrics_after_a_read_error(counter_model: Path):
    """A read error is recorded with absl's Status text and the records read before it."""
    path = write_logs(counter_model, [predict_log()] * 2)
    path.write_bytes(path.read_bytes()[:-3])
    metrics = warmup_metrics(failed_server(counter_model))
    assert len(metrics) == 2
    (_, status), = [key for key in metrics if key[0] == "model_warmup_records_read"]
    assert status.startswith("DATA_LOSS: truncated record at ")
    assert not status.endswith("TFRecord format.")
    assert metrics == {("model_warmup_records_read", status): 1,
                       ("model_warmup_latency_count", status): 1}


def test_no_warmup_metrics_after_a_failing_record(counter_model: Path):
    """saved_model_warmup_util.cc returns before its metrics when a record fails."""
    write_records(counter_model, [b"malformed_record"])
    assert warmup_metrics(failed_server(counter_model)) == {}
