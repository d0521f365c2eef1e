"""--enable_batching over real channels: what callers get back when their requests share a call.

The test model reports what TensorFlow saw: each signature returns, per row, the batch size of
the call ("batch") and the call's number from a counter variable ("call"), so batching is
observed from responses alone. Expected texts come from TF Serving's server.cc,
bundle_factory_util.cc, batching_session.cc and TensorFlow's shared_batch_scheduler.h.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.example import example_pb2
from tensorflow.python.data.experimental.ops import testing as tf_data_testing
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from pyserving.client.tensors import fill_tensor_proto, ndarray_from_tensor_proto
from pyserving.server.errors import ServingError
from support import TESTDATA, free_port, requests_in_flight, wait_until

TIMEOUT = 10.0
SLOW_CALL_SECONDS = 0.4  # the "slow" signature's sleep
QUEUE_FULL = "The batch scheduling queue to which this task was submitted is full"
WITHOUT_ENABLE_BATCHING = ("server_options.batching_parameters_file is set without setting "
                           "server_options.enable_batching to true.")

Stub = prediction_service_pb2_grpc.PredictionServiceStub
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
END = get_model_status_pb2.ModelVersionStatus.END


# --- the test model ------------------------------------------------------------------------


class _Rows(tf.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = tf.Variable(0, dtype=tf.int64)

    def _seen(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        rows = tf.shape(x)[0]
        return {"batch": tf.fill([rows], rows), "call": tf.fill([rows], self.calls.assign_add(1))}

    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32)])
    def rows(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        tf.debugging.assert_non_negative(x, message="x must be non-negative")
        return {"y": x * 10.0, **self._seen(x)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
    def total(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"total": tf.reduce_sum(x)}

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32)])
    def ragged(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"row_sum": tf.reduce_sum(x, axis=1), "echo": tf.identity(x), **self._seen(x)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
    def slow(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        # The sleep dataset sleeps before the element and again before end-of-sequence.
        slept = tf.data.Dataset.from_tensors(x).apply(
            tf_data_testing.sleep(int(SLOW_CALL_SECONDS * 5e5)))
        return {"y": slept.get_single_element() * 2.0, **self._seen(x)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
    def nap(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        # Sleeps max(x) seconds in all (in two halves, as in slow).
        micros = tf.cast(tf.reduce_max(x) * 5e5, tf.int64)
        slept = tf.data.Dataset.from_tensors(x).apply(tf_data_testing.sleep(micros))
        return {"y": slept.get_single_element() * 2.0, **self._seen(x)}


@pytest.fixture(scope="module")
def rows_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Version 1 of the test model: signatures serving_default (y = 10 x on [n, 2]), total
    (a scalar sum), ragged ([n, m]: row_sum and echo), slow (y = 2 x after a 0.4 s sleep) and
    nap (y = 2 x after sleeping max(x) seconds)."""
    module = _Rows()
    path = tmp_path_factory.mktemp("rows") / "1"
    tf.saved_model.save(module, str(path), signatures={
        "serving_default": module.rows, "total": module.total, "ragged": module.ragged,
        "slow": module.slow, "nap": module.nap})
    return path


@pytest.fixture
def rows_base(rows_model: Path, tmp_path: Path) -> Path:
    """A base path of its own holding version 1 of the test model."""
    base = tmp_path / "rows"
    shutil.copytree(rows_model, base / "1")
    return base


def parameters(tmp_path: Path, text: str, name: str = "batching.txt") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.fixture
def batching_server(serve: Callable[..., object], rows_base: Path, tmp_path: Path
                    ) -> Callable[[str], object]:
    """A server of the test model with --enable_batching and these BatchingParameters,
    waiting for full batches as TF Serving does: requests sent together reach the server one
    by one, and these tests check how batches form once they share one (the early close of a
    batch nothing can join is tested in test_batcher_early_close.py and
    test_batching_low_load.py)."""

    def start(text: str, **options: object) -> object:
        options.setdefault("batching_wait_for_full_batch", True)
        return serve(model_base_path=str(rows_base), enable_batching=True,
                     batching_parameters_file=parameters(tmp_path, text), grpc_max_threads=32,
                     **options)

    return start


# --- requests ------------------------------------------------------------------------------


def stub_for(server: object, channel_to: Callable[[str], grpc.Channel]) -> Stub:
    return Stub(channel_to(server.grpc_target))


def request_for(x: np.ndarray, signature: str = "") -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "default"
    request.model_spec.signature_name = signature
    fill_tensor_proto(request.inputs["x"], np.asarray(x, np.float32))
    return request


def outputs_of(response: predict_pb2.PredictResponse) -> dict[str, np.ndarray]:
    return {key: ndarray_from_tensor_proto(proto) for key, proto in response.outputs.items()}


def rows_of(caller: int, size: int) -> np.ndarray:
    """Rows no other caller sends: caller 3, size 2 -> [[30, 1030], [31, 1031]]."""
    first = np.arange(caller * 10, caller * 10 + size, dtype=np.float32)
    return np.stack([first, first + 1000], axis=1)


def rest_predict_row(server: object, caller: int) -> dict:
    """POST the caller's one row to the server's REST predict; its one prediction."""
    body = json.dumps({"instances": rows_of(caller, 1).tolist()}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.rest_port}/v1/models/default:predict", data=body)
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        return json.loads(response.read())["predictions"][0]


