"""The request-log writer and settings without a server or TensorFlow: rotation, a full disk, a
full queue, draining on stop, and the checks a logging_config passes at load."""

from __future__ import annotations

import errno
import threading
import time
from pathlib import Path
from typing import IO, Any

import grpc
import pytest

from pyserving.client.prediction_logs import read_logs
from pyserving.server.apis import model_server_config_pb2, predict_pb2
from pyserving.server.errors import ServingError
from pyserving.server.request_log import RequestLog
from pyserving.server.request_log.settings import LogSettings, logging_settings
from pyserving.server.request_log.writer import LOG_EVERY_SECONDS, LogFile, RequestLogWriter
from support import wait_until


class Counts:
    def __init__(self) -> None:
        self.written: dict[str, int] = {}
        self.bytes: dict[str, int] = {}
        self.dropped: dict[tuple[str, str], int] = {}

    def observe_request_log_written(self, model: str, records: int, size: int) -> None:
        self.written[model] = self.written.get(model, 0) + records
        self.bytes[model] = self.bytes.get(model, 0) + size

    def observe_request_log_dropped(self, model: str, reason: str, records: int) -> None:
        self.dropped[(model, reason)] = self.dropped.get((model, reason), 0) + records


def settings(prefix: Path, model: str = "m", rate: float = 1.0) -> LogSettings:
    return LogSettings(model, str(prefix), rate, b"")


def answered(x: float) -> tuple[predict_pb2.PredictRequest, predict_pb2.PredictResponse]:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    request.inputs["x"].float_val.append(x)
    response = predict_pb2.PredictResponse()
    response.model_spec.name = "m"
    response.model_spec.version.value = 7
    response.outputs["y"].float_val.append(x / 2 + 2)
    return request, response


def test_files_rotate_at_the_size_limit_and_stop_writes_everything(tmp_path):
    counts = Counts()
    writer = RequestLogWriter(counts, max_file_bytes=300)
    file = LogFile(settings(tmp_path / "m"))
    for x in range(20):
        writer.submit(file, "predict_log", *answered(float(x)))
    writer.stop()
    files = sorted(tmp_path.glob("m-*.tfrecord"))
    assert len(files) > 2
    assert all(path.stat().st_size <= 300 for path in files)
    records = list(read_logs(files))
    assert [r.predict_log.request.inputs["x"].float_val[0] for r in records] == \
        [float(x) for x in range(20)]
    assert records[0].log_metadata.model_spec.version.value == 7
    assert counts.written == {"m": 20}
    assert counts.bytes == {"m": sum(path.stat().st_size for path in files)}


class FullDisk:
    """A file whose writes fail as on a full disk."""

    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_full_disk_drops_counts_and_logs_at_a_limited_rate(tmp_path, caplog):
    counts = Counts()
    now = [0.0]
    writer = RequestLogWriter(counts, clock=lambda: now[0], open_file=lambda path: FullDisk())
    file = LogFile(settings(tmp_path / "m"))
    for _ in range(3):
        writer.write(file, b"record")
    assert counts.dropped == {("m", "write_error"): 3}
    assert caplog.text.count("No space left on device") == 1
    now[0] += LOG_EVERY_SECONDS
    writer.write(file, b"record")
    assert caplog.text.count("No space left on device") == 2
    assert "2 more since the last message" in caplog.text


def test_an_unopenable_file_is_a_counted_drop(tmp_path):
    counts = Counts()
    writer = RequestLogWriter(counts)
    file = LogFile(settings(tmp_path / "gone" / "m"))
    writer.write(file, b"record")
    assert counts.dropped == {("m", "write_error"): 1}
    (tmp_path / "gone").mkdir()
    writer.write(file, b"record")
    writer.flush_all()
    assert counts.written == {"m": 1}


def test_a_full_queue_drops_instead_of_waiting(tmp_path):
    counts = Counts()
    opening, release = threading.Event(), threading.Event()

    def slow_open(path: str) -> IO[bytes]:
        opening.set()
        release.wait(10)
        return open(path, "xb")

    writer = RequestLogWriter(counts, queue_size=1, open_file=slow_open)
    file = LogFile(settings(tmp_path / "m"))
    writer.submit(file, "predict_log", *answered(1.0))
    assert opening.wait(10)  # the writer is busy with the first record
    writer.submit(file, "predict_log", *answered(2.0))  # queued
    writer.submit(file, "predict_log", *answered(3.0))  # dropped
    assert counts.dropped == {("m", "queue_full"): 1}
    release.set()
    writer.stop()
    assert counts.written == {"m": 2}


