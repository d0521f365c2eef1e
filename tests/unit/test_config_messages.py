"""The text-format files of --ssl_config_file, --monitoring_config_file and
--batching_parameters_file parse into TF Serving's messages (compiled from protos/pyserving/),
with TF Serving's error texts and log lines."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import pytest

from pyserving.server.batching.config import BatchingOptions, read_batching_parameters
from pyserving.server.errors import ServingError
from pyserving.server.metrics import PrometheusSettings, read_monitoring_config
from pyserving.server.tls import read_ssl_config


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.txt"
    path.write_text(text)
    return str(path)


def test_ssl_config_fields(tmp_path):
    config = read_ssl_config(write(tmp_path, 'server_key: "KEY" server_cert: "CERT"\n'
                                             'custom_ca: "CA" client_verify: true'))
    assert (config.server_key, config.server_cert, config.custom_ca, config.client_verify) == (
        "KEY", "CERT", "CA", True)


def test_monitoring_config_fields_and_default_path(tmp_path):
    assert read_monitoring_config(write(tmp_path, "prometheus_config { enable: true }")) == \
        PrometheusSettings(enable=True, path="/monitoring/prometheus/metrics")
    assert read_monitoring_config(write(
        tmp_path, 'prometheus_config { enable: true path: "/m" }')) == PrometheusSettings(True,
                                                                                          "/m")
    assert read_monitoring_config("") == PrometheusSettings(False,
                                                            "/monitoring/prometheus/metrics")


def test_batching_parameters_wrappers_and_defaults(tmp_path):
    options = read_batching_parameters(write(
        tmp_path, "max_batch_size { value: 8 } batch_timeout_micros { value: 100 }\n"
                  "allowed_batch_sizes: 4 allowed_batch_sizes: 8\n"
                  "pad_variable_length_inputs: true\n"
                  "enable_large_batch_splitting { value: true }"))
    assert options == BatchingOptions(
        max_batch_size=8, batch_timeout_micros=100, allowed_batch_sizes=(4, 8),
        pad_variable_length_inputs=True, enable_large_batch_splitting=True,
        max_execution_batch_size=8, max_enqueued_batches=10,
        num_batch_threads=BatchingOptions().num_batch_threads)


@pytest.mark.parametrize("read, message", [
    (read_ssl_config, "tensorflow.serving.SSLConfig"),
    (read_monitoring_config, "tensorflow.serving.MonitoringConfig"),
    (read_batching_parameters, "tensorflow.serving.BatchingParameters"),
])
def test_a_file_that_does_not_parse_is_invalid_and_the_reason_is_logged(
        tmp_path, caplog, read, message):
    path = write(tmp_path, "no_such_field: 1")
    with caplog.at_level(logging.ERROR), pytest.raises(ServingError) as raised:
        read(path)
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.message == f"Invalid protobuf file: '{path}'"
    assert f"Error parsing text-format {message}: 1:1" in caplog.text
