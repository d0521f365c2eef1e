"""pyserving.client against real servers over real channels: PredictionClient, its asyncio
twin, errors, deadlines, retries, channel options and the bulk generator API."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator

import grpc
import ml_dtypes
import numpy as np
import pytest
from google.protobuf import json_format

from client_fakes import EchoPredictionService, start_fake_server
from pyserving.client import (
    AsyncPredictionClient,
    ChannelOptions,
    PredictionClient,
    PredictionError,
    RetryPolicy,
    VersionStatus,
    example_from_features,
    predict_all,
    predict_batches,
)
from pyserving.client.apis import example_pb2, model_server_config_pb2, predict_pb2
from pyserving.client.requests import tensor_proto
from support import TESTDATA, copy_testdata, free_port

TWO = "half_plus_two"  # saved_model_half_plus_two_cpu: version 123
VERSIONS = "two_versions"  # saved_model_half_plus_two_2_versions: 123 (stable), 124 (canary)
THREE = "saved_model_half_plus_three"
TIMEOUT = 20.0
FAST_RETRY = RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.05)


def config_text(models: dict[str, str], labels: dict[str, int] | None = None) -> str:
    entries = []
    for name, base_path in models.items():
        extra = ""
        if name == VERSIONS:
            extra = "model_version_policy { all {} }\n" + "".join(
                f'version_labels {{ key: "{k}" value: {v} }}\n' for k, v in (labels or {}).items())
        entries.append(f'config {{ name: "{name}" base_path: "{base_path}" '
                       f'model_platform: "tensorflow" {extra}}}')
    return "model_config_list {\n" + "\n".join(entries) + "\n}\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """half_plus_two and two_versions (labels stable=123, canary=124) on one server."""
    from pyserving.server import ModelServer, ServerOptions

    root = tmp_path_factory.mktemp("client_models")
    models = {TWO: copy_testdata("saved_model_half_plus_two_cpu", root / TWO),
              VERSIONS: copy_testdata("saved_model_half_plus_two_2_versions", root / VERSIONS)}
    config = root / "models.config"
    config.write_text(config_text(models, {"stable": 123, "canary": 124}))
    options = ServerOptions(port=0, model_config_file=str(config),
                            allow_version_labels_for_unavailable_models=True)
    server = ModelServer(options, host="127.0.0.1").start()
    yield server
    server.stop(grace=None)


@pytest.fixture
def client(server: object) -> Iterator[PredictionClient]:
    with PredictionClient(server.grpc_target, timeout=TIMEOUT) as client:
        yield client


@pytest.fixture
def fake() -> Iterator[Callable[..., tuple[EchoPredictionService, str]]]:
    """Start echo PredictionServices on free ports; returns (service, target)."""
    servers = []

    def start(**behaviour: object) -> tuple[EchoPredictionService, str]:
        service = EchoPredictionService(**behaviour)
        grpc_server, port = start_fake_server(service)
        servers.append(grpc_server)
        return service, f"127.0.0.1:{port}"

    yield start
    for grpc_server in servers:
        grpc_server.stop(None)


def raised(call: Callable[[], object]) -> PredictionError:
    with pytest.raises(PredictionError) as caught:
        call()
    return caught.value


# --- predict ---------------------------------------------------------------------------------


def test_predict_takes_lists_and_returns_numpy_arrays(client: PredictionClient):
    outputs = client.predict(TWO, {"x": [[1.0], [2.0], [5.0]]})
    assert list(outputs) == ["y"]
    assert outputs["y"].dtype == np.float32
    np.testing.assert_array_equal(outputs["y"], [[2.5], [3.0], [4.5]])


def test_predict_takes_arrays_and_scalars(client: PredictionClient):
    outputs = client.predict(TWO, {"x": np.array([4.0], dtype=np.float32)})
    np.testing.assert_array_equal(outputs["y"], [4.0])
    np.testing.assert_array_equal(client.predict(TWO, {"x": 2.0})["y"], 3.0)


@pytest.mark.parametrize("choice", [{"version": 123}, {"version": 124}, {"label": "stable"},
                                    {"label": "canary"}, {}])
def test_predict_picks_a_version_or_label(client: PredictionClient, choice: dict):
    outputs = client.predict(VERSIONS, {"x": [[2.0]]}, **choice)
    np.testing.assert_array_equal(outputs["y"], [[3.0]])


def test_predict_version_and_label_are_exclusive(client: PredictionClient):
    with pytest.raises(ValueError, match="not both"):
        client.predict(VERSIONS, {"x": [1.0]}, version=123, label="stable")


def test_predict_with_a_named_signature_and_string_inputs(client: PredictionClient):
    examples = [example_from_features({"x": x}).SerializeToString() for x in (2.0, 4.0)]
    outputs = client.predict(TWO, {"inputs": examples}, signature="regress_x_to_y")
    np.testing.assert_array_equal(outputs["outputs"], [[3.0], [4.0]])


def test_output_filter_is_sent(client: PredictionClient):
    assert list(client.predict(TWO, {"x": [1.0]}, output_filter=["y"])) == ["y"]
    error = raised(lambda: client.predict(TWO, {"x": [1.0]}, output_filter=["nope"]))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "nope" in error.message


def test_raw_stubs_and_ready_made_requests(client: PredictionClient):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = TWO
    request.inputs["x"].CopyFrom(tensor_proto(np.array([1.0], dtype=np.float32)))
    response = client.prediction_service.Predict(request, TIMEOUT)
    assert response.model_spec.version.value == 123
    assert client.send(request).outputs["y"].float_val == [2.5]
    with pytest.raises(TypeError):
        client.send(example_pb2.Example())


# --- classify, regress, multi-inference ------------------------------------------------------


def test_classify_takes_dicts_of_features(client: PredictionClient):
    result = client.classify(TWO, [{"x": 2.0}, {"x": [4.0]}], signature="classify_x_to_y")
    np.testing.assert_array_equal(result.scores, [[3.0], [4.0]])
    assert result.labels.tolist() == [[""], [""]]
    assert result.as_lists() == [[("", 3.0)], [("", 4.0)]]


def test_classify_and_regress_take_example_protos(client: PredictionClient):
    import tensorflow as tf

    ours = example_pb2.Example()
    ours.features.feature["x"].float_list.value.append(2.0)
    theirs = tf.train.Example(features=tf.train.Features(
        feature={"x": tf.train.Feature(float_list=tf.train.FloatList(value=[6.0]))}))
    values = client.regress(TWO, [ours, theirs], signature="regress_x_to_y")
    assert values.tolist() == [3.0, 5.0]
    scores = client.classify(TWO, [theirs], signature="classify_x_to_y").scores
    assert scores.tolist() == [[5.0]]


def test_regress_with_a_context(client: PredictionClient):
    values = client.regress(TWO, [{}, {"x": 4.0}], context={"x": 2.0},
                            signature="regress_x_to_y")
    assert values.tolist() == [3.0, 4.0]


def test_multi_inference_returns_results_by_signature(client: PredictionClient):
    results = client.multi_inference(TWO, [{"x": 2.0}, {"x": 0.0}], {
        "regress_x_to_y": "regress", "regress_x_to_y2": "regress",
        "classify_x_to_y": "tensorflow/serving/classify"})
    assert list(results) == ["regress_x_to_y", "regress_x_to_y2", "classify_x_to_y"]
    assert results["regress_x_to_y"].tolist() == [3.0, 2.0]
    assert results["regress_x_to_y2"].tolist() == [4.0, 3.0]
    assert results["classify_x_to_y"].scores.tolist() == [[3.0], [2.0]]


# --- metadata, status, reload ----------------------------------------------------------------


def test_metadata_describes_the_signatures(client: PredictionClient):
    metadata = client.metadata(TWO)
    assert (metadata.name, metadata.version) == (TWO, 123)
    assert sorted(metadata.signatures) == ["classify_x_to_y", "regress_x2_to_y3",
                                           "regress_x_to_y", "regress_x_to_y2",
                                           "serving_default"]
    default = metadata.signatures["serving_default"]
    assert default.method_name == "tensorflow/serving/predict"
    assert (default.inputs["x"].dtype, default.inputs["x"].shape) == ("DT_FLOAT", (-1, 1))
    assert default.outputs["y"].name == "y:0"
    assert metadata.signatures["classify_x_to_y"].inputs["inputs"].shape is None


def test_metadata_signature_def_map_is_tf_servings(client: PredictionClient):
    import json

    expected = json.loads((TESTDATA / "half_plus_two_model_metadata.json").read_text())
    signature_map = client.metadata(TWO, version=123).signature_def_map
    expected_map = json_format.ParseDict(expected["metadata"]["signature_def"],
                                         type(signature_map)())
    assert signature_map == expected_map


def test_metadata_for_a_label(client: PredictionClient):
    assert client.metadata(VERSIONS, label="canary").version == 124


def test_status_lists_each_version(client: PredictionClient):
    assert client.status(TWO) == [VersionStatus(123, "AVAILABLE", "OK", "")]
    assert [s.version for s in client.status(VERSIONS)] == [124, 123]
    assert [s.version for s in client.status(VERSIONS, version=123)] == [123]


def test_reload_config_replaces_the_models(serve, testdata_model):
    base = testdata_model("saved_model_half_plus_two_cpu")
    three = testdata_model(THREE)
    with PredictionClient(serve(model_name=TWO, model_base_path=base).grpc_target) as client:
        client.reload_config(config_text({TWO: base, "three": three}))
        assert client.predict("three", {"x": [2.0]})["y"].tolist() == [4.0]
        config = model_server_config_pb2.ModelServerConfig()
        config.model_config_list.config.add(name="three", base_path=three,
                                            model_platform="tensorflow")
        client.reload_config(config)
        assert raised(lambda: client.predict(TWO, {"x": [2.0]})).code == \
            grpc.StatusCode.NOT_FOUND
        error = raised(lambda: client.reload_config(config_text({"gone": "relative/nope"})))
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT
        assert error.message.startswith("Expected model gone to have an absolute path")


# --- errors and deadlines --------------------------------------------------------------------


def test_errors_carry_the_code_and_tf_servings_message(client: PredictionClient):
    error = raised(lambda: client.predict("nope", {"x": [1.0]}))
    assert error.code == grpc.StatusCode.NOT_FOUND
    assert error.message == "Servable not found for request: Latest(nope)"
    assert str(error) == "NOT_FOUND: Servable not found for request: Latest(nope)"
    error = raised(lambda: client.status(TWO, version=7))
    assert error.code == grpc.StatusCode.NOT_FOUND
    error = raised(lambda: client.predict(TWO, {"x": np.array([1.0])}))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.message == "Expects arg[0] to be float but double is provided"


def test_the_deadline_cuts_a_slow_call(fake):
    _, target = fake(delay=3.0)
    with PredictionClient(target, timeout=0.3) as client:
        started = time.monotonic()
        error = raised(lambda: client.predict("m", {"x": [1.0]}))
        assert error.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 2.0
        started = time.monotonic()
        assert raised(lambda: client.predict("m", {"x": [1.0]}, timeout=0.1)).code == \
            grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 2.0


# --- retries ---------------------------------------------------------------------------------


def test_unavailable_is_retried_until_it_answers(fake):
    service, target = fake(failures=(grpc.StatusCode.UNAVAILABLE,) * 2)
    with PredictionClient(target, retries=FAST_RETRY) as client:
        assert client.predict("m", {"x": [1.0]})["x"].tolist() == [1.0]
    assert service.calls == 3


def test_retries_are_bounded(fake):
    service, target = fake(failures=(grpc.StatusCode.UNAVAILABLE,) * 10)
    with PredictionClient(target, retries=FAST_RETRY) as client:
        assert raised(lambda: client.predict("m", {"x": [1.0]})).message == "fake UNAVAILABLE"
    assert service.calls == FAST_RETRY.max_attempts
    service, target = fake(failures=(grpc.StatusCode.UNAVAILABLE,))
    with PredictionClient(target, retries=0) as client:
        assert raised(lambda: client.predict("m", {"x": [1.0]})).code == \
            grpc.StatusCode.UNAVAILABLE
    assert service.calls == 1


@pytest.mark.parametrize("code", [grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INTERNAL,
                                  grpc.StatusCode.RESOURCE_EXHAUSTED])
def test_other_failures_are_not_retried(fake, code: grpc.StatusCode):
    service, target = fake(failures=(code,))
    with PredictionClient(target, retries=FAST_RETRY) as client:
        assert raised(lambda: client.predict("m", {"x": [1.0]})).code == code
    assert service.calls == 1


def test_resource_exhausted_is_retried_when_asked(fake):
    service, target = fake(failures=(grpc.StatusCode.RESOURCE_EXHAUSTED,))
    policy = RetryPolicy(initial_backoff=0.01, retry_resource_exhausted=True)
    with PredictionClient(target, retries=policy) as client:
        client.predict("m", {"x": [1.0]})
    assert service.calls == 2


def test_a_server_that_comes_up_is_reached_by_retries(serve, testdata_model):
    base = testdata_model("saved_model_half_plus_two_cpu")
    port = free_port()
    starter = threading.Timer(1.0, lambda: serve(port=port, model_name=TWO,
                                                 model_base_path=base))
    policy = RetryPolicy(max_attempts=200, initial_backoff=0.05, max_backoff=0.5)
    with PredictionClient(f"127.0.0.1:{port}", retries=policy, timeout=60) as client:
        starter.start()
        try:
            assert client.predict(TWO, {"x": [2.0]})["y"].tolist() == [3.0]
        finally:
            starter.join()


def test_retries_stop_at_the_deadline():
    policy = RetryPolicy(max_attempts=1000, initial_backoff=0.05, max_backoff=0.2)
    with PredictionClient(f"127.0.0.1:{free_port()}", retries=policy, timeout=1.0) as client:
        started = time.monotonic()
        error = raised(lambda: client.predict(TWO, {"x": [2.0]}))
        elapsed = time.monotonic() - started
    assert error.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert 0.5 < elapsed < 2.5


# --- channels --------------------------------------------------------------------------------


def test_one_channel_serves_every_call_and_can_be_shared(server: object):
    channel = grpc.insecure_channel(server.grpc_target)
    try:
        first = PredictionClient(server.grpc_target, channel=channel)
        second = PredictionClient(server.grpc_target, channel=channel)
        assert first.channel is second.channel is channel
        first.predict(TWO, {"x": [1.0]})
        first.close()  # a channel passed in stays open
        assert second.predict(TWO, {"x": [1.0]})["y"].tolist() == [2.5]
    finally:
        channel.close()


def test_max_message_size_applies(client: PredictionClient, server: object):
    small = ChannelOptions(max_message_bytes=1024)
    with PredictionClient(server.grpc_target, channel_options=small) as limited:
        assert limited.predict(TWO, {"x": [1.0]})["y"].tolist() == [2.5]
        big = np.zeros((4096, 1), dtype=np.float32)
        assert raised(lambda: limited.predict(TWO, {"x": big})).code == \
            grpc.StatusCode.RESOURCE_EXHAUSTED
    assert client.predict(TWO, {"x": np.zeros((300_000, 1), np.float32)})["y"].shape == \
        (300_000, 1)


def test_channel_options_become_grpc_arguments(server: object):
    options = ChannelOptions(keepalive_time=30, keepalive_timeout=5,
                             keepalive_without_calls=True, lb_policy="round_robin",
                             extra=(("grpc.max_receive_message_length", 1 << 20),))
    arguments = dict(options.arguments())
    assert arguments["grpc.keepalive_time_ms"] == 30_000
    assert arguments["grpc.keepalive_timeout_ms"] == 5_000
    assert arguments["grpc.keepalive_permit_without_calls"] == 1
    assert arguments["grpc.lb_policy_name"] == "round_robin"
    assert arguments["grpc.max_receive_message_length"] == 1 << 20
    with PredictionClient(server.grpc_target, channel_options=options) as client:
        assert client.predict(TWO, {"x": [1.0]})["y"].tolist() == [2.5]


def test_call_metadata_is_sent(fake):
    service, target = fake()
    with PredictionClient(target, metadata=[("authorization", "Bearer t")]) as client:
        client.predict("m", {"x": [1.0]})
    assert ("authorization", "Bearer t") in service.metadata[0]


def test_every_dtype_goes_through_unchanged(fake):
    _, target = fake()
    inputs = {
        "float": np.array([[1.5, -2.0]], np.float32), "double": np.array([1e300]),
        "half": np.array([0.5, 65504], np.float16),
        "bfloat16": np.array([1.5, -3.0], ml_dtypes.bfloat16),
        "int8": np.array([-128, 127], np.int8), "uint8": np.array([255], np.uint8),
        "int16": np.array([-32768], np.int16), "uint16": np.array([65535], np.uint16),
        "int32": np.array([-(2**31)], np.int32), "int64": np.array([2**62], np.int64),
        "uint32": np.array([2**32 - 1], np.uint32), "uint64": np.array([2**64 - 1], np.uint64),
        "bool": np.array([[True, False]]), "complex64": np.array([1 + 2j], np.complex64),
        "complex128": np.array([[3 - 4j]], np.complex128),
        "bytes": np.array([b"a\x00b", b""], dtype=object), "scalar": np.float32(7),
    }
    with PredictionClient(target) as client:
        outputs = client.predict("m", {**inputs, "text": ["héllo", "x"]})
    for name, array in inputs.items():
        assert outputs[name].dtype == np.asarray(array).dtype, name
        np.testing.assert_array_equal(outputs[name], array, err_msg=name)
    assert outputs["text"].tolist() == ["héllo".encode(), b"x"]


# --- asyncio ---------------------------------------------------------------------------------


def test_async_client_makes_the_same_calls(server: object):
    async def main() -> None:
        async with AsyncPredictionClient(server.grpc_target, timeout=TIMEOUT) as client:
            outputs = await client.predict(VERSIONS, {"x": [[2.0]]}, label="canary")
            assert outputs["y"].tolist() == [[3.0]]
            many = await asyncio.gather(*(client.predict(TWO, {"x": [float(i)]})
                                          for i in range(20)))
            assert [o["y"].tolist() for o in many] == [[0.5 * i + 2] for i in range(20)]
            result = await client.classify(TWO, [{"x": 2.0}], signature="classify_x_to_y")
            assert result.scores.tolist() == [[3.0]]
            assert (await client.regress(TWO, [{"x": 2.0}], signature="regress_x_to_y")
                    ).tolist() == [3.0]
            results = await client.multi_inference(TWO, [{"x": 2.0}],
                                                   {"regress_x_to_y": "regress"})
            assert results["regress_x_to_y"].tolist() == [3.0]
            assert (await client.metadata(TWO)).version == 123
            assert (await client.status(TWO))[0].state == "AVAILABLE"
            with pytest.raises(PredictionError) as caught:
                await client.predict("nope", {"x": [1.0]})
            assert str(caught.value) == "NOT_FOUND: Servable not found for request: " \
                                        "Latest(nope)"

    asyncio.run(main())


def test_async_client_retries_and_deadlines(fake):
    service, target = fake(failures=(grpc.StatusCode.UNAVAILABLE,) * 2)
    _, slow_target = fake(delay=3.0)

    async def main() -> None:
        async with AsyncPredictionClient(target, retries=FAST_RETRY) as client:
            assert (await client.predict("m", {"x": [1.0]}))["x"].tolist() == [1.0]
        async with AsyncPredictionClient(slow_target, timeout=0.2) as client:
            with pytest.raises(PredictionError) as caught:
                await client.predict("m", {"x": [1.0]})
            assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED

    asyncio.run(main())
    assert service.calls == 3


# --- bulk ------------------------------------------------------------------------------------


def test_predict_batches_keeps_input_order_and_bounds_requests_in_flight(fake):
    service, target = fake(max_delay=0.02)
    rows = np.arange(1000, dtype=np.float32).reshape(-1, 1)
    with PredictionClient(target) as client:
        batches = list(predict_batches(client, "m", {"x": rows}, batch_size=64, in_flight=4))
    assert [b.index for b in batches] == list(range(16))
    assert (batches[-1].start, batches[-1].stop) == (960, 1000)
    np.testing.assert_array_equal(np.concatenate([b.outputs["x"] for b in batches]), rows)
    assert service.calls == 16
    assert 1 < service.most_in_flight <= 4


def test_predict_batches_skips_done_batches_and_raises_failures(fake, client):
    service, target = fake()
    rows = np.arange(10, dtype=np.float32)
    with PredictionClient(target) as echo:
        batches = list(predict_batches(echo, "m", {"x": rows}, batch_size=3, skip={0, 2}))
    assert [(b.index, b.outputs["x"].tolist()) for b in batches] == [(1, [3, 4, 5]),
                                                                     (3, [9])]
    assert service.calls == 2
    results = predict_batches(client, "nope", {"x": rows}, batch_size=3)
    assert raised(lambda: next(results)).code == grpc.StatusCode.NOT_FOUND


def test_predict_all_against_the_server(client: PredictionClient):
    rows = np.linspace(0, 10, 2000, dtype=np.float32).reshape(-1, 1)
    outputs = predict_all(client, TWO, {"x": rows}, batch_size=128, in_flight=3)
    np.testing.assert_array_equal(outputs["y"], rows * 0.5 + 2)


def test_predict_batches_needs_inputs_sharing_rows(client: PredictionClient):
    with pytest.raises(ValueError, match="dimension 0"):
        next(predict_batches(client, TWO, {"a": np.zeros(3), "b": np.zeros(4)}))
