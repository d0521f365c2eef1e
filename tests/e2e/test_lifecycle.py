"""Model lifecycle over a real channel: file-system polling, availability-preserving swaps,
retried loads, unloads that wait for in-flight requests, and GetModelStatus's states.

Expected behaviour follows TF Serving's FileSystemStoragePathSource, AspiredVersionsManager
with the AvailabilityPreservingPolicy, and get_model_status_impl.cc.
"""

from __future__ import annotations

import shutil
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
import tensorflow as tf
from tensorflow.python.data.experimental.ops import testing as tf_data_testing
from tensorflow_serving.apis import (
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)

from model_watch import (
    AVAILABLE,
    END,
    LOADING,
    TWO_VERSIONS,
    UNLOADING,
    PredictLoad,
    State,
    StatusWatcher,
    predict_request,
    switches,
)
from support import TESTDATA, wait_until

BAD_MODEL = TESTDATA / "bad_half_plus_two" / "00000123"
POLL_SECONDS = 1
WAIT_SECONDS = 30.0
RPC_TIMEOUT = 10.0
UNIMPLEMENTED_CODE = 12  # tensorflow.error.Code



# --- models on disk -------------------------------------------------------------------------

def copy_tree(source: Path, target: Path) -> Path:
    """Copy a (read-only) model folder and make the copy writable, so tests can remove it."""
    shutil.copytree(source, target)
    for path in [target, *target.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)
    return target


def publish(source: Path, base: Path, version: int) -> Path:
    """Publish a version atomically: copy under a non-numeric name, then rename it."""
    staged = copy_tree(source, base / f"incoming-{version}")
    return staged.rename(base / str(version))


def half_plus_two_base(root: Path, *versions: int) -> Path:
    """A base path under ``root`` holding these versions of half_plus_two (123 and/or 124)."""
    base = root / "half_plus_two"
    base.mkdir(parents=True)
    for version in versions:
        copy_tree(TWO_VERSIONS / f"{version:08d}", base / str(version))
    return base


def write_config(path: Path, models: dict[str, Path], policy: str = "") -> str:
    """A --model_config_file listing ``models`` (name -> base path), each with ``policy``."""
    entries = "".join(
        f'  config {{ name: "{name}" base_path: "{base}" model_platform: "tensorflow" '
        f'{policy} }}\n' for name, base in models.items())
    path.write_text(f"model_config_list {{\n{entries}}}\n")
    return str(path)


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TF2 SavedModel: y = 0.5 * x + 2 after sleeping ``delay`` seconds (a tf.data sleep,
    which blocks without using a CPU)."""

    class Slow(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x"),
                                      tf.TensorSpec([], tf.float32, name="delay")])
        def serve(self, x, delay):
            # The sleep dataset sleeps before the element and again before end-of-sequence.
            micros = tf.cast(delay * 5e5, tf.int64)
            slept = tf.data.Dataset.from_tensors(x).apply(tf_data_testing.sleep(micros))
            return {"y": tf.data.experimental.get_single_element(slept) * 0.5 + 2.0}

    module = Slow()
    path = tmp_path_factory.mktemp("slow") / "1"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def write_warmup(version_dir: Path, request: predict_pb2.PredictRequest) -> None:
    """Give a version TF Serving's warmup file, replaying ``request`` once before it serves."""
    target = version_dir / "assets.extra"
    target.mkdir()
    record = prediction_log_pb2.PredictionLog()
    record.predict_log.request.CopyFrom(request)
    with tf.io.TFRecordWriter(str(target / "tf_serving_warmup_requests")) as writer:
        writer.write(record.SerializeToString())


# --- requests ---------------------------------------------------------------------------------



def served_version(stub: prediction_service_pb2_grpc.PredictionServiceStub,
                   request: predict_pb2.PredictRequest) -> int:
    response = stub.Predict(request, RPC_TIMEOUT)
    assert list(response.outputs["y"].float_val) == [3.0]
    return response.model_spec.version.value










# --- GetModelStatus -------------------------------------------------------------------------



def status_summary(statuses: list[State]) -> list[tuple[int, int, int]]:
    return [(s.version, s.state, s.status.error_code) for s in statuses]


@pytest.fixture
def channel(channel_to: Callable[[str], grpc.Channel]) -> Callable[[object], grpc.Channel]:
    return lambda server: channel_to(server.grpc_target)


