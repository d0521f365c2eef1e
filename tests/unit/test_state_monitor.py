"""The state monitor on its own (TF Serving's servable_state_monitor_test.cc): the states it
reports, waits that end when versions settle, and observers told in order, one at a time."""

from __future__ import annotations

import threading

import grpc
import pytest

from pyserving.server.errors import ServingError
from pyserving.server.state_monitor import ModelEvent, StateMonitor, VersionStatus
from pyserving.server.version_policy import VersionState

START, LOADING, AVAILABLE = VersionState.START, VersionState.LOADING, VersionState.AVAILABLE
END = VersionState.END
BROKEN = ServingError(grpc.StatusCode.NOT_FOUND, "no SavedModel")


def in_thread(call) -> tuple[threading.Thread, list]:
    result: list = []
    thread = threading.Thread(target=lambda: result.append(call()), daemon=True)
    thread.start()
    return thread, result


def test_statuses_are_newest_first_and_unknown_models_are_not_found():
    monitor = StateMonitor()
    monitor.aspire("m", {1, 2})
    monitor.record("m", 1, AVAILABLE)
    monitor.record("m", 2, END, BROKEN)
    assert monitor.version_statuses("m") == [VersionStatus(2, END, BROKEN),
                                             VersionStatus(1, AVAILABLE)]
    assert monitor.version_statuses("m", 1) == [VersionStatus(1, AVAILABLE)]
    with pytest.raises(ServingError, match="Could not find version 3 of model m"):
        monitor.version_statuses("m", 3)
    with pytest.raises(ServingError, match="Could not find any versions of model other"):
        monitor.version_statuses("other")
    assert monitor.model_names() == ["m"]


def test_wait_until_settled_returns_the_failed_aspired_versions():
    monitor = StateMonitor()
    monitor.aspire("m", {1, 2})
    monitor.record("m", 1, LOADING)
    thread, result = in_thread(lambda: monitor.wait_until_settled(["m"], timeout=30))
    monitor.record("m", 2, END, BROKEN)
    assert thread.is_alive()  # version 1 is still loading
    monitor.record("m", 1, AVAILABLE)
    thread.join(30)
    assert result == [{"m": [VersionStatus(2, END, BROKEN)]}]


def test_wait_until_settled_gives_up_at_its_timeout():
    monitor = StateMonitor()
    monitor.aspire("m", {1})
    assert monitor.wait_until_settled(["m"], timeout=0.01) == {"m": []}


def test_wait_for_latest_counts_only_changes_after_the_mark():
    monitor = StateMonitor()
    monitor.aspire("m", {1})
    monitor.record("m", 1, AVAILABLE)
    mark = monitor.change_count()
    thread, result = in_thread(lambda: monitor.wait_for_latest(["m"], mark))
    monitor.aspire("m", {1, 2})
    monitor.record("m", 2, LOADING)
    assert thread.is_alive()
    monitor.record("m", 2, AVAILABLE)
    thread.join(30)
    assert result == [{"m": VersionStatus(2, AVAILABLE)}]


def test_stop_waiting_ends_a_wait_for_latest_with_unavailable():
    monitor = StateMonitor()
    monitor.aspire("m", {1})
    errors: list[ServingError] = []

    def wait() -> None:
        try:
            monitor.wait_for_latest(["m"], monitor.change_count())
        except ServingError as error:
            errors.append(error)

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    monitor.stop_waiting()
    thread.join(30)
    assert [error.code for error in errors] == [grpc.StatusCode.UNAVAILABLE]
    assert "Server is shutting down" in errors[0].message


def test_observers_hear_events_in_order_and_waits_wait_for_them():
    """A waiter returns only after the observers were told: what a caller saw load, the
    metrics and health have heard of."""
    heard: list[str] = []
    entered, release = threading.Event(), threading.Event()

    def slow_observer(event: ModelEvent) -> None:
        entered.set()
        release.wait(30)
        heard.append(f"{event.kind} {event.version}")

    monitor = StateMonitor([slow_observer])
    monitor.aspire("m", {1})
    monitor.record("m", 1, AVAILABLE)
    monitor.publish(ModelEvent("load", "m", 1, "/m/1"))
    monitor.publish(ModelEvent("unload", "m", 0, "/m/0"))
    deliverer, _ = in_thread(monitor.deliver)
    entered.wait(30)
    waiter, result = in_thread(lambda: monitor.wait_until_settled(["m"], timeout=30))
    # A second thread delivering leaves the queue to the first and returns at once.
    monitor.deliver()
    assert waiter.is_alive() and heard == []
    release.set()
    deliverer.join(30)
    waiter.join(30)
    assert heard == ["load 1", "unload 0"]
    assert result == [{"m": []}]


def test_a_model_with_no_aspired_versions_is_settled_at_once():
    monitor = StateMonitor()
    monitor.aspire("m", set())
    assert monitor.wait_until_settled(["m"], timeout=0) == {"m": []}
