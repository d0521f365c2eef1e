"""Overload and deadlines over real channels: in-flight limits fail fast, deadlines bound and
skip TensorFlow runs, a cancelled caller frees its slot, a flood leaves no threads behind
(tests/test_flood_memory.py floods the CLI server with 1 MB requests).

The test model (tests/slow_models.py) counts its runs and takes as long as it is told, so run
times, and whether a request ran at all, are visible from responses.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import predict_pb2

from pyserving.client.tensors import fill_tensor_proto, ndarray_from_tensor_proto
from slow_models import MODEL, TIMEOUT, Stub, slow_base, slow_model  # noqa: F401 (fixtures)
from support import free_port, post_json, requests_in_flight, wait_until

LIMIT_MESSAGE = (f"Too many requests in flight for model {MODEL}: the limit is {{limit}} "
                 "(--max_in_flight_requests_per_model); retry later")









@pytest.fixture
def slow_server(serve: Callable[..., object], slow_base: Path  # noqa: F811 (the fixture)
                ) -> Callable[..., object]:
    """A server of the slow model (its own run counter) with these options."""

    def start(**options: object) -> object:
        options.setdefault("grpc_max_threads", 16)
        return serve(model_name=MODEL, model_base_path=str(slow_base),
                     file_system_poll_wait_seconds=0, **options)

    return start


def stub_for(server: object, channel_to: Callable[[str], grpc.Channel]) -> Stub:
    return Stub(channel_to(server.grpc_target))


def sleep_request(ms: int) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    fill_tensor_proto(request.inputs["ms"], np.array([ms], np.int64))
    return request


def spin_request(n: int) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = "spin"
    fill_tensor_proto(request.inputs["n"], np.array([n], np.int64))
    return request


def runs(stub: Stub) -> int:
    """How many times the model ran (this query does not count)."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = "calls"
    fill_tensor_proto(request.inputs["x"], np.array([0], np.int64))
    return int(ndarray_from_tensor_proto(stub.Predict(request, TIMEOUT).outputs["calls"])[0])


# --- in-flight limits ------------------------------------------------------------------------


def test_flood_over_the_limit_fails_fast_while_admitted_requests_succeed(slow_server,
                                                                         channel_to):
    server = slow_server(max_in_flight_requests_per_model=4)
    stub = stub_for(server, channel_to)
    started = time.monotonic()
    finished: dict[grpc.Future, float] = {}
    futures = [stub.Predict.future(sleep_request(1500), TIMEOUT) for _ in range(16)]
    for future in futures:
        future.add_done_callback(lambda f: finished.setdefault(f, time.monotonic() - started))
    rejected, succeeded = [], []
    for future in futures:
        if future.code() == grpc.StatusCode.UNAVAILABLE:
            rejected.append(future)
            assert future.details() == LIMIT_MESSAGE.format(limit=4)
        else:
            assert future.code() == grpc.StatusCode.OK, future.details()
            succeeded.append(future)
    assert len(succeeded) == 4 and len(rejected) == 12
    assert runs(stub) == 4  # the rejected requests never reached TensorFlow
    # Rejections came back at once, not after the admitted requests' 1.5 s run.
    assert max(finished[future] for future in rejected) < 1.0 < min(
        finished[future] for future in succeeded)
    # Every slot is free again.
    results = [stub.Predict.future(sleep_request(10), TIMEOUT) for _ in range(4)]
    assert all(future.code() == grpc.StatusCode.OK for future in results)


def test_limit_counts_grpc_and_rest_together(slow_server, channel_to):
    rest_port = free_port()
    server = slow_server(max_in_flight_requests_per_model=2, rest_api_port=rest_port)
    stub = stub_for(server, channel_to)
    url = f"http://127.0.0.1:{rest_port}/v1/models/{MODEL}:predict"
    with ThreadPoolExecutor(2) as pool:
        over_rest = pool.submit(post_json, url, {"instances": [1500]})
        over_grpc = stub.Predict.future(sleep_request(1500), TIMEOUT)
        wait_until(lambda: server.core.in_flight.in_flight(MODEL) == 2, "two requests admitted")
        assert post_json(url, {"instances": [10]}) == (
            503, {"error": LIMIT_MESSAGE.format(limit=2)})
        with pytest.raises(grpc.RpcError) as raised:
            stub.Predict(sleep_request(10), TIMEOUT)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert over_rest.result()[0] == 200
        assert over_grpc.code() == grpc.StatusCode.OK
    assert post_json(url, {"instances": [10]})[0] == 200


def test_cancelled_caller_frees_its_slot(slow_server, channel_to):
    server = slow_server(max_in_flight_requests_per_model=1)
    stub = stub_for(server, channel_to)
    running = stub.Predict.future(sleep_request(3000), TIMEOUT)
    wait_until(lambda: server.core.in_flight.in_flight(MODEL) == 1, "one request admitted")
    with pytest.raises(grpc.RpcError) as raised:
        stub.Predict(sleep_request(10), TIMEOUT)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    cancelled_at = time.monotonic()
    running.cancel()
    # The next request takes the abandoned slot although its TensorFlow run has not ended.

    def admitted() -> bool:
        try:
            stub.Predict(sleep_request(10), TIMEOUT)
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            return False
        return True

    wait_until(admitted, "the cancelled request's slot", timeout=2.0, interval=0.05)
    assert time.monotonic() - cancelled_at < 2.0