def predict_all(stub: Stub, requests: Sequence[predict_pb2.PredictRequest],
                timeout: float = TIMEOUT) -> list[dict[str, np.ndarray]]:
    """Send every request at once; the outputs in request order (raises the first error)."""
    futures = [stub.Predict.future(request, timeout) for request in requests]
    return [outputs_of(future.result()) for future in futures]


def rpc_error(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value.code(), raised.value.details()


def start_error(start: Callable[[], object]) -> ServingError:
    with pytest.raises(ServingError) as raised:
        start()
    return raised.value


# --- batching and isolation ----------------------------------------------------------------


def test_concurrent_requests_share_calls_and_get_exactly_their_own_rows(batching_server,
                                                                       channel_to):
    server = batching_server("max_batch_size { value: 8 }\n"
                             "batch_timeout_micros { value: 100000 }\n"
                             "num_batch_threads { value: 2 }\n")
    stub = stub_for(server, channel_to)
    sizes = [1 + caller % 3 for caller in range(12)]
    inputs = [rows_of(caller, size) for caller, size in enumerate(sizes)]
    results = predict_all(stub, [request_for(x) for x in inputs])

    rows_per_call: dict[int, int] = {}
    batch_per_call: dict[int, int] = {}
    for x, result in zip(inputs, results, strict=False):
        np.testing.assert_array_equal(result["y"], x * 10)
        assert len(set(result["call"].tolist())) == 1 and len(set(result["batch"].tolist())) == 1
        call = int(result["call"][0])
        rows_per_call[call] = rows_per_call.get(call, 0) + len(x)
        batch_per_call[call] = int(result["batch"][0])
    # Each call ran exactly the rows of the requests it answered, never more than 8.
    assert rows_per_call == batch_per_call
    assert max(batch_per_call.values()) <= 8
    assert len(rows_per_call) < len(inputs)


def test_requests_filtering_the_same_outputs_share_calls(batching_server, channel_to):
    # TF Serving batches them too: a run whose outputs are not a whole signature gets a queue
    # of its own from WrapSessionForBatching's default scheduler creator (batching_session.cc
    # InternalRun), with the same options and size limit.
    stub = stub_for(batching_server("max_batch_size { value: 4 }\n"
                                    "batch_timeout_micros { value: 200000 }\n"), channel_to)
    requests = [request_for(rows_of(caller, 1)) for caller in range(3)]
    for request in requests:
        request.output_filter.extend(["y", "batch"])
    results = predict_all(stub, requests)
    for caller, result in enumerate(results):
        assert sorted(result) == ["batch", "y"]
        np.testing.assert_array_equal(result["y"], rows_of(caller, 1) * 10)
        assert result["batch"].tolist() == [3]
    oversized = request_for(rows_of(1, 5))
    oversized.output_filter.append("y")
    assert rpc_error(lambda: stub.Predict(oversized, TIMEOUT)) == (
        grpc.StatusCode.INVALID_ARGUMENT, "Task size 5 is larger than maximum input batch size 4")


def test_waiting_requests_hold_no_thread_so_batches_outgrow_grpc_max_threads(
        serve, rows_base, tmp_path, channel_to):
    server = serve(model_base_path=str(rows_base), enable_batching=True, grpc_max_threads=2,
                   batching_wait_for_full_batch=True,
                   batching_parameters_file=parameters(
                       tmp_path, "max_batch_size { value: 16 }\n"
                                 "batch_timeout_micros { value: 300000 }\n"))
    stub = stub_for(server, channel_to)
    inputs = [rows_of(caller, 1) for caller in range(16)]
    results = predict_all(stub, [request_for(x) for x in inputs])
    for x, result in zip(inputs, results, strict=False):
        np.testing.assert_array_equal(result["y"], x * 10)
    assert max(int(result["batch"][0]) for result in results) > 2


def test_every_other_rpc_still_answers_on_a_batching_server(batching_server, channel_to):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from tensorflow_serving.apis import get_model_metadata_pb2

    channel = channel_to(batching_server("max_batch_size { value: 4 }\n").grpc_target)
    metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    metadata.model_spec.name = "default"
    assert Stub(channel).GetModelMetadata(metadata, timeout=TIMEOUT).model_spec.version.value == 1
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "default"
    response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status,
                                                                               timeout=TIMEOUT)
    assert response.model_version_status[0].state == AVAILABLE
    code, message = rpc_error(lambda: Stub(channel).GetModelMetadata(
        get_model_metadata_pb2.GetModelMetadataRequest(), timeout=TIMEOUT))
    assert (code, message) == (grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(service="default"),
                        timeout=TIMEOUT).status == health_pb2.HealthCheckResponse.SERVING
    code, message = rpc_error(lambda: Stub(channel).Predict(predict_pb2.PredictRequest(),
                                                            timeout=TIMEOUT))
    assert (code, message) == (grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")


def test_rest_requests_are_batched_too(serve, rows_base, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    server = serve(model_base_path=str(rows_base), enable_batching=True, grpc_max_threads=8,
                   batching_wait_for_full_batch=True,
                   rest_api_port=free_port(), batching_parameters_file=parameters(
                       tmp_path, "max_batch_size { value: 8 }\n"
                                 "batch_timeout_micros { value: 200000 }\n"))

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda caller: rest_predict_row(server, caller), range(6)))
    for caller, result in enumerate(results):
        assert result["y"] == (rows_of(caller, 1)[0] * 10).tolist()
    assert max(result["batch"] for result in results) > 1