def serve_policy(serve: Callable[..., object], tmp_path: Path, base: Path, policy: str,
                 **options: object) -> object:
    """Serve ``base`` as "default" with the latest{1} default or an all{} version policy."""
    if policy == "latest":
        return serve(model_base_path=str(base), file_system_poll_wait_seconds=POLL_SECONDS,
                     **options)
    config = write_config(tmp_path / "models.config", {"default": base},
                          "model_version_policy { all {} }")
    return serve(model_config_file=config, file_system_poll_wait_seconds=POLL_SECONDS,
                 **options)


# --- tests ----------------------------------------------------------------------------------

@pytest.mark.parametrize("policy", ["latest", "all"])
def test_new_version_swaps_in_with_zero_failed_requests(serve, channel, tmp_path, policy):
    base = half_plus_two_base(tmp_path, 123)
    server = serve_policy(serve, tmp_path, base, policy)
    watcher = StatusWatcher(channel(server))
    with PredictLoad(channel(server), predict_request()) as load:
        load.wait_for_version(123)
        publish(TWO_VERSIONS / "00000124", base, 124)
        old_state = END if policy == "latest" else AVAILABLE
        watcher.wait_for({124: AVAILABLE, 123: old_state})
        load.wait_for_version(124)
        shutil.rmtree(base / "123")
        final = watcher.wait_for({124: AVAILABLE, 123: END})
        load.wait_for_version(124)

    assert load.errors == []
    for client in load.clients:
        assert switches(client.versions) == [123, 124]
    # Newest first; an unloaded version is END with an OK status.
    assert status_summary(final) == [(124, AVAILABLE, 0), (123, END, 0)]
    assert final[1].status.error_message == ""
    watcher.assert_tf_serving_sequences()


def test_bad_version_fails_while_the_good_one_keeps_serving(serve, channel, tmp_path, caplog):
    base = half_plus_two_base(tmp_path, 123)
    server = serve(model_base_path=str(base), file_system_poll_wait_seconds=POLL_SECONDS,
                   max_num_load_retries=1, load_retry_interval_micros=100_000)
    watcher = StatusWatcher(channel(server))
    with PredictLoad(channel(server), predict_request()) as load:
        load.wait_for_version(123)
        publish(BAD_MODEL, base, 200)
        final = watcher.wait_for({200: END, 123: AVAILABLE})
        polls = server.source.polls
        # Later polls still list 200: it stays failed (TF Serving does not reload it).
        wait_until(lambda: server.source.polls >= polls + 2, "more polls after the failed load")
        assert watcher.states() == {200: END, 123: AVAILABLE}
        load.wait_for_version(123)

    assert load.errors == []
    assert all(set(client.versions) == {123} for client in load.clients)
    # A session bundle (export.meta): TF Serving refuses it before looking for a SavedModel.
    assert status_summary(final) == [(200, END, UNIMPLEMENTED_CODE), (123, AVAILABLE, 0)]
    assert final[0].status.error_message == "Session Bundle is deprecated and removed."
    assert status_summary(watcher.statuses()) == status_summary(final)
    assert watcher.seen[("default", 200)][-2:] == [LOADING, END]
    attempts = [r for r in caplog.records if "version: 200} failed" in r.getMessage()]
    assert len(attempts) == 2  # the load and --max_num_load_retries=1 retry
    watcher.assert_tf_serving_sequences()


def test_half_written_version_is_retried_until_complete(serve, channel, tmp_path, caplog):
    base = half_plus_two_base(tmp_path, 123)
    server = serve(model_base_path=str(base), file_system_poll_wait_seconds=POLL_SECONDS,
                   max_num_load_retries=100, load_retry_interval_micros=200_000)
    watcher = StatusWatcher(channel(server))
    complete = TWO_VERSIONS / "00000124"
    with PredictLoad(channel(server), predict_request()) as load:
        load.wait_for_version(123)
        # The version directory appears with its variables, but no saved_model.pb yet.
        copy_tree(complete / "variables", base / "124" / "variables")
        watcher.wait_for({124: LOADING, 123: AVAILABLE})
        loading_since = time.monotonic()

        def failed_attempts() -> int:
            return sum("version: 124} failed" in record.getMessage()
                       for record in caplog.records)

        # Let a couple of polls see the half-written version while its loads fail.
        wait_until(lambda: failed_attempts() >= 2
                   and time.monotonic() - loading_since > 2 * POLL_SECONDS,
                   "failed loads of the half-written version")
        assert watcher.states() == {124: LOADING, 123: AVAILABLE}
        shutil.copy(complete / "saved_model.pb", base / "124" / "saved_model.pb")
        shutil.copytree(complete / "assets", base / "124" / "assets")
        final = watcher.wait_for({124: AVAILABLE, 123: END})
        load.wait_for_version(124)

    assert load.errors == []
    for client in load.clients:
        assert switches(client.versions) == [123, 124]
    assert status_summary(final) == [(124, AVAILABLE, 0), (123, END, 0)]
    watcher.assert_tf_serving_sequences()