def test_default_limit_does_not_reject_64_concurrent_clients(slow_server, channel_to):
    stub = stub_for(slow_server(grpc_max_threads=64), channel_to)
    futures = [stub.Predict.future(sleep_request(300), TIMEOUT) for _ in range(64)]
    assert [future.code() for future in futures] == [grpc.StatusCode.OK] * 64


def test_grpc_max_concurrent_rpcs_is_answered_by_grpc(slow_server, channel_to):
    stub = stub_for(slow_server(grpc_max_concurrent_rpcs=3), channel_to)
    futures = [stub.Predict.future(sleep_request(1000), TIMEOUT) for _ in range(8)]
    codes = [future.code() for future in futures]
    assert codes.count(grpc.StatusCode.OK) == 3
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 5
    exhausted = next(f for f in futures if f.code() == grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert exhausted.details() == "Concurrent RPC limit exceeded!"


def test_flood_leaves_threads_bounded_and_returns_to_baseline(slow_server, channel_to):
    server = slow_server(max_in_flight_requests_per_model=8, grpc_max_threads=16)
    stub = stub_for(server, channel_to)
    stub.Predict(sleep_request(1), TIMEOUT)
    baseline = threading.active_count()
    peaks = [baseline]
    futures = [stub.Predict.future(sleep_request(200), TIMEOUT) for _ in range(400)]

    def done_sampling_threads() -> bool:
        peaks.append(threading.active_count())
        return all(future.done() for future in futures)

    wait_until(done_sampling_threads, "the flood to be answered", interval=0.01)
    peak = max(peaks)
    codes = [future.code() for future in futures]
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}
    assert codes.count(grpc.StatusCode.OK) >= 8
    # gRPC's pool (16) is the only thing that grows; nothing is queued per request.
    assert peak <= baseline + 16
    wait_until(lambda: server.core.in_flight.in_flight(MODEL) == 0, "no request admitted")
    assert threading.active_count() <= baseline + 16


# --- deadlines -------------------------------------------------------------------------------


@pytest.mark.parametrize("request_for", [lambda: spin_request(10**10),
                                         lambda: sleep_request(60_000)],
                         ids=["while_loop", "sleep"])
def test_deadline_stops_the_tensorflow_run(slow_server, channel_to, request_for):
    # One server thread: the quick request can only run once the slow run has stopped.
    server = slow_server(grpc_max_threads=1)
    stub = stub_for(server, channel_to)
    started = time.monotonic()
    slow = stub.Predict.future(request_for(), timeout=0.5)
    wait_until(lambda: requests_in_flight(server, MODEL) == 1, "the slow request to run")
    stub.Predict(sleep_request(1), TIMEOUT)
    assert slow.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 5.0


def test_request_whose_deadline_passed_while_queued_is_not_run(slow_server, channel_to):
    server = slow_server(grpc_max_threads=1)
    stub = stub_for(server, channel_to)
    before = runs(stub)
    busy = stub.Predict.future(sleep_request(800), TIMEOUT)
    wait_until(lambda: requests_in_flight(server, MODEL) == 1, "the busy request to run")
    late = stub.Predict.future(sleep_request(10), timeout=0.3)
    assert late.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert busy.code() == grpc.StatusCode.OK
    assert runs(stub) == before + 1


def test_request_cancelled_while_queued_is_not_run(slow_server, channel_to):
    server = slow_server(grpc_max_threads=1)
    stub = stub_for(server, channel_to)
    before = runs(stub)
    busy = stub.Predict.future(sleep_request(800), TIMEOUT)
    wait_until(lambda: requests_in_flight(server, MODEL) == 1, "the busy request to run")
    gone = stub.Predict.future(sleep_request(10), TIMEOUT)
    # It reached the server: gRPC queued its handler on the (busy) one-thread pool.
    wait_until(lambda: server._executor._work_queue.qsize() == 1, "the request to be queued")
    gone.cancel()
    assert busy.code() == grpc.StatusCode.OK
    assert gone.cancelled()
    assert runs(stub) == before + 1


def test_rest_timeout_stops_the_run(slow_server):
    rest_port = free_port()
    slow_server(rest_api_port=rest_port, rest_api_timeout_in_ms=500, rest_api_num_threads=1)
    url = f"http://127.0.0.1:{rest_port}/v1/models/{MODEL}:predict"
    started = time.monotonic()
    assert post_json(url, {"signature_name": "spin", "instances": [10**10]})[0] == 504
    # One REST thread: this one runs only once TensorFlow gave up the first run.
    assert post_json(url, {"instances": [1]})[0] == 200
    assert time.monotonic() - started < 5.0