def test_tf_serving_batching_config_file_serves(testdata_model, serve, channel_to):
    server = serve(model_base_path=testdata_model("saved_model_half_plus_two_cpu"),
                   enable_batching=True,
                   batching_parameters_file=str(TESTDATA / "batching_config.txt"))
    stub = stub_for(server, channel_to)
    requests = [request_for(np.array([[value]])) for value in range(6)]
    for value, result in enumerate(predict_all(stub, requests)):
        np.testing.assert_array_equal(result["y"], [[value / 2 + 2]])


def test_batch_is_padded_to_an_allowed_size_and_the_padding_dropped(batching_server,
                                                                  channel_to):
    server = batching_server("max_batch_size { value: 8 }\n"
                             "allowed_batch_sizes: 2 allowed_batch_sizes: 4 "
                             "allowed_batch_sizes: 8\n")
    stub = stub_for(server, channel_to)
    for size, padded in ((1, 2), (3, 4), (4, 4), (5, 8), (8, 8)):
        x = rows_of(size, size)
        result = outputs_of(stub.Predict(request_for(x), TIMEOUT))
        np.testing.assert_array_equal(result["y"], x * 10)
        np.testing.assert_array_equal(result["batch"], [padded] * size)


SPLITTING = "enable_large_batch_splitting { value: true }\n"


@pytest.mark.parametrize("text, message", [
    ("max_batch_size { value: 8 }\nallowed_batch_sizes: [4, 2, 8]\n",
     "allowed_batch_sizes entries must be monotonically increasing"),
    ("max_batch_size { value: 8 }\nallowed_batch_sizes: [2, 4]\n",
     "Last entry in allowed_batch_sizes must match max_batch_size; last entry was 4; "
     "expected 8"),
    ("batch_timeout_micros { value: -1 }\n",
     "batch_timeout_micros must be non-negative; was -1"),
    ("max_batch_size { value: 0 }\n", "input_batch_size_limit must be positive; was 0"),
    (SPLITTING + "max_enqueued_batches { value: 0 }\n",
     "max_enqueued_batches must be positive; was 0"),
    (SPLITTING + "max_batch_size { value: 8 }\nmax_execution_batch_size { value: 16 }\n",
     "When enable_large_batch_splitting is true, input_batch_size_limit must be greater than "
     "or equal to max_execution_batch_size; input_batch_size_limit was 8, "
     "max_execution_batch_size 16"),
    ("max_batch_size { value: -1 }\n", "input_batch_size_limit must be positive; was -1"),
    ("max_enqueued_batches { value: -2 }\n", "max_enqueued_batches must be positive; was -2"),
], ids=["allowed sizes decrease", "last allowed size", "negative timeout", "max_batch_size 0",
        "max_enqueued_batches 0 with splitting", "execution size over max_batch_size",
        "negative max_batch_size", "negative max_enqueued_batches"])
def test_invalid_queue_options_fail_the_load(batching_server, text, message):
    # TF Serving checks them when it wraps a loading version's session for batching
    # (bundle_factory_util.cc, SharedBatchScheduler::AddQueue), not when it reads the file.
    error = start_error(lambda: batching_server(text, max_num_load_retries=0))
    assert (error.code, error.message) == (grpc.StatusCode.UNKNOWN, load_failure(message))


def load_failure(message: str, name: str = "default", what: str = "servable") -> str:
    """ServerCore's text for one version of ``name`` failing to load with INVALID_ARGUMENT."""
    return (f"1 {what}(s) did not become available: {{{{{{name: {name} version: 1}} due to "
            f"error: INVALID_ARGUMENT: {message}}}, }}")


def test_command_line_reports_a_failed_load_after_its_retries(rows_base, tmp_path):
    path = parameters(tmp_path, "batch_timeout_micros { value: -1 }\n")
    process = subprocess.run(
        [sys.executable, "-m", "pyserving.server", "--port=0", "--enable_batching",
         f"--model_base_path={rows_base}", f"--batching_parameters_file={path}",
         "--max_num_load_retries=1", "--load_retry_interval_micros=1000"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert process.returncode == 255
    assert "Failed to start server. Error: UNKNOWN: " + load_failure(
        "batch_timeout_micros must be non-negative; was -1") in process.stdout


def test_zero_batch_threads_fail_start_up(batching_server):
    # SharedBatchScheduler::Create: the server's one pool, made before any model loads.
    error = start_error(lambda: batching_server("num_batch_threads { value: 0 }\n"))
    assert (error.code, error.message) == (grpc.StatusCode.INVALID_ARGUMENT,
                                           "num_batch_threads must be positive; was 0")


def test_request_larger_than_max_batch_size_is_rejected(batching_server, channel_to):
    stub = stub_for(batching_server("max_batch_size { value: 8 }\n"), channel_to)
    code, details = rpc_error(lambda: stub.Predict(request_for(rows_of(1, 9)), TIMEOUT))
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT,
                               "Task size 9 is larger than maximum input batch size 8")
    result = outputs_of(stub.Predict(request_for(rows_of(1, 8)), TIMEOUT))
    np.testing.assert_array_equal(result["y"], rows_of(1, 8) * 10)


def test_large_batch_splitting_runs_a_request_in_parts(batching_server, channel_to):
    # As in TF Serving, max_batch_size still bounds a request; max_execution_batch_size
    # bounds what one call runs.
    stub = stub_for(batching_server("max_batch_size { value: 16 }\n"
                                    "enable_large_batch_splitting { value: true }\n"
                                    "max_execution_batch_size { value: 4 }\n"), channel_to)
    x = rows_of(2, 9)
    result = outputs_of(stub.Predict(request_for(x), TIMEOUT))
    np.testing.assert_array_equal(result["y"], x * 10)
    assert result["batch"].max() <= 4
    assert len(set(result["call"].tolist())) == 3  # 4 + 4 + 1 rows
    code, details = rpc_error(lambda: stub.Predict(request_for(rows_of(1, 17)), TIMEOUT))
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT,
                               "Task size 17 is larger than maximum input batch size 16")


