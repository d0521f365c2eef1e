"""``pyserving-client`` run as a program against a real server: predict, classify, regress,
metadata, status, reload, batch-predict and compare."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import json_format

from client_fakes import EchoPredictionService, start_fake_server
from pyserving.client.apis import get_model_metadata_pb2, predict_pb2, prediction_log_pb2
from pyserving.client.requests import tensor_proto
from support import TESTDATA, copy_testdata, wait_until

TWO = "half_plus_two"  # TF Serving's saved_model_half_plus_two_cpu, version 123
VERSIONS = "two_versions"  # saved_model_half_plus_two_2_versions: identical 123 and 124
ROLLOUT = "rollout"  # 1: half_plus_two, 2: half_plus_two_and_a_bit; stable=1, canary=2
A_BIT = 0.01


def export_rollout_version(path: Path, bit: float) -> None:
    """y = 0.5 x + 2 + bit, and scores [y, 3] whose argmax flips where y crosses 3."""
    import tensorflow as tf

    class HalfPlusTwoAndABit(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.b = tf.Variable(2.0 + bit)

        @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
        def predict(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            y = 0.5 * x + self.b
            return {"y": y, "scores": tf.concat([y, tf.ones_like(y) * 3.0], axis=1)}

    module = HalfPlusTwoAndABit()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.predict})


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from pyserving.server import ModelServer, ServerOptions

    root = tmp_path_factory.mktemp("cli_models")
    export_rollout_version(root / ROLLOUT / "1", 0.0)
    export_rollout_version(root / ROLLOUT / "2", A_BIT)
    config = root / "models.config"
    config.write_text(f"""model_config_list {{
  config {{ name: "{TWO}" base_path: "{copy_testdata('saved_model_half_plus_two_cpu', root / TWO)}"
           model_platform: "tensorflow" }}
  config {{ name: "{VERSIONS}" model_platform: "tensorflow"
           base_path: "{copy_testdata('saved_model_half_plus_two_2_versions', root / VERSIONS)}"
           model_version_policy {{ all {{}} }} }}
  config {{ name: "{ROLLOUT}" base_path: "{root / ROLLOUT}" model_platform: "tensorflow"
           model_version_policy {{ all {{}} }}
           version_labels {{ key: "stable" value: 1 }}
           version_labels {{ key: "canary" value: 2 }} }}
}}""")
    server = ModelServer(ServerOptions(port=0, model_config_file=str(config),
                                       allow_version_labels_for_unavailable_models=True),
                         host="127.0.0.1").start()
    yield server.grpc_target
    server.stop(grace=None)


def run(*args: object) -> subprocess.CompletedProcess:
    """``python -m pyserving.client.cli ARGS``."""
    command = [sys.executable, "-m", "pyserving.client.cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def cli(target: str, command: str, *args: object) -> subprocess.CompletedProcess:
    """Run a sub-command against ``target``."""
    return run(command, "--target", target, *args)


def ok_json(result: subprocess.CompletedProcess) -> object:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# --- predict ---------------------------------------------------------------------------------


def test_predict_inline_prints_json(target: str):
    assert ok_json(cli(target, "predict", "--model", TWO, "--input", "x=[[1.0], [2.0]]")) == \
        {"y": [[2.5], [3.0]]}


def test_predict_from_json_files(target: str, tmp_path: Path):
    plain, rest = tmp_path / "plain.json", tmp_path / "rest.json"
    plain.write_text('{"x": [1.0, 6.0]}')
    rest.write_text('{"instances": [{"x": [1.0]}, {"x": [6.0]}]}')
    assert ok_json(cli(target, "predict", "--model", TWO, "--inputs", plain)) == \
        {"y": [2.5, 5.0]}
    assert ok_json(cli(target, "predict", "--model", TWO, "--inputs", rest)) == \
        {"y": [[2.5], [5.0]]}
    value = tmp_path / "x.json"
    value.write_text("[[1.0], [6.0]]")
    assert ok_json(cli(target, "predict", "--model", TWO, "--input", f"x=@{value}")) == \
        {"y": [[2.5], [5.0]]}
    result = cli(target, "predict", "--model", TWO, "--input", f"x=@{plain}")
    assert result.returncode == 2 and "string tensors hold bytes or str" in result.stderr


def test_predict_from_npy_and_npz_to_npz(target: str, tmp_path: Path):
    np.save(tmp_path / "x.npy", np.array([[4.0]], np.float32))
    np.savez(tmp_path / "in.npz", x=np.array([1.0, 2.0], np.float32))
    assert ok_json(cli(target, "predict", "--model", TWO, "--input",
                       f"x=@{tmp_path / 'x.npy'}")) == {"y": [[4.0]]}
    out = tmp_path / "out.npz"
    result = cli(target, "predict", "--model", TWO, "--inputs", tmp_path / "in.npz",
                 "--out", out)
    assert result.returncode == 0, result.stderr
    with np.load(out) as outputs:
        np.testing.assert_array_equal(outputs["y"], np.array([2.5, 3.0], np.float32))
    result = cli(target, "predict", "--model", TWO, "--input", "x=[3.0]", "--out",
                 tmp_path / "out.json")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "out.json").read_text()) == {"y": [3.5]}


def test_predict_version_label_signature_and_dtype(target: str):
    assert ok_json(cli(target, "predict", "--model", VERSIONS, "--version", "124", "--input",
                       "x=[2.0]")) == {"y": [3.0]}
    assert ok_json(cli(target, "predict", "--model", ROLLOUT, "--label", "canary",
                       "--output-filter", "y", "--input", "x=[[2.0]]")) == {"y": [[3.01]]}
    result = cli(target, "predict", "--model", TWO, "--input", "x=[2]", "--dtype",
                 "x=float64")
    assert result.returncode == 1
    assert "Expects arg[0] to be float but double is provided" in result.stderr


def test_predict_errors_exit_1_with_tf_servings_message(target: str):
    result = cli(target, "predict", "--model", "nope", "--input", "x=[1.0]")
    assert result.returncode == 1
    assert result.stderr.strip() == \
        "pyserving-client: NOT_FOUND: Servable not found for request: Latest(nope)"


@pytest.mark.parametrize("args", [
    ("predict", "--model", TWO),  # no inputs
    ("predict", "--model", TWO, "--input", "x=[1.0"),  # bad JSON
    ("predict", "--model", TWO, "--input", "x"),  # no value
    ("predict", "--input", "x=[1.0]"),  # no --model
    ("predict", "--model", TWO, "--version", "1", "--label", "a", "--input", "x=1"),
    ("compare", "--model", TWO, "--a", "vers=1", "--b", "version=1", "--inputs", "f.jsonl"),
])
def test_usage_errors_exit_2(target: str, args: tuple[str, ...]):
    result = cli(target, *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr


def test_the_console_script_is_installed():
    script = Path(sys.executable).with_name("pyserving-client")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0
    for command in ("predict", "classify", "regress", "metadata", "status", "reload",
                    "batch-predict", "compare"):
        assert command in result.stdout


# --- classify, regress, metadata, status, reload ---------------------------------------------


def test_classify_and_regress(target: str, tmp_path: Path):
    assert ok_json(cli(target, "classify", "--model", TWO, "--signature", "classify_x_to_y",
                       "--example", '{"x": 2.0}', "--example", '{"x": 4.0}')) == \
        {"results": [[["", 3.0]], [["", 4.0]]]}
    examples = tmp_path / "examples.jsonl"
    examples.write_text('{"x": 2.0}\n\n{}\n')
    assert ok_json(cli(target, "regress", "--model", TWO, "--signature", "regress_x_to_y",
                       "--examples", examples, "--context", '{"x": 6.0}')) == \
        {"results": [3.0, 5.0]}


def test_metadata_prints_tf_serving_rest_metadata(target: str):
    printed = ok_json(cli(target, "metadata", "--model", TWO))
    expected = json.loads((TESTDATA / "half_plus_two_model_metadata.json").read_text())
    assert printed["model_spec"] == {**expected["model_spec"], "name": TWO}
    signature_map = get_model_metadata_pb2.SignatureDefMap
    assert json_format.ParseDict(printed["metadata"]["signature_def"], signature_map()) == \
        json_format.ParseDict(expected["metadata"]["signature_def"], signature_map())


def test_status_prints_each_version(target: str):
    assert ok_json(cli(target, "status", "--model", VERSIONS)) == {"model_version_status": [
        {"version": version, "state": "AVAILABLE",
         "status": {"error_code": "OK", "error_message": ""}} for version in ("124", "123")]}
    assert cli(target, "status", "--model", "nope").returncode == 1


def test_reload_replaces_the_served_models(serve, testdata_model, tmp_path: Path):
    base = testdata_model("saved_model_half_plus_two_cpu")
    three = testdata_model("saved_model_half_plus_three")
    server_target = serve(model_name=TWO, model_base_path=base).grpc_target
    config = tmp_path / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "three" base_path: "{three}" '
                      'model_platform: "tensorflow" } }')
    result = cli(server_target, "reload", "--config", config)
    assert result.returncode == 0, result.stderr
    assert ok_json(cli(server_target, "predict", "--model", "three", "--input", "x=[2.0]")) == \
        {"y": [4.0]}
    config.write_text("model_config_list { nonsense }")
    assert cli(server_target, "reload", "--config", config).returncode == 2


# --- batch-predict ---------------------------------------------------------------------------


ROWS = 5000


@pytest.fixture
def big_inputs(tmp_path: Path) -> Path:
    path = tmp_path / "big.npz"
    np.savez(path, x=np.arange(ROWS, dtype=np.float32).reshape(-1, 1) / 100)
    return path


def expected_predictions() -> np.ndarray:
    return np.arange(ROWS, dtype=np.float32).reshape(-1, 1) / 100 * 0.5 + 2


def batch_predict(target: str, inputs: Path, out: Path, *more: object
                  ) -> subprocess.CompletedProcess:
    return cli(target, "batch-predict", "--model", TWO, "--inputs", inputs, "--out", out,
               "--batch-size", 64, "--in-flight", 8, *more)


def test_batch_predict_writes_outputs_in_input_order(target: str, big_inputs: Path,
                                                     tmp_path: Path):
    out = tmp_path / "preds.npz"
    summary = ok_json(batch_predict(target, big_inputs, out, "--json"))
    assert summary["rows"] == summary["sent_rows"] == ROWS
    assert summary["batches"] == summary["sent_batches"] == 79
    assert summary["complete"] and summary["rows_per_second"] > 0
    with np.load(out) as outputs:
        assert outputs.files == ["y"]
        np.testing.assert_array_equal(outputs["y"], expected_predictions())
    assert not (tmp_path / "preds.npz.partial").exists()


def test_batch_predict_prints_a_summary_and_a_progress_bar(target: str, big_inputs: Path,
                                                           tmp_path: Path):
    result = batch_predict(target, big_inputs, tmp_path / "preds.npz", "--progress")
    assert result.returncode == 0, result.stderr
    assert f"{ROWS} rows in 79 batches" in result.stdout
    assert "rows/s" in result.stdout and "wrote 5000 rows to" in result.stdout
    assert f"{ROWS}/{ROWS} rows 100%" in result.stderr and "ETA" in result.stderr


def test_batch_predict_resumes_an_interrupted_run(target: str, big_inputs: Path,
                                                  tmp_path: Path):
    out = tmp_path / "preds.npz"
    first = ok_json(batch_predict(target, big_inputs, out, "--max-batches", 30, "--json"))
    assert (first["sent_batches"], first["complete"]) == (30, False)
    assert not out.exists()
    refused = batch_predict(target, big_inputs, out)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    other_run = batch_predict(target, big_inputs, out, "--resume", "--batch-size", 100)
    assert other_run.returncode == 2 and "batch_size" in other_run.stderr
    second = ok_json(batch_predict(target, big_inputs, out, "--resume", "--json"))
    assert (second["resumed_batches"], second["sent_batches"]) == (30, 49)
    assert second["sent_rows"] == ROWS - 30 * 64 and second["complete"]
    with np.load(out) as outputs:
        np.testing.assert_array_equal(outputs["y"], expected_predictions())


def test_batch_predict_keeps_what_it_did_when_the_server_fails(target: str, tmp_path: Path):
    inputs = tmp_path / "in.npy"
    np.save(inputs, np.ones((100, 1), np.float32))
    result = cli(target, "batch-predict", "--model", "nope", "--inputs", inputs,
                 "--input-name", "x", "--out", tmp_path / "p.npz", "--batch-size", 10)
    assert result.returncode == 1
    assert "NOT_FOUND: Servable not found for request: Latest(nope)" in result.stdout
    assert "--resume" in result.stdout


@pytest.fixture
def slow_echo() -> Iterator[str]:
    """An echo PredictionService taking 20 ms a call."""
    server, port = start_fake_server(EchoPredictionService(delay=0.02))
    yield f"127.0.0.1:{port}"
    server.stop(None)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGKILL], ids=["sigint", "sigkill"])
def test_batch_predict_resumes_after_being_stopped(slow_echo: str, tmp_path: Path,
                                                   stop: signal.Signals):
    rows = np.arange(2000, dtype=np.int64).reshape(-1, 2)
    np.savez(tmp_path / "in.npz", x=rows)
    out = tmp_path / "out.npz"
    args = ["batch-predict", "--target", slow_echo, "--model", "m", "--inputs",
            tmp_path / "in.npz", "--out", out, "--batch-size", 10, "--in-flight", 2, "--json"]
    process = subprocess.Popen([sys.executable, "-m", "pyserving.client.cli", *map(str, args)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    partial = tmp_path / "out.npz.partial"
    wait_until(lambda: len(list(partial.glob("*.npz"))) >= 5, "five saved parts", 60,
               interval=0.01)
    process.send_signal(stop)
    stdout, _ = process.communicate(timeout=60)
    if stop == signal.SIGINT:
        assert process.returncode == 130
        assert not json.loads(stdout)["complete"]
    assert not out.exists()
    summary = ok_json(run(*args, "--resume"))
    assert summary["resumed_batches"] >= 5 and summary["complete"]
    assert summary["resumed_batches"] + summary["sent_batches"] == 100
    with np.load(out) as outputs:
        np.testing.assert_array_equal(outputs["x"], rows)


# --- compare ---------------------------------------------------------------------------------


def compare(target: str, inputs: Path, *args: object) -> subprocess.CompletedProcess:
    return cli(target, "compare", "--inputs", inputs, *args)


@pytest.fixture
def rollout_inputs(tmp_path: Path) -> Path:
    path = tmp_path / "requests.npz"
    np.savez(path, x=np.linspace(0, 4, 4000, dtype=np.float32).reshape(-1, 1))
    return path


def test_compare_passes_identical_versions(target: str, rollout_inputs: Path):
    result = compare(target, rollout_inputs, "--model", VERSIONS, "--a", "version=123",
                     "--b", "version=124", "--batch-size", 500)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.rstrip().endswith("PASS")
    assert "p50" in result.stdout and "p99" in result.stdout
    result = compare(target, rollout_inputs, "--model", ROLLOUT, "--a", "version=1", "--b",
                     "label=stable")
    assert result.returncode == 0, result.stdout


def test_compare_flags_a_changed_version(target: str, rollout_inputs: Path):
    result = compare(target, rollout_inputs, "--model", ROLLOUT, "--a", "label=stable",
                     "--b", "label=canary", "--json")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert not report["passed"] and report["requests"] == 125
    y = report["outputs"]["y"]
    assert y["max_abs_diff"] == pytest.approx(A_BIT, rel=1e-3)
    assert y["max_rel_diff"] == pytest.approx(A_BIT / 2, rel=1e-3)
    assert y["differing"] == y["elements"] == 4000
    assert y["argmax_agreement"] is None
    # scores: [y, 3] flip argmax where 0.5 x + 2 (+ a bit) crosses 3: x in (1.98, 2]
    assert 0.99 < report["outputs"]["scores"]["argmax_agreement"] < 1.0
    for side in ("a", "b"):
        assert report[side]["p50_ms"] > 0 and report[side]["p99_ms"] >= report[side]["p50_ms"]


def test_compare_tolerances_gate_the_exit_status(target: str, rollout_inputs: Path):
    sides = ("--model", ROLLOUT, "--a", "version=1", "--b", "version=2")
    assert compare(target, rollout_inputs, *sides, "--atol", "0.011").returncode == 0
    assert compare(target, rollout_inputs, *sides, "--rtol", "0.006").returncode == 0
    result = compare(target, rollout_inputs, *sides, "--atol", "0.011",
                     "--min-argmax-agreement", "0.999")
    assert result.returncode == 1 and "argmax agreement" in result.stdout


def test_compare_replays_json_lines(target: str, tmp_path: Path):
    requests = tmp_path / "requests.jsonl"
    requests.write_text('{"x": [[1.0], [2.0]]}\n{"x": [[3.0]]}\n')
    result = compare(target, requests, "--model", ROLLOUT, "--a", "version=1", "--b",
                     "version=2", "--json")
    report = json.loads(result.stdout)
    assert result.returncode == 1 and report["requests"] == 2
    assert report["outputs"]["y"]["elements"] == 3


def test_compare_replays_a_tf_serving_warmup_file(target: str, tmp_path: Path):
    import tensorflow as tf

    warmup = tmp_path / "tf_serving_warmup_requests"
    with tf.io.TFRecordWriter(str(warmup)) as writer:
        for x in (1.0, 2.0, 3.0):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "whatever"
            request.inputs["x"].CopyFrom(tensor_proto(np.array([[x]], np.float32)))
            log = prediction_log_pb2.PredictionLog()
            log.predict_log.request.CopyFrom(request)
            writer.write(log.SerializeToString())
    result = compare(target, warmup, "--model", VERSIONS, "--a", "version=123", "--b",
                     "version=124", "--json")
    assert result.returncode == 0, result.stdout
    assert json.loads(result.stdout)["requests"] == 3


def test_compare_reads_prediction_log_files_without_tensorflow(target: str, tmp_path: Path):
    from pyserving.client.tfrecord import write_records

    logs = tmp_path / "requests.tfrecord"
    records = []
    for x in (1.0, 2.0):
        log = prediction_log_pb2.PredictionLog()
        log.predict_log.request.inputs["x"].CopyFrom(tensor_proto(np.array([[x]], np.float32)))
        records.append(log.SerializeToString())
    write_records(logs, records)
    garbage = tmp_path / "tf_serving_warmup_requests"
    garbage.write_bytes(b"\0" * 16)
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "tensorflow.py").write_text("raise ImportError('no TensorFlow here')\n")
    env = {**os.environ, "PYTHONPATH": str(blocker)}

    def run(path: Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "pyserving.client.cli", "compare", "--target", target,
             "--model", VERSIONS, "--a", "version=123", "--b", "version=124", "--inputs",
             path, "--json"], capture_output=True, text=True, timeout=120, env=env)
    result = run(logs)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["requests"] == 2
    result = run(garbage)
    assert result.returncode == 2
    assert "not a TFRecord file" in result.stderr