def test_half_written_version_removed_and_republished_loads(serve, channel, tmp_path):
    base = half_plus_two_base(tmp_path, 123)
    server = serve(model_base_path=str(base), file_system_poll_wait_seconds=POLL_SECONDS,
                   max_num_load_retries=100, load_retry_interval_micros=200_000)
    watcher = StatusWatcher(channel(server))
    copy_tree(TWO_VERSIONS / "00000124" / "variables", base / "124" / "variables")
    watcher.wait_for({124: LOADING, 123: AVAILABLE})
    shutil.rmtree(base / "124")
    watcher.wait_for({124: END, 123: AVAILABLE})
    # A version that left the aspired set gets a new load when it comes back.
    publish(TWO_VERSIONS / "00000124", base, 124)
    watcher.wait_for({124: AVAILABLE, 123: END})
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel(server))
    assert served_version(stub, predict_request()) == 124
    watcher.assert_tf_serving_sequences()


def test_removing_the_only_version_unloads_the_model(serve, channel, tmp_path):
    base = half_plus_two_base(tmp_path, 123)
    server = serve(model_base_path=str(base), file_system_poll_wait_seconds=POLL_SECONDS)
    watcher = StatusWatcher(channel(server))
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel(server))
    assert served_version(stub, predict_request()) == 123
    shutil.rmtree(base / "123")
    final = watcher.wait_for({123: END})

    assert status_summary(final) == [(123, END, 0)]
    with pytest.raises(grpc.RpcError) as raised:
        stub.Predict(predict_request(), RPC_TIMEOUT)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert raised.value.details() == "Servable not found for request: Latest(default)"
    watcher.assert_tf_serving_sequences()


@pytest.mark.parametrize("policy", ["all", "latest"])
def test_removing_the_served_version_falls_back_without_failures(serve, channel, tmp_path,
                                                                 policy):
    base = half_plus_two_base(tmp_path, 123, 124)
    server = serve_policy(serve, tmp_path, base, policy)
    watcher = StatusWatcher(channel(server))
    if policy == "all":
        assert watcher.states() == {124: AVAILABLE, 123: AVAILABLE}
    else:
        assert watcher.states() == {124: AVAILABLE}  # 123 was never aspired
    with PredictLoad(channel(server), predict_request()) as load:
        load.wait_for_version(124)
        shutil.rmtree(base / "124")
        # latest{1}: 123 becomes aspired and loads; 124 serves until then.
        final = watcher.wait_for({124: END, 123: AVAILABLE})
        load.wait_for_version(123)

    assert load.errors == []
    for client in load.clients:
        assert switches(client.versions) == [124, 123]
    assert status_summary(final) == [(124, END, 0), (123, AVAILABLE, 0)]
    watcher.assert_tf_serving_sequences()


def test_unload_waits_for_in_flight_requests(serve, channel, tmp_path, slow_model):
    base = tmp_path / "slow"
    copy_tree(slow_model, base / "1")
    server = serve(model_base_path=str(base), file_system_poll_wait_seconds=POLL_SECONDS)
    watcher = StatusWatcher(channel(server))
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel(server))
    staged = copy_tree(slow_model, base / "incoming-2")
    in_flight = [stub.Predict.future(predict_request(delay=3.5), RPC_TIMEOUT) for _ in range(3)]
    try:
        # Sent after the slow calls on the same channel: once it returns, they are running.
        assert served_version(stub, predict_request(delay=0.0)) == 1
        staged.rename(base / "2")
        # Version 1 stays UNLOADING while the slow calls run; new calls already get 2.
        watcher.wait_for({2: AVAILABLE, 1: UNLOADING})
        assert served_version(stub, predict_request(delay=0.0)) == 2
        responses = [call.result() for call in in_flight]
    finally:
        for call in in_flight:
            call.cancel()
    watcher.wait_for({2: AVAILABLE, 1: END})

    for response in responses:
        assert response.model_spec.version.value == 1
        assert list(response.outputs["y"].float_val) == [3.0]
    watcher.assert_tf_serving_sequences()