def test_a_split_request_first_fills_the_open_batch(batching_server, channel_to):
    # TF's SplitInputBatchIntoSubtasks: the first part takes what the open batch has left.
    server = batching_server("max_batch_size { value: 16 }\n"
                             "batch_timeout_micros { value: 300000 }\n"
                             "enable_large_batch_splitting { value: true }\n"
                             "max_execution_batch_size { value: 4 }\n")
    stub = stub_for(server, channel_to)
    first = stub.Predict.future(request_for(rows_of(1, 1)), TIMEOUT)
    wait_until(lambda: queued(server) == 1, "the first request in the open batch")
    result = outputs_of(stub.Predict(request_for(rows_of(2, 5)), TIMEOUT))
    np.testing.assert_array_equal(result["y"], rows_of(2, 5) * 10)
    assert result["batch"].tolist() == [4, 4, 4, 2, 2]
    assert outputs_of(first.result())["batch"].tolist() == [4]


# --- backpressure, deadlines and cancellation ------------------------------------------------


def queued(server: Any) -> int:
    """Requests waiting in the batch queues of the test model."""
    return server.batcher.queue_depths().get("default", 0)


def taken(server: Any, count: int = 1) -> bool:
    """Whether ``count`` Predict requests reached the server and none of them waits in a
    queue: the batch threads took them (a request is enqueued in the same event-loop step
    that counts it in, so any later request queues behind it)."""
    return requests_in_flight(server, "default") == count and queued(server) == 0


SINGLE_SLOW_QUEUE = ("max_batch_size { value: 1 }\n"
                     "batch_timeout_micros { value: 0 }\n"
                     "num_batch_threads { value: 1 }\n")


@pytest.mark.parametrize("enqueued", [1, 0], ids=["1", "0 runs as 1"])
def test_full_queue_fails_fast_with_unavailable(batching_server, channel_to, enqueued):
    # Without splitting, SharedBatchScheduler::AddQueue rewrites max_enqueued_batches 0 to 1.
    stub = stub_for(batching_server(SINGLE_SLOW_QUEUE +
                                    f"max_enqueued_batches {{ value: {enqueued} }}\n"),
                    channel_to)
    started = time.monotonic()
    finished: dict[int, float] = {}
    futures = []
    for caller in range(6):
        future = stub.Predict.future(request_for([caller], "slow"), TIMEOUT)
        future.add_done_callback(lambda _, caller=caller: finished.setdefault(
            caller, time.monotonic() - started))
        futures.append(future)
    succeeded, failed = [], []
    for caller, future in enumerate(futures):
        if future.exception() is None:
            np.testing.assert_array_equal(outputs_of(future.result())["y"], [caller * 2])
            succeeded.append(finished[caller])
        else:
            assert (future.code(), future.details()) == (
                grpc.StatusCode.UNAVAILABLE,
                f"{QUEUE_FULL}; currently 1 batches enqueued and max_enqueued_batches is 1")
            failed.append(finished[caller])
    # One batch runs and one waits; the rest are refused before any call finishes.
    assert 1 <= len(succeeded) <= 2 and len(failed) >= 4
    assert max(failed) < min(succeeded)
    assert min(succeeded) >= SLOW_CALL_SECONDS * 0.9


def test_expired_or_cancelled_requests_are_dropped_from_the_queue(batching_server, channel_to):
    server = batching_server(SINGLE_SLOW_QUEUE)
    stub = stub_for(server, channel_to)
    running = stub.Predict.future(request_for([1], "slow"), TIMEOUT)
    # The first call runs; everything below waits behind it, enqueued in this order.
    wait_until(lambda: taken(server), "the first call to run")
    expiring = stub.Predict.future(request_for([2], "slow"), 0.15)
    wait_until(lambda: queued(server) == 1, "the second request to queue")
    cancelled = stub.Predict.future(request_for([3], "slow"), TIMEOUT)
    wait_until(lambda: queued(server) == 2, "the third request to queue")
    last = stub.Predict.future(request_for([4], "slow"), TIMEOUT)
    wait_until(lambda: queued(server) == 3, "the fourth request to queue")
    cancelled.cancel()

    assert outputs_of(running.result())["call"].tolist() == [1]
    assert expiring.exception().code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert cancelled.cancelled()
    result = outputs_of(last.result())
    assert result["y"].tolist() == [8.0]
    assert result["call"].tolist() == [2]  # the expired and the cancelled request never ran


