"""ModelManager with a fake loader (TF Serving's core/test_util/fake_loader.h): loads, the
availability-preserving swap, retries, unloads that wait for requests, and observers that
run outside the manager's lock."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import pytest

from fake_servable import FakeLoader
from pyserving.server.config import VersionDirectory
from pyserving.server.errors import ServingError
from pyserving.server.manager import LoadPolicy, ModelEvent, ModelManager, VersionState
from pyserving.server.version_policy import resource_preserving
from support import wait_until

WAIT = 10.0
AVAILABLE, END = VersionState.AVAILABLE, VersionState.END


def versions(*numbers: int, name: str = "model") -> list[VersionDirectory]:
    return [VersionDirectory(number, f"/models/{name}/{number}") for number in numbers]


@pytest.fixture
def loader() -> FakeLoader:
    return FakeLoader()


@pytest.fixture
def events() -> list[ModelEvent]:
    return []


@pytest.fixture
def manager(loader: FakeLoader, events: list[ModelEvent]) -> Iterator[ModelManager]:
    made = ModelManager(loader, LoadPolicy(max_retries=2, retry_interval_seconds=0.0),
                        observers=[events.append])
    yield made
    made.close(drain_seconds=0)


def states(manager: ModelManager, name: str = "model") -> dict[int, VersionState]:
    return {status.version: status.state for status in manager.version_statuses(name)}


def aspire(manager: ModelManager, *numbers: int) -> None:
    """Aspire these versions of "model" and wait until they settled (observers told)."""
    mark = manager.change_count()
    manager.set_aspired_versions("model", versions(*numbers))
    manager.wait_for_latest(["model"], mark)


def test_aspired_versions_load_and_the_newest_serves(manager):
    aspire(manager, 1, 2)
    assert states(manager) == {2: AVAILABLE, 1: AVAILABLE}
    with manager.acquire("model") as servable:
        assert servable.version == 2
    with manager.acquire("model", version=1) as servable:
        assert servable.version == 1


def test_a_new_version_replaces_the_old_one_once_available(manager, events):
    aspire(manager, 1)
    aspire(manager, 2)
    assert manager.wait_until_settled(["model"]) == {"model": []}
    assert wait_until(lambda: states(manager) == {2: AVAILABLE, 1: END}, timeout=WAIT)
    manager.close()  # unloads 2 as well; observers are told before close returns
    assert [(event.kind, event.version) for event in events] == [
        ("load", 1), ("load", 2), ("swap", 2), ("unload", 1), ("unload", 2)]


def test_a_failing_version_is_retried_then_reported(manager, loader, events):
    loader.failing[("model", 1)] = ServingError(grpc.StatusCode.NOT_FOUND, "no model here")
    manager.set_aspired_versions("model", versions(1))
    failed = manager.wait_until_settled(["model"], timeout=WAIT)
    [status] = failed["model"]
    assert (status.version, status.state, status.error.message) == (1, END, "no model here")
    assert [event.kind for event in events] == ["load_failure"] * 3  # 1 + max_retries


def test_an_unload_waits_for_the_requests_holding_the_version(manager, loader):
    aspire(manager, 1)
    request = manager.acquire("model")
    manager.set_aspired_versions("model", [])
    assert wait_until(lambda: not manager.available_versions("model"), timeout=WAIT)
    assert states(manager) == {1: VersionState.UNLOADING}
    with pytest.raises(ServingError) as raised:
        manager.acquire("model")  # no new request gets it
    assert raised.value.code == grpc.StatusCode.NOT_FOUND
    request.release()
    manager.close()  # waits for the unload
    assert states(manager) == {1: END}
    assert loader.loaded[0].model.closed


def test_observers_run_after_the_manager_lock_is_released(loader):
    # Observers (health, metrics, gc.freeze) may block or take time; holding the manager's
    # lock meanwhile would stall every state read and change.
    answered = []

    def observer(event: ModelEvent) -> None:
        reader = threading.Thread(target=lambda: answered.append(manager.model_names()))
        reader.start()
        reader.join(WAIT)

    manager = ModelManager(loader, observers=[observer])
    try:
        aspire(manager, 1)
        assert answered == [["model"]]
    finally:
        manager.close()


def test_waiting_for_a_version_returns_once_observers_heard_of_it(loader):
    heard: list[str] = []
    release = threading.Event()

    def slow_observer(event: ModelEvent) -> None:
        release.wait(WAIT)
        heard.append(event.kind)

    manager = ModelManager(loader, observers=[slow_observer])
    try:
        mark = manager.change_count()
        manager.set_aspired_versions("model", versions(1))
        waiter = threading.Thread(target=manager.wait_for_latest, args=(["model"], mark))
        waiter.start()
        waiter.join(0.05)
        assert waiter.is_alive() and heard == []  # loaded, but the observer is not done
        release.set()
        waiter.join(WAIT)
        assert not waiter.is_alive() and heard == ["load"]
    finally:
        release.set()
        manager.close()


def test_labels_name_available_versions_only(manager):
    aspire(manager, 1)
    with pytest.raises(ServingError) as raised:
        manager.check_labels({"model": {"stable": 2}})
    assert raised.value.code == grpc.StatusCode.FAILED_PRECONDITION
    manager.set_labels({"model": {"stable": 1}})
    with manager.acquire("model", label="stable") as servable:
        assert servable.version == 1


def test_with_the_resource_preserving_policy_the_old_version_unloads_first(loader):
    events: list[ModelEvent] = []
    manager = ModelManager(loader, LoadPolicy(max_retries=0), observers=[events.append],
                           version_policy=resource_preserving)
    try:
        aspire(manager, 1)
        aspire(manager, 2)
        assert wait_until(lambda: states(manager) == {2: AVAILABLE, 1: END}, timeout=WAIT)
        assert [(event.kind, event.version) for event in events] == [
            ("load", 1), ("unload", 1), ("load", 2)]
    finally:
        manager.close()