def test_poll_wait_zero_loads_once(serve, channel, tmp_path):
    """(A negative wait never polls: test_cli's start-up test.)"""
    servers = {}
    for name, seconds in (("periodic", POLL_SECONDS), ("once", 0)):
        base = half_plus_two_base(tmp_path / name, 123)
        servers[name] = (base, serve(model_base_path=str(base),
                                     file_system_poll_wait_seconds=seconds))
    for base, _ in servers.values():
        publish(TWO_VERSIONS / "00000124", base, 124)
    # The periodic server sees 124, then (at least one poll period later) a 125.
    base, server = servers["periodic"]
    periodic = StatusWatcher(channel(server))
    periodic.wait_for({124: AVAILABLE, 123: END})
    publish(TWO_VERSIONS / "00000124", base, 125)
    periodic.wait_for({125: AVAILABLE, 124: END})

    _, server = servers["once"]
    assert StatusWatcher(channel(server)).states() == {123: AVAILABLE}
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel(server))
    assert served_version(stub, predict_request()) == 123


def test_slow_load_does_not_block_other_models(serve, channel, tmp_path, slow_model):
    slow_base = tmp_path / "slow"
    copy_tree(slow_model, slow_base / "1")
    fast_base = half_plus_two_base(tmp_path, 123)
    config = write_config(tmp_path / "models.config", {"slow": slow_base, "fast": fast_base})
    server = serve(model_config_file=config, file_system_poll_wait_seconds=POLL_SECONDS)
    watcher = StatusWatcher(channel(server))
    slow_stub = prediction_service_pb2_grpc.PredictionServiceStub(channel(server))
    # Version 2 warms up for 2 s (its warmup request sleeps) before it may serve.
    staged = copy_tree(slow_model, slow_base / "incoming-2")
    write_warmup(staged, predict_request("slow", delay=2.0))

    with PredictLoad(channel(server), predict_request("fast"), clients=2) as load:
        load.wait_for_version(123)
        staged.rename(slow_base / "2")
        watcher.wait_for({2: LOADING, 1: AVAILABLE}, "slow")
        loading_from = time.monotonic()
        assert served_version(slow_stub, predict_request("slow", delay=0.0)) == 1
        watcher.wait_for({2: AVAILABLE, 1: END}, "slow")
        loading_until = time.monotonic()

    assert loading_until - loading_from > 1.5
    during_load = [finished - started for client in load.clients
                   for started, finished in client.calls
                   if started >= loading_from and finished <= loading_until]
    assert load.errors == []
    assert len(during_load) >= 10
    assert max(during_load) < 1.0  # far below the 2 s the other model takes to load
    assert served_version(slow_stub, predict_request("slow", delay=0.0)) == 2
    watcher.assert_tf_serving_sequences()


def test_stop_ends_a_start_up_still_waiting_for_a_version(tmp_path, caplog):
    """An embedding application may stop a server whose start() still waits for a model."""
    from pyserving.server import ModelServer, ServerOptions
    from pyserving.server.errors import ServingError

    server = ModelServer(ServerOptions(port=0, model_base_path=str(tmp_path / "later"),
                                       file_system_poll_wait_seconds=POLL_SECONDS),
                         host="127.0.0.1")
    errors: list[ServingError] = []

    def start() -> None:
        try:
            server.start()
        except ServingError as error:
            errors.append(error)

    starting = threading.Thread(target=start)
    starting.start()
    try:
        wait_until(lambda: "Could not find base path" in caplog.text, "a poll of the base path")
        assert starting.is_alive() and not server.serving
    finally:
        server.stop(grace=None)
        starting.join(10)
    assert not starting.is_alive()
    assert [error.code for error in errors] == [grpc.StatusCode.UNAVAILABLE]