def test_split_request_that_does_not_fit_is_refused_whole(batching_server, channel_to):
    server = batching_server("max_batch_size { value: 8 }\n"
                             "enable_large_batch_splitting { value: true }\n"
                             "max_execution_batch_size { value: 2 }\n"
                             "max_enqueued_batches { value: 2 }\n"
                             "num_batch_threads { value: 1 }\n")
    stub = stub_for(server, channel_to)
    running = stub.Predict.future(request_for([1], "slow"), TIMEOUT)
    wait_until(lambda: taken(server), "the first call to run")
    # Six rows need three batches of two; only two may be enqueued, the open one empty.
    code, details = rpc_error(lambda: stub.Predict(request_for(np.arange(6), "slow"), TIMEOUT))
    assert (code, details) == (grpc.StatusCode.UNAVAILABLE, f"{QUEUE_FULL}; task size is 6 but "
                               "scheduling capacity is only 4 (num_enqueued_batches=1, "
                               "max_enqueued_batches=2, open_batch_size=0, "
                               "max_execution_batch_size=2)")
    result = outputs_of(stub.Predict(request_for([5], "slow"), TIMEOUT))
    assert outputs_of(running.result())["call"].tolist() == [1]
    assert result["call"].tolist() == [2]  # no part of the refused request ran


# --- signatures that cannot be concatenated --------------------------------------------------


def test_scalar_output_signature_runs_unbatched(batching_server, channel_to):
    stub = stub_for(batching_server("batch_timeout_micros { value: 100000 }\n"), channel_to)
    inputs = [np.arange(caller + 1, dtype=np.float32) for caller in range(5)]
    results = predict_all(stub, [request_for(x, "total") for x in inputs])
    assert [float(result["total"]) for result in results] == [float(x.sum()) for x in inputs]
    assert all(result["total"].shape == () for result in results)


def test_inputs_of_different_shapes_are_not_concatenated(batching_server, channel_to):
    stub = stub_for(batching_server("batch_timeout_micros { value: 200000 }\n"), channel_to)
    wide, narrow, also_wide = [[1, 2, 3]], [[5, 6], [7, 8], [9, 10]], [[4, 5, 6]]
    results = predict_all(stub, [request_for(x, "ragged") for x in (wide, narrow, also_wide)])
    for x, result, batch in zip((wide, narrow, also_wide), results, (2, 3, 2), strict=False):
        np.testing.assert_array_equal(result["echo"], x)
        np.testing.assert_array_equal(result["row_sum"], np.sum(x, axis=1))
        assert result["batch"].tolist() == [batch] * len(x)
    # The two [1, 3] requests shared a call; the [3, 2] one ran on its own.
    assert results[0]["call"][0] == results[2]["call"][0] != results[1]["call"][0]


def test_pad_variable_length_inputs_pads_with_the_first_element(batching_server, channel_to):
    stub = stub_for(batching_server("batch_timeout_micros { value: 200000 }\n"
                                    "pad_variable_length_inputs: true\n"), channel_to)
    wide, narrow = [[1, 2, 3]], [[5, 6]]
    results = predict_all(stub, [request_for(x, "ragged") for x in (wide, narrow)])
    assert results[0]["call"][0] == results[1]["call"][0]
    assert [result["batch"].tolist() for result in results] == [[2], [2]]
    np.testing.assert_array_equal(results[0]["echo"], wide)
    np.testing.assert_array_equal(results[0]["row_sum"], [6])
    # As TF Serving: the narrow request is padded with its own first element, and gets the
    # padded width back.
    np.testing.assert_array_equal(results[1]["echo"], [[5, 6, 5]])
    np.testing.assert_array_equal(results[1]["row_sum"], [16])


def test_failing_request_fails_alone(batching_server, channel_to, caplog):
    caplog.set_level(logging.INFO, logger="pyserving.server.batching.batcher")
    stub = stub_for(batching_server("batch_timeout_micros { value: 200000 }\n"), channel_to)
    inputs = [rows_of(caller, 2) for caller in range(4)]
    inputs[2] = -inputs[2] - 1
    futures = [stub.Predict.future(request_for(x), TIMEOUT) for x in inputs]
    for caller, (x, future) in enumerate(zip(inputs, futures, strict=False)):
        if caller == 2:
            assert future.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "x must be non-negative" in future.details()
        else:
            np.testing.assert_array_equal(outputs_of(future.result())["y"], x * 10)
    # The bad request did share a batch: the batch failed and was re-run request by request.
    assert any(re.match(r"batch of [2-4] failed", record.getMessage())
               for record in caplog.records)


# --- Classify and Regress --------------------------------------------------------------------


def examples_of(values: Sequence[float]) -> list[example_pb2.Example]:
    examples = []
    for value in values:
        example = example_pb2.Example()
        example.features.feature["x"].float_list.value.append(value)
        examples.append(example)
    return examples


