"""Rollout experiments over real gRPC and REST: weighted and sticky splits, explicit versions
bypassing them, shadow comparison, guards, reloading the rollout file, the status route, the
client's table and the metrics.

The model ``m`` has three versions: 1 and 3 are half_plus_two (y = 0.5x + 2), 2 is
half_plus_three (y = 0.5x + 3), labelled stable (1), canary (2) and twin (3).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import subprocess
import sys
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_service_pb2_grpc

from pyserving.server import ModelServer, ServerOptions
from pyserving.server.errors import ServingError
from support import TESTDATA, free_port, metrics_page_samples, post_json, wait_until

TIMEOUT = 10.0
LABELS = 'version_labels { key: "stable" value: 1 } version_labels { key: "canary" value: 2 } ' \
         'version_labels { key: "twin" value: 3 }'
Stub = prediction_service_pb2_grpc.PredictionServiceStub


@pytest.fixture(scope="module")
def model_config(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("rollout")
    for version, source in ((1, "saved_model_half_plus_two_cpu"),
                            (2, "saved_model_half_plus_three"),
                            (3, "saved_model_half_plus_two_cpu")):
        shutil.copytree(TESTDATA / source / "00000123", root / "m" / str(version))
    config = root / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "m" base_path: "{root / "m"}" '
                      f'model_platform: "tensorflow" model_version_policy {{ all {{}} }} '
                      f'{LABELS} }} }}')
    return str(config)


def rollout_text(*arms: str, extra: str = "") -> str:
    return 'rollouts { model_name: "m" ' + " ".join(arms) + " " + extra + " }"


@pytest.fixture
def start(model_config: str, tmp_path: Path) -> Iterator[Callable[..., ModelServer]]:
    """Start a server of ``m`` with a rollout file of this text (and options)."""
    servers = []

    def run(text: str, **options: Any) -> ModelServer:
        path = tmp_path / "rollout.txt"
        path.write_text(text)
        options.setdefault("rollout_config_poll_wait_seconds", 0)
        options.setdefault("allow_version_labels_for_unavailable_models", True)
        server = ModelServer(ServerOptions(
            port=0, rest_api_port=free_port(), model_config_file=model_config,
            rollout_config_file=str(path), **options), host="127.0.0.1").start()
        servers.append(server)
        return server

    yield run
    for server in servers:
        server.stop(grace=None)


def predict_request(x: float = 1.0, **spec: Any) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name="m", **spec))
    request.inputs["x"].dtype = 1
    request.inputs["x"].tensor_shape.dim.add(size=1)
    request.inputs["x"].tensor_shape.dim.add(size=1)
    request.inputs["x"].float_val.append(x)
    return request


def rollout_status(server: ModelServer) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.rest_port}/v1/models/m/rollout",
                                timeout=TIMEOUT) as answer:
        return json.loads(answer.read())


def wait_for(condition: Callable[[], Any], timeout: float = 30.0) -> Any:
    """The first true value of ``condition`` (its last value if none came in time)."""
    values: list[Any] = []
    with contextlib.suppress(AssertionError):  # the caller's assertion says what is wrong
        wait_until(lambda: values.append(condition()) or values[-1], "a condition", timeout,
                   interval=0.02)
    return values[-1]


def test_the_split_follows_the_weights_and_answers_name_their_version(start):
    server = start(rollout_text('split { label: "stable" weight: 80 }',
                                'split { label: "twin" weight: 20 }'))
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = Stub(channel)
        versions = Counter(stub.Predict(predict_request(), TIMEOUT).model_spec.version.value
                           for _ in range(2000))
    assert set(versions) == {1, 3}
    assert abs(versions[3] - 400) < 90  # 5 standard deviations of Binomial(2000, 0.2)
    arms = rollout_status(server)["arms"]
    assert [(arm["label"], arm["version"], arm["requests"], arm["errors"]) for arm in arms] == [
        ("stable", 1, versions[1], 0), ("twin", 3, versions[3], 0)]


def test_rest_requests_are_split_too(start):
    server = start(rollout_text('split { version: 1 weight: 1 }', 'split { version: 2 weight: 1 }'))
    url = f"http://127.0.0.1:{server.rest_port}/v1/models/m:predict"
    answers = Counter(post_json(url, {"instances": [[1.0]]})[1]["predictions"][0][0]
                      for _ in range(400))
    assert set(answers) == {2.5, 3.5} and abs(answers[3.5] - 200) < 60
    assert [arm["requests"] for arm in rollout_status(server)["arms"]] == [
        answers[2.5], answers[3.5]]


def test_a_sticky_key_keeps_its_version_over_grpc_and_rest(start):
    server = start(rollout_text('split { label: "stable" weight: 50 }',
                                'split { label: "canary" weight: 50 }',
                                extra='sticky_metadata_key: "X-User-Id"'))
    url = f"http://127.0.0.1:{server.rest_port}/v1/models/m:predict"
    seen: dict[str, set] = {}
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = Stub(channel)
        for user in range(40):
            key = f"user-{user}"
            for _ in range(3):
                response = stub.Predict(predict_request(), TIMEOUT,
                                        metadata=[("x-user-id", key)])
                seen.setdefault(key, set()).add(2.5 if response.model_spec.version.value == 1
                                                else 3.5)
                request = urllib.request.Request(url, data=b'{"instances": [[1.0]]}',
                                                 headers={"X-User-Id": key})
                with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:
                    seen[key].add(json.loads(answer.read())["predictions"][0][0])
    assert all(len(values) == 1 for values in seen.values())  # gRPC and REST agree, always
    assert {next(iter(values)) for values in seen.values()} == {2.5, 3.5}


def test_a_request_naming_a_version_or_label_bypasses_the_split(start):
    server = start(rollout_text('split { label: "stable" weight: 0 }',
                                'split { label: "canary" weight: 1 }'))
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = Stub(channel)
        assert stub.Predict(predict_request(), TIMEOUT).model_spec.version.value == 2
        for _ in range(5):
            assert stub.Predict(predict_request(version={"value": 1}),
                                TIMEOUT).model_spec.version.value == 1
            assert stub.Predict(predict_request(version_label="twin"),
                                TIMEOUT).model_spec.version.value == 3
    assert [arm["requests"] for arm in rollout_status(server)["arms"]] == [0, 1]


def test_a_shadow_of_an_identical_version_never_mismatches(start):
    server = start(rollout_text('split { label: "stable" weight: 1 }',
                                extra='shadow { label: "twin" fraction: 1.0 }'))
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = Stub(channel)
        for n in range(30):
            assert stub.Predict(predict_request(float(n)), TIMEOUT).model_spec.version.value == 1
    shadow = wait_for(lambda: (status := rollout_status(server)["shadow"])["compared"]
                      + status["dropped"] == 30 and status)
    assert shadow["compared"] > 0
    assert (shadow["label"], shadow["version"], shadow["mismatches"], shadow["errors"],
            shadow["max_abs_diff"]) == ("twin", 3, 0, 0, 0.0)
    assert shadow["mirrored"] == shadow["compared"]


def test_a_shadow_of_another_version_counts_mismatches_and_the_largest_difference(start):
    server = start(rollout_text('split { label: "stable" weight: 1 }',
                                extra='shadow { label: "canary" fraction: 1.0 }'))
    url = f"http://127.0.0.1:{server.rest_port}/v1/models/m:predict"
    for n in range(20):
        assert post_json(url, {"instances": [[float(n)]]})[1]["predictions"] == [[0.5 * n + 2]]
    shadow = wait_for(lambda: (status := rollout_status(server)["shadow"])["compared"]
                      + status["dropped"] == 20 and status)
    assert shadow["compared"] > 0
    assert shadow["mismatches"] == shadow["compared"]
    assert shadow["max_abs_diff"] == 1.0


def test_shadow_errors_are_counted_and_never_reach_the_caller(start):
    server = start(rollout_text('split { label: "stable" weight: 1 }',
                                extra='shadow { version: 99 fraction: 1.0 }'))
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = Stub(channel)
        for _ in range(10):
            stub.Predict(predict_request(), TIMEOUT)
    shadow = wait_for(lambda: (status := rollout_status(server)["shadow"])["errors"]
                      + status["dropped"] == 10 and status)
    assert shadow["errors"] > 0 and shadow["compared"] == 0


def test_a_failing_arm_trips_the_guard_after_few_failed_requests(start):
    server = start(rollout_text('split { label: "stable" weight: 50 }',
                                'split { version: 99 weight: 50 }',
                                extra="guard { max_error_rate: 0.5 min_requests: 5 }"),
                   monitoring_config_file=str(TESTDATA / "monitoring_config.txt"))
    failures = 0
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = Stub(channel)
        for _ in range(200):
            try:
                stub.Predict(predict_request(), TIMEOUT)
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.NOT_FOUND
                failures += 1
    assert failures == 5  # the guard trips at the fifth request of the failing arm
    status = rollout_status(server)
    assert status["guard"]["tripped"]
    assert "version 99 failed 5 of 5 requests" in status["guard"]["reason"]
    assert status["arms"][1] == {
        "label": "", "version": 99, "weight": 0.0, "configured_weight": 50.0,
        "tripped": True, "requests": 5, "errors": 5}
    page = urllib.request.urlopen(
        f"http://127.0.0.1:{server.rest_port}/monitoring/prometheus/metrics", timeout=TIMEOUT)
    samples = metrics_page_samples(page.read().decode())
    assert samples[("pyserving_rollout_guard_trips_total",
                    frozenset({("model_name", "m"), ("what", "arm")}))] == 1
    assert samples[("pyserving_rollout_requests_total", frozenset(
        {("model_name", "m"), ("arm", "version:99"), ("status", "error")}))] == 5
    assert samples[("pyserving_rollout_arm_weight", frozenset(
        {("model_name", "m"), ("arm", "version:99")}))] == 0
    assert samples[("pyserving_rollout_arm_weight", frozenset(
        {("model_name", "m"), ("arm", "label:stable")}))] == 50
    assert samples[("pyserving_rollout_guard_tripped", frozenset({("model_name", "m")}))] == 1


def test_a_changed_file_applies_without_restart_and_an_invalid_one_keeps_the_rollout(
        start, tmp_path, caplog):
    caplog.set_level(logging.ERROR, logger="pyserving.server.rollout.plan")
    server = start(rollout_text('split { label: "stable" weight: 1 }'),
                   rollout_config_poll_wait_seconds=1)
    path = tmp_path / "rollout.txt"
    path.write_text(rollout_text('split { label: "canary" weight: 1 }',
                                 'split { label: "stable" weight: 0 }'))
    assert wait_for(lambda: rollout_status(server)["arms"][0]["label"] == "canary")
    with grpc.insecure_channel(server.grpc_target) as channel:
        assert Stub(channel).Predict(predict_request(), TIMEOUT).model_spec.version.value == 2
    path.write_text(rollout_text('split { label: "canary" weight: -5 }'))
    assert wait_for(lambda: "rollouts[0].split[0].weight: must be a finite number >= 0"
                    in caplog.text)
    assert [arm["label"] for arm in rollout_status(server)["arms"]] == ["canary", "stable"]


def test_an_invalid_file_at_start_up_names_the_field(start):
    with pytest.raises(ServingError) as raised:
        start(rollout_text('split { label: "stable" weight: 1 }',
                           extra='shadow { label: "twin" fraction: 3 }'))
    assert raised.value.message == (
        "Invalid rollout config: rollouts[0].shadow.fraction: must be in [0, 1], got 3.0")


def test_a_model_without_a_rollout_has_no_status(start):
    server = start(rollout_text('split { label: "stable" weight: 1 }'))
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.rest_port}/v1/models/other/rollout")
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=TIMEOUT)
    assert raised.value.code == 404
    assert json.loads(raised.value.read()) == {
        "error": "Model other has no rollout (--rollout_config_file)"}


def test_batching_servers_split_and_shadow_too(start):
    server = start(rollout_text('split { label: "stable" weight: 1 }',
                                'split { label: "twin" weight: 1 }',
                                extra='shadow { label: "canary" fraction: 1.0 }'),
                   enable_batching=True)
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = Stub(channel)
        versions = Counter(stub.Predict(predict_request(), TIMEOUT).model_spec.version.value
                           for _ in range(200))
    assert set(versions) == {1, 3}
    shadow = wait_for(lambda: (status := rollout_status(server)["shadow"])["compared"]
                      + status["dropped"] == 200 and status)
    assert shadow["compared"] > 0 and shadow["mismatches"] == shadow["compared"]


def test_the_client_prints_the_rollout_as_a_table_or_json(start):
    server = start(rollout_text('split { label: "stable" weight: 3 }',
                                'split { version: 2 weight: 1 }',
                                extra='shadow { label: "twin" fraction: 0.5 }'))
    url = f"http://127.0.0.1:{server.rest_port}"
    table = subprocess.run([sys.executable, "-m", "pyserving.client.cli", "rollout", "--model",
                            "m", "--url", url], capture_output=True, text=True, timeout=60)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0] == "model m"
    assert lines[1].split() == ["ARM", "VERSION", "WEIGHT", "REQUESTS", "ERRORS", "ERROR", "RATE"]
    assert lines[2].split() == ["label", "stable", "1", "3", "0", "0", "-"]
    assert lines[3].split() == ["version", "2", "2", "1", "0", "0", "-"]
    assert lines[4].startswith("shadow label twin (version 3), fraction 0.5: mirrored 0")
    assert lines[5] == "guard: ok"
    as_json = subprocess.run([sys.executable, "-m", "pyserving.client.cli", "rollout",
                              "--model", "m", "--url", url, "--json"],
                             capture_output=True, text=True, timeout=60)
    assert json.loads(as_json.stdout) == rollout_status(server)
    missing = subprocess.run([sys.executable, "-m", "pyserving.client.cli", "rollout",
                              "--model", "nope", "--url", url],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1
    assert "HTTP 404: Model nope has no rollout" in missing.stderr


def test_classify_and_regress_are_routed_and_shadowed_too(start):
    server = start(rollout_text('split { label: "stable" weight: 1 }',
                                'split { label: "twin" weight: 1 }',
                                extra='shadow { label: "twin" fraction: 1.0 }'))
    base = f"http://127.0.0.1:{server.rest_port}/v1/models/m"

    def compared_some() -> bool:  # shadows past the runner's time budget are shed
        for kind, answer in (("classify", [["", 2.0]]), ("regress", 2.0)):
            body = {"signature_name": f"{kind}_x_to_y", "examples": [{"x": 0.0}]}
            assert post_json(f"{base}:{kind}", body)[1] == {"results": [answer]}
        return rollout_status(server)["shadow"]["compared"] >= 4

    assert wait_for(compared_some)
    status = rollout_status(server)
    assert sum(arm["requests"] for arm in status["arms"]) >= 2
    assert (status["shadow"]["mismatches"], status["shadow"]["errors"]) == (0, 0)


def test_requests_the_split_sends_to_the_shadow_itself_are_not_mirrored(start):
    server = start(rollout_text('split { label: "canary" weight: 1 }',
                                extra='shadow { label: "canary" fraction: 1.0 }'))
    with grpc.insecure_channel(server.grpc_target) as channel:
        for _ in range(10):
            Stub(channel).Predict(predict_request(), TIMEOUT)
    shadow = rollout_status(server)["shadow"]
    assert (shadow["mirrored"], shadow["dropped"], shadow["compared"]) == (0, 0, 0)


def test_malformed_requests_against_a_50_50_split_do_not_trip_a_healthy_canary(start):
    """Issue #24: 200 requests with an input the signature lacks, interleaved with good ones,
    tripped the canary with "errors" that never reached it. Refusals before the version runs
    are not the version's doing: nothing trips, and both arms show no errors."""
    server = start(rollout_text('split { label: "stable" weight: 50 }',
                                'split { label: "twin" weight: 50 }',
                                extra="guard { max_error_rate: 0.05 min_requests: 5 }"))
    bad = predict_request()
    bad.inputs["nope"].CopyFrom(bad.inputs["x"])
    del bad.inputs["x"]
    refused = answered = 0
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = Stub(channel)
        for _ in range(200):
            with pytest.raises(grpc.RpcError) as raised:
                stub.Predict(bad, TIMEOUT)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            refused += 1
            answered += stub.Predict(predict_request(), TIMEOUT).outputs["y"].float_val == [2.5]
    url = f"http://127.0.0.1:{server.rest_port}/v1/models/m:predict"
    for _ in range(50):  # REST too: a bad dtype
        assert post_json(url, {"instances": [["text"]]})[0] == 400
    status = rollout_status(server)
    assert (refused, answered) == (200, 200)
    assert not status["guard"]["tripped"], status["guard"]["reason"]
    assert [arm["errors"] for arm in status["arms"]] == [0, 0]
    assert sum(arm["requests"] for arm in status["arms"]) == 450
    assert all(not arm["tripped"] and arm["weight"] == 50 for arm in status["arms"])