def test_a_record_that_cannot_be_built_is_dropped_and_the_writer_goes_on(tmp_path):
    counts = Counts()
    writer = RequestLogWriter(counts)
    file = LogFile(settings(tmp_path / "m"))
    writer.submit(file, "predict_log", object(), object())
    writer.submit(file, "predict_log", *answered(1.0))
    writer.stop()
    assert counts.dropped == {("m", "write_error"): 1}
    assert counts.written == {"m": 1}


def test_configure_keeps_unchanged_models_and_retires_the_rest(tmp_path):
    log = RequestLog(Counts())
    log.configure({"a": settings(tmp_path / "a", "a"), "b": settings(tmp_path / "b", "b")})
    a, b = log.models["a"], log.models["b"]
    log.configure({"a": settings(tmp_path / "a", "a"), "b": settings(tmp_path / "b2", "b"),
                   "off": settings(tmp_path / "off", "off", rate=0.0)})
    assert log.models["a"] is a and log.models["b"] is not b
    assert "off" not in log.models  # sampling_rate 0 logs nothing: not even looked up
    log.stop()
    assert log.models == {}


def test_the_log_is_an_answer_observer_only_while_a_model_logs(tmp_path):
    heard: list[bool] = []
    log = RequestLog(Counts())
    log.on_active = heard.append
    log.configure({"off": settings(tmp_path / "off", "off", rate=0.0)})
    log.configure({"a": settings(tmp_path / "a", "a")})
    log.configure({"a": settings(tmp_path / "a", "a", rate=0.5)})
    log.configure({})
    log.configure({"a": settings(tmp_path / "a", "a")})
    log.stop()
    assert heard == [True, False, True, False]


def config_with(logging_text: str, tmp_path: Path) -> Any:
    from google.protobuf import text_format

    return text_format.Parse(
        f'model_config_list {{ config {{ name: "m" base_path: "/m" model_platform: '
        f'"tensorflow" logging_config {{ {logging_text} }} }} config {{ name: "quiet" '
        f'base_path: "/q" model_platform: "tensorflow" }} }}',
        model_server_config_pb2.ModelServerConfig())


def test_settings_of_a_valid_config(tmp_path):
    config = config_with(f'log_collector_config {{ filename_prefix: "{tmp_path}/new/m" }} '
                         "sampling_config { sampling_rate: 0.5 }", tmp_path)
    found = logging_settings(config)
    assert list(found) == ["m"]
    assert found["m"].sampling_rate == 0.5 and found["m"].filename_prefix == f"{tmp_path}/new/m"
    assert (tmp_path / "new").is_dir()  # created, and tried with a real file
    assert list((tmp_path / "new").iterdir()) == []


@pytest.mark.parametrize("text, message", [
    ('log_collector_config { type: "kafka" filename_prefix: "{d}/m" }', '"kafka"'),
    ('log_collector_config { filename_prefix: "{d}/m" } sampling_config { sampling_rate: 2 }',
     "sampling_rate 2.0 is not in [0, 1]"),
    ("sampling_config { sampling_rate: 1 }", "needs log_collector_config.filename_prefix"),
    ('log_collector_config { filename_prefix: "{d}/file/m" }', "file is not a folder"),
    ('log_collector_config { filename_prefix: "{d}/file/sub/m" }', "Not a directory"),
])
def test_invalid_logging_configs_are_refused(tmp_path, text, message):
    (tmp_path / "file").write_text("")
    with pytest.raises(ServingError) as refused:
        logging_settings(config_with(text.replace("{d}", str(tmp_path)), tmp_path))
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert message in refused.value.message and "Model m" in refused.value.message


def test_a_stuck_disk_never_blocks_a_reload_or_the_shutdown(tmp_path, caplog):
    counts = Counts()
    opening, release = threading.Event(), threading.Event()

    def stuck_open(path: str) -> IO[bytes]:
        opening.set()
        release.wait(10)
        return open(path, "xb")

    writer = RequestLogWriter(counts, queue_size=1, open_file=stuck_open)
    file = LogFile(settings(tmp_path / "m"))
    writer.submit(file, "predict_log", *answered(1.0))
    assert opening.wait(10)
    writer.submit(file, "predict_log", *answered(2.0))  # the queue is full now
    started = time.monotonic()
    writer.retire(file)  # a reload retiring the model's file does not wait
    writer.stop(timeout=0.2)
    assert time.monotonic() - started < 5
    assert "did not finish within 0.2 s" in caplog.text
    writer.submit(file, "predict_log", *answered(3.0))
    assert counts.dropped == {("m", "shutdown"): 1}
    release.set()
    wait_until(lambda: counts.written.get("m") == 2, "the stuck writer to finish its queue")