def test_classify_and_regress_are_batched_per_caller(testdata_model, serve, tmp_path,
                                                      channel_to):
    server = serve(model_base_path=testdata_model("saved_model_half_plus_two_cpu"),
                   enable_batching=True, grpc_max_threads=32, batching_wait_for_full_batch=True,
                   batching_parameters_file=parameters(
                       tmp_path, "batch_timeout_micros { value: 100000 }\n"))
    batches: list[tuple[str, int, int, list[float]]] = []
    server.batcher._observers.append(lambda *batch: batches.append(batch))
    stub = stub_for(server, channel_to)
    values = [[10.0 * caller + i for i in range(1 + caller % 3)] for caller in range(8)]
    classify, regress = [], []
    for xs in values:
        request = classification_pb2.ClassificationRequest()
        request.model_spec.name = "default"
        request.model_spec.signature_name = "classify_x_to_y"
        request.input.example_list.examples.extend(examples_of(xs))
        classify.append(stub.Classify.future(request, TIMEOUT))
        request = regression_pb2.RegressionRequest()
        request.model_spec.name = "default"
        request.model_spec.signature_name = "regress_x_to_y"
        request.input.example_list.examples.extend(examples_of(xs))
        regress.append(stub.Regress.future(request, TIMEOUT))
    for xs, classified, regressed in zip(values, classify, regress, strict=False):
        expected = [x / 2 + 2 for x in xs]
        scores = [c.classes[0].score for c in classified.result().result.classifications]
        assert scores == expected
        assert [r.value for r in regressed.result().result.regressions] == expected

    # The metrics hook: per TensorFlow call, the model, its rows, the padded rows and every
    # request's time in the queue.
    assert sum(size for _, size, _, _ in batches) == 2 * sum(len(xs) for xs in values)
    assert len(batches) < 2 * len(values)
    for model, size, padded, waits in batches:
        assert model == "default" and padded == size
        assert 1 <= len(waits) <= size and all(0 <= wait < TIMEOUT for wait in waits)
        assert max(waits) >= 0.09  # the first request of a batch waits for the timeout


# --- start-up and per-model parameters -------------------------------------------------------


def test_batching_parameters_file_without_enable_batching_fails_start_up(serve, rows_base,
                                                                        tmp_path):
    path = parameters(tmp_path, "max_batch_size { value: 8 }\n")
    error = start_error(lambda: serve(model_base_path=str(rows_base),
                                      batching_parameters_file=path))
    assert (error.code, error.message) == (grpc.StatusCode.INVALID_ARGUMENT,
                                           WITHOUT_ENABLE_BATCHING)


def test_command_line_reports_the_batching_flag_error_without_a_traceback(rows_base, tmp_path):
    path = parameters(tmp_path, "max_batch_size { value: 8 }\n")
    process = subprocess.run(
        [sys.executable, "-m", "pyserving.server", "--port=0",
         f"--model_base_path={rows_base}", f"--batching_parameters_file={path}"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert process.returncode == 255
    assert f"Failed to start server. Error: INVALID_ARGUMENT: {WITHOUT_ENABLE_BATCHING}" \
        in process.stdout
    assert "Traceback" not in process.stderr


def test_malformed_batching_parameters_fail_start_up(batching_server, tmp_path, caplog):
    error = start_error(lambda: batching_server("max_batch_size: 8\n"))
    # Exactly TF Serving's ParseProtoTextFile text; the parser's reason only in the log.
    assert (error.code, error.message) == (grpc.StatusCode.INVALID_ARGUMENT,
                                           f"Invalid protobuf file: '{tmp_path / 'batching.txt'}'")
    assert "max_batch_size" in caplog.text


def test_per_model_batching_parameters_come_from_the_version_directory(batching_server,
                                                                       rows_base, channel_to):
    # TF Serving ignores a per-model num_batch_threads: the pool is the server's.
    (rows_base / "1" / "batching_params.pbtxt").write_text("max_batch_size { value: 2 }\n"
                                                           "num_batch_threads { value: 0 }\n")
    stub = stub_for(batching_server("max_batch_size { value: 8 }\n",
                                    enable_per_model_batching_parameters=True), channel_to)
    code, details = rpc_error(lambda: stub.Predict(request_for(rows_of(1, 3)), TIMEOUT))
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT,
                               "Task size 3 is larger than maximum input batch size 2")
    result = outputs_of(stub.Predict(request_for(rows_of(1, 2)), TIMEOUT))
    np.testing.assert_array_equal(result["y"], rows_of(1, 2) * 10)


def test_per_model_parameters_without_a_file_leave_the_model_unbatched(batching_server,
                                                                       channel_to):
    # TF Serving wraps a session for batching only when its batching_params.pbtxt exists.
    stub = stub_for(batching_server("max_batch_size { value: 2 }\n"
                                    "batch_timeout_micros { value: 100000 }\n",
                                    enable_per_model_batching_parameters=True), channel_to)
    results = predict_all(stub, [request_for(rows_of(caller, 3)) for caller in range(3)])
    for caller, result in enumerate(results):
        np.testing.assert_array_equal(result["y"], rows_of(caller, 3) * 10)
        assert result["batch"].tolist() == [3, 3, 3]


def test_malformed_per_model_parameters_fail_the_load(batching_server, rows_base):
    (rows_base / "1" / "batching_params.pbtxt").write_text("max_batch_size {\n")
    # (An empty --batching_parameters_file would fail first: TensorFlow cannot mmap 0 bytes.)
    error = start_error(lambda: batching_server("# defaults\n",
                                                enable_per_model_batching_parameters=True,
                                                max_num_load_retries=0))
    # The version fails to load; start-up reports it as ServerCore's initial load does.
    assert (error.code, error.message) == (
        grpc.StatusCode.UNKNOWN,
        "1 servable(s) did not become available: {{{name: default version: 1} due to error: "
        f"INVALID_ARGUMENT: Invalid protobuf file: '{rows_base / '1' / 'batching_params.pbtxt'}'"
        "}, }")


def test_a_reload_reports_bad_per_model_queue_options_as_the_version_status(
        batching_server, rows_base, rows_model, tmp_path, channel_to):
    other = tmp_path / "other"
    shutil.copytree(rows_model, other / "1")
    (other / "1" / "batching_params.pbtxt").write_text("batch_timeout_micros { value: -1 }\n")
    server = batching_server("# defaults\n", enable_per_model_batching_parameters=True,
                             max_num_load_retries=0)
    models = model_service_pb2_grpc.ModelServiceStub(channel_to(server.grpc_target))
    request = model_management_pb2.ReloadConfigRequest()
    for name, base in (("default", rows_base), ("other", other)):
        request.config.model_config_list.config.add(name=name, base_path=str(base),
                                                    model_platform="tensorflow")
    message = "batch_timeout_micros must be non-negative; was -1"
    code, details = rpc_error(lambda: models.HandleReloadConfigRequest(request, TIMEOUT))
    assert (code, details) == (grpc.StatusCode.UNKNOWN, load_failure(message, "other", "model"))
    status = models.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(
        model_spec={"name": "other"}), TIMEOUT)
    [failed] = status.model_version_status
    assert (failed.version, failed.state, failed.status.error_code,
            failed.status.error_message) == (1, END, grpc.StatusCode.INVALID_ARGUMENT.value[0],
                                             message)


