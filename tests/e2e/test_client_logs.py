"""``pyserving-client logs`` (show, to-warmup, replay) on a request log a real server wrote, and
the TF-free TFRecord framing they read, with TensorFlow's own reader and writer as oracles."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)

from pyserving.client import tfrecord
from pyserving.client.cli import main
from pyserving.server import ModelServer, ServerOptions
from support import TESTDATA, free_port, metrics_page_samples, post_json, wait_until

MODEL = "m"
REQUESTS = 6  # 4 gRPC Predict, 1 Classify, 1 REST Predict


def predict_request(x: float) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].float_val.append(x)
    request.inputs["x"].tensor_shape.dim.add().size = 1
    return request


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ModelServer, Path]]:
    """A server of two identical versions (123, 124) logging every request, after REQUESTS
    answered requests; returns it and a folder with a copy of its log files then."""
    root = tmp_path_factory.mktemp("logs")
    base = root / MODEL
    shutil.copytree(TESTDATA / "saved_model_half_plus_two_2_versions", base)
    config = root / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "{MODEL}" base_path: "{base}" '
                      f'model_platform: "tensorflow" model_version_policy {{ all {{}} }} '
                      f'logging_config {{ log_collector_config {{ '
                      f'filename_prefix: "{root}/logs/{MODEL}" }} sampling_config {{ '
                      f"sampling_rate: 1.0 }} }} }} }}")
    server = ModelServer(ServerOptions(port=0, model_config_file=str(config),
                                       rest_api_port=free_port()), host="127.0.0.1").start()
    try:
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            for x in range(4):
                stub.Predict(predict_request(float(x)), 30)
            classify = classification_pb2.ClassificationRequest()
            classify.model_spec.name = MODEL
            classify.model_spec.signature_name = "classify_x_to_y"
            classify.input.example_list.examples.add().features.feature[
                "x"].float_list.value.append(1.0)
            stub.Classify(classify, 30)
        status, _ = post_json(f"http://127.0.0.1:{server.rest_port}/v1/models/{MODEL}:predict",
                              {"instances": [7.0, 8.0]})
        assert status == 200
        wait_until(lambda: metrics_page_samples(server.metrics.render()[0].decode()).get(
            ("pyserving_request_log_records_total", frozenset({("model_name", MODEL)}))) ==
            REQUESTS, "the records flushed", 10)
        # A copy: the server goes on logging the requests the tests replay to it.
        yield server, Path(shutil.copytree(root / "logs", root / "captured"))
    finally:
        server.stop(grace=None)


def log_files(folder: Path) -> list[str]:
    return sorted(str(path) for path in folder.glob("*.tfrecord"))


def run(capsys: Any, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_tfrecord_framing_matches_tensorflow(tmp_path):
    ours = tmp_path / "ours.tfrecord"
    tfrecord.write_records(ours, [b"", b"a", b"x" * 70000])
    assert list(tf.data.TFRecordDataset(str(ours)).as_numpy_iterator()) == \
        [b"", b"a", b"x" * 70000]
    theirs = tmp_path / "theirs.tfrecord"
    with tf.io.TFRecordWriter(str(theirs)) as writer:
        for record in (b"one", b"two" * 1000):
            writer.write(record)
    assert list(tfrecord.read_records(theirs)) == [b"one", b"two" * 1000]


@pytest.mark.parametrize("damage, message", [
    (lambda data: data[:-2], "truncated record"),
    (lambda data: data[:5], "truncated record header"),
    (lambda data: data[:12] + b"?" + data[13:], "corrupted record data"),
    (lambda data: b"\1" + data[1:], "corrupted record at offset 0"),
])
def test_damaged_tfrecord_files_are_refused(tmp_path, damage, message):
    path = tmp_path / "f.tfrecord"
    path.write_bytes(damage(tfrecord.frame(b"hello")))
    with pytest.raises(tfrecord.TFRecordError, match=message):
        list(tfrecord.read_records(path))


def test_show_prints_one_json_object_per_record(served, capsys):
    _, folder = served
    code, out, _ = run(capsys, "logs", "show", *log_files(folder))
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == REQUESTS
    assert [next(k for k in r if k.endswith("_log")) for r in records] == \
        ["predict_log"] * 4 + ["classify_log", "predict_log"]
    assert records[0]["log_metadata"]["model_spec"] == {
        "name": MODEL, "version": "124", "signature_name": "serving_default"}
    assert records[0]["predict_log"]["response"]["outputs"]["y"]["float_val"] == [2.0]
    code, out, _ = run(capsys, "logs", "show", "--signature", "classify_x_to_y",
                       *log_files(folder))
    assert len(out.splitlines()) == 1


def test_to_warmup_writes_a_file_a_server_warms_up_with(served, capsys, tmp_path, serve):
    _, folder = served
    base = tmp_path / "warm"
    shutil.copytree(TESTDATA / "saved_model_half_plus_two_2_versions" / "00000123", base / "5")
    warmup = base / "5" / "assets.extra" / "tf_serving_warmup_requests"
    warmup.parent.mkdir()
    code, _, err = run(capsys, "logs", "to-warmup", *log_files(folder), "--output",
                       str(warmup), "--max_records", "5", "--model", MODEL)
    assert code == 0 and "wrote 5 warmup records" in err
    records = [prediction_log_pb2.PredictionLog.FromString(record)
               for record in tf.data.TFRecordDataset(str(warmup)).as_numpy_iterator()]
    assert len(records) == 5
    assert not any(r.predict_log.HasField("response") for r in records[:4])
    assert not any(r.predict_log.request.model_spec.HasField("version") for r in records[:4])
    server = serve(model_base_path=str(base))
    samples = metrics_page_samples(server.metrics.render()[0].decode())
    assert samples[(":tensorflow:serving:model_warmup_records_read",
                    frozenset({("model_path", str(base / "5")), ("status", "OK")}))] == 5


def test_to_warmup_refuses_more_than_tf_serving_reads_and_empty_selections(served, capsys,
                                                                          tmp_path):
    _, folder = served
    output = tmp_path / "w"
    code, _, err = run(capsys, "logs", "to-warmup", *log_files(folder), "--output",
                       str(output), "--max_records", "1001")
    assert code == 2 and "1..1000" in err
    code, _, err = run(capsys, "logs", "to-warmup", *log_files(folder), "--output",
                       str(output), "--model", "other")
    assert code == 1 and "no records" in err


def test_replay_against_another_version_passes(served, capsys):
    server, folder = served
    code, out, _ = run(capsys, "logs", "replay", *log_files(folder), "--target",
                       server.grpc_target, "--version", "123", "--concurrency", "3", "--json")
    report = json.loads(out)
    assert code == 0, report
    assert report["requests"] == report["compared"] == REQUESTS
    assert report["mismatched"] == report["failed"] == 0
    assert set(report["outputs"]) == {"y", "scores", "classes"}
    assert report["latency_ms"]["p50"] > 0
    code, out, _ = run(capsys, "logs", "replay", *log_files(folder), "--target",
                       server.grpc_target, "--rate", "200")
    assert code == 0 and out.rstrip().endswith("PASS")


def test_replay_fails_on_a_changed_answer_and_on_errors(served, capsys, tmp_path):
    server, folder = served
    records = [prediction_log_pb2.PredictionLog.FromString(r)
               for path in log_files(folder) for r in tfrecord.read_records(path)]
    records[1].predict_log.response.outputs["y"].float_val[0] += 0.5
    changed = tmp_path / "changed.tfrecord"
    tfrecord.write_records(changed, [r.SerializeToString() for r in records])
    code, out, _ = run(capsys, "logs", "replay", str(changed), "--target", server.grpc_target,
                       "--json")
    report = json.loads(out)
    assert code == 1
    assert report["mismatched"] == 1 and report["outputs"]["y"]["max_abs_diff"] == 0.5
    code, out, _ = run(capsys, "logs", "replay", str(changed), "--target", server.grpc_target,
                       "--max_abs_diff", "0.5", "--json")
    assert code == 0
    code, out, _ = run(capsys, "logs", "replay", *log_files(folder), "--target",
                       server.grpc_target, "--version", "999", "--json")
    report = json.loads(out)
    assert code == 1 and report["failed"] == REQUESTS
    assert "NOT_FOUND" in report["errors"][0]


def test_a_file_that_is_not_a_log_is_a_usage_error(capsys, tmp_path):
    garbage = tmp_path / "g"
    garbage.write_bytes(b"not a tfrecord file at all")
    code, _, err = run(capsys, "logs", "show", str(garbage))
    assert code == 2 and "not a TFRecord file of PredictionLogs" in err


def test_replay_to_an_unknown_label_fails_and_bad_pacing_is_a_usage_error(served, capsys):
    server, folder = served
    code, out, _ = run(capsys, "logs", "replay", *log_files(folder), "--target",
                       server.grpc_target, "--label", "nope", "--json")
    report = json.loads(out)
    assert code == 1 and report["failed"] == REQUESTS and not report["passed"]
    code, _, err = run(capsys, "logs", "replay", *log_files(folder), "--target",
                       server.grpc_target, "--rate", "0")
    assert code == 2 and "must be positive" in err