# --- hot swap --------------------------------------------------------------------------------


def test_requests_queued_for_an_unloading_version_complete(batching_server, rows_base,
                                                           rows_model, channel_to):
    server = batching_server("batch_timeout_micros { value: 300000 }\n",
                             file_system_poll_wait_seconds=1)
    stub = stub_for(server, channel_to)
    futures = []

    def send_for(seconds: float) -> None:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            futures.append((len(futures), stub.Predict.future(
                request_for(rows_of(len(futures), 1)), TIMEOUT)))
            time.sleep(0.02)

    send_for(0.3)
    shutil.copytree(rows_model, rows_base / "incoming")
    (rows_base / "incoming").rename(rows_base / "2")
    deadline = time.monotonic() + 15
    versions: list[int] = []
    while 2 not in versions and time.monotonic() < deadline:
        send_for(0.3)
        versions = [future.result().model_spec.version.value for _, future in futures
                    if future.done() and future.exception() is None]
    send_for(0.3)

    errors = [f"{future.code().name}: {future.details()}" for _, future in futures
              if future.exception() is not None]
    assert errors == []
    versions = []
    for caller, future in futures:
        response = future.result()
        versions.append(response.model_spec.version.value)
        np.testing.assert_array_equal(outputs_of(response)["y"], rows_of(caller, 1) * 10)
    assert versions[0] == 1 and versions[-1] == 2
    assert version_states(server, channel_to, {1: END, 2: AVAILABLE}) == {1: END, 2: AVAILABLE}


def version_states(server: object, channel_to: Callable[[str], grpc.Channel],
                   expected: dict[int, int], timeout: float = TIMEOUT) -> dict[int, int]:
    """GetModelStatus's state per version, once it is ``expected`` or ``timeout`` passed."""
    stub = model_service_pb2_grpc.ModelServiceStub(channel_to(server.grpc_target))
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "default"
    until = time.monotonic() + timeout
    while True:
        response = stub.GetModelStatus(request, TIMEOUT)
        states = {status.version: status.state for status in response.model_version_status}
        if states == expected or time.monotonic() > until:
            return states
        time.sleep(0.05)


def test_a_swap_under_batched_grpc_and_rest_load_and_scrapes_fails_no_request(
        serve, rows_base, rows_model, tmp_path, channel_to):
    # Issue 15: scrapes and batch-thread wake-ups forget the idle queues of the unloading
    # version while requests still enqueue into them; none may be lost or fail.
    from concurrent.futures import ThreadPoolExecutor


    server = serve(model_base_path=str(rows_base), enable_batching=True,
                   rest_api_port=free_port(), file_system_poll_wait_seconds=1,
                   monitoring_config_file=str(TESTDATA / "monitoring_config.txt"),
                   batching_parameters_file=parameters(
                       tmp_path, "max_batch_size { value: 8 }\n"
                                 "batch_timeout_micros { value: 2000 }\n"))
    stub = stub_for(server, channel_to)
    page = f"http://127.0.0.1:{server.rest_port}/monitoring/prometheus/metrics"
    stop = threading.Event()
    failures: list[str] = []
    served: set[int] = set()

    def grpc_caller(caller: int) -> None:
        while not stop.is_set():
            try:
                response = stub.Predict(request_for(rows_of(caller, 1)), TIMEOUT)
            except grpc.RpcError as error:
                failures.append(f"gRPC {error.code().name}: {error.details()}")
                continue
            served.add(response.model_spec.version.value)
            if outputs_of(response)["y"].tolist() != (rows_of(caller, 1) * 10).tolist():
                failures.append(f"gRPC caller {caller} got another caller's rows")

    def rest_caller(caller: int) -> None:
        while not stop.is_set():
            try:
                if rest_predict_row(server, caller)["y"] != (rows_of(caller, 1)[0] * 10).tolist():
                    failures.append(f"REST caller {caller} got another caller's rows")
            except OSError as error:  # urllib's HTTPError and URLError
                failures.append(f"REST {error}")

    def scraper() -> None:
        while not stop.is_set():
            with urllib.request.urlopen(page, timeout=TIMEOUT) as response:
                response.read()

    with ThreadPoolExecutor(7) as pool:
        running = [pool.submit(grpc_caller, caller) for caller in range(3)]
        running += [pool.submit(rest_caller, caller) for caller in range(3, 6)]
        running.append(pool.submit(scraper))
        try:
            shutil.copytree(rows_model, rows_base / "incoming")
            (rows_base / "incoming").rename(rows_base / "2")
            states = version_states(server, channel_to, {1: END, 2: AVAILABLE}, timeout=30)
        finally:
            stop.set()
            for future in running:
                future.result(timeout=TIMEOUT * 2)
    assert states == {1: END, 2: AVAILABLE}
    assert failures == []
    assert served == {1, 2}


def test_stop_lets_queued_and_running_batches_finish_within_the_grace_period(batching_server,
                                                                             channel_to):
    server = batching_server(SINGLE_SLOW_QUEUE)
    stub = stub_for(server, channel_to)
    running = stub.Predict.future(request_for([1], "slow"), TIMEOUT)
    wait_until(lambda: taken(server), "the first call to run")
    waiting = stub.Predict.future(request_for([2], "slow"), TIMEOUT)
    wait_until(lambda: queued(server) == 1, "the second request to queue")
    server.stop(grace=5.0)

    assert outputs_of(running.result())["y"].tolist() == [2.0]
    assert outputs_of(waiting.result())["y"].tolist() == [4.0]
    assert not server.serving


def test_stop_after_the_grace_period_fails_what_is_left_and_returns(batching_server,
                                                                    channel_to):
    server = batching_server(SINGLE_SLOW_QUEUE)
    stub = stub_for(server, channel_to)
    futures = [stub.Predict.future(request_for([n], "slow"), TIMEOUT) for n in range(4)]
    wait_until(lambda: requests_in_flight(server, "default") == 4 and queued(server) == 3,
               "one request to run and three to queue")
    started = time.monotonic()
    server.stop(grace=0.1)

    assert time.monotonic() - started < 3.0
    codes = [future.exception().code() for future in futures if future.exception()]
    assert codes and set(codes) <= {grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE}


# --- the event loop stays free --------------------------------------------------------------


def latency_of(call: Callable[[], object]) -> float:
    started = time.monotonic()
    call()
    return time.monotonic() - started


def test_a_slow_signature_never_blocks_the_event_loop(batching_server, channel_to):
    server = batching_server("max_batch_size { value: 4 }\n")
    stub = stub_for(server, channel_to)
    for _ in range(2):
        stub.Predict(request_for([1], "slow"), TIMEOUT)
    slow = stub.Predict.future(request_for([1], "slow"), TIMEOUT)
    wait_until(lambda: taken(server), "the slow call to run")
    fast = latency_of(lambda: stub.Predict(request_for(rows_of(1, 1)), TIMEOUT))

    assert outputs_of(slow.result())["y"].tolist() == [2.0]
    assert fast < SLOW_CALL_SECONDS / 2


def test_rest_and_grpc_callers_share_batches(serve, rows_base, tmp_path, channel_to):
    from concurrent.futures import ThreadPoolExecutor

    server = serve(model_base_path=str(rows_base), enable_batching=True,
                   batching_wait_for_full_batch=True,
                   rest_api_port=free_port(), batching_parameters_file=parameters(
                       tmp_path, "max_batch_size { value: 8 }\n"
                                 "batch_timeout_micros { value: 300000 }\n"))
    stub = stub_for(server, channel_to)

    grpc_futures = [stub.Predict.future(request_for(rows_of(caller, 1)), TIMEOUT)
                    for caller in range(3)]
    with ThreadPoolExecutor(3) as pool:
        rest_results = list(pool.map(lambda caller: rest_predict_row(server, caller),
                                     range(3, 6)))
    grpc_results = [outputs_of(future.result()) for future in grpc_futures]
    for caller, result in enumerate(grpc_results):
        np.testing.assert_array_equal(result["y"], rows_of(caller, 1) * 10)
    for caller, result in enumerate(rest_results, start=3):
        assert result["y"] == (rows_of(caller, 1)[0] * 10).tolist()
    grpc_calls = {int(result["call"][0]) for result in grpc_results}
    assert grpc_calls & {result["call"] for result in rest_results}


def test_a_batch_that_breaks_unexpectedly_fails_its_callers_and_batching_goes_on(
        batching_server, channel_to, monkeypatch):
    from pyserving.server.servable import Servable

    server = batching_server("max_batch_size { value: 4 }\n")
    stub = stub_for(server, channel_to)
    stub.Predict(request_for(rows_of(1, 1)), TIMEOUT)
    stub.Predict(request_for(rows_of(2, 1)), TIMEOUT)
    run = Servable.run

    def broken(self: Servable, *args: object) -> object:
        raise RuntimeError("injected fault")

    monkeypatch.setattr(Servable, "run", broken)
    code, message = rpc_error(lambda: stub.Predict(request_for(rows_of(3, 1)), TIMEOUT))
    assert (code, message) == (grpc.StatusCode.INTERNAL, "Batch failed: injected fault")
    monkeypatch.setattr(Servable, "run", run)
    result = outputs_of(stub.Predict(request_for(rows_of(4, 1)), TIMEOUT))
    np.testing.assert_array_equal(result["y"], rows_of(4, 1) * 10)
