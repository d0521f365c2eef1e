"""FileSystemSource: version policies over a base path, reported to its aspired-versions
callback (TF Serving's file_system_storage_path_source.cc and core/source.h)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyserving.server.config import ModelConfig, VersionDirectory
from pyserving.server.source import FileSystemSource

WAIT = 10.0


class Aspired:
    """The callback: the last versions reported per model, and an event per report."""

    def __init__(self) -> None:
        self.reports: dict[str, list[int]] = {}
        self.reported = threading.Event()

    def __call__(self, name: str, versions: list[VersionDirectory]) -> None:
        self.reports[name] = [version.version for version in versions]
        self.reported.set()


@pytest.fixture
def aspired() -> Aspired:
    return Aspired()


@pytest.fixture
def source(aspired: Aspired) -> Iterator[FileSystemSource]:
    made = FileSystemSource(poll_seconds=0)
    made.set_aspired_versions_callback(aspired)
    yield made
    made.stop()


def base_with(tmp_path: Path, *versions: str) -> Path:
    base = tmp_path / "model"
    base.mkdir()
    for version in versions:
        (base / version).mkdir()
    return base


def model(base: Path, policy: str = "") -> ModelConfig:
    config = ModelConfig(name="model", base_path=str(base))
    if policy:
        from google.protobuf import text_format
        text_format.Parse(policy, config.model_version_policy)
    return config


@pytest.mark.parametrize("policy, expected", [
    ("", [3]),
    ("latest { num_versions: 2 }", [2, 3]),
    ("all {}", [1, 2, 3]),
    ("specific { versions: 1 versions: 3 }", [1, 3]),
    ("specific { versions: 2 versions: 7 }", [2]),
], ids=["default latest 1", "latest 2", "all", "specific", "specific, one missing"])
def test_the_version_policy_picks_the_aspired_versions(source, aspired, tmp_path, policy,
                                                       expected):
    base = base_with(tmp_path, "1", "2", "3", "not-a-version")
    (base / "4").write_text("a file, not a version directory")
    source.set_models([model(base, policy)])
    source.poll()
    assert aspired.reports == {"model": expected}


def test_a_missing_base_path_reports_nothing(source, aspired, tmp_path, caplog):
    source.set_models([model(tmp_path / "missing")])
    source.poll()
    assert aspired.reports == {}
    assert "Could not find base path" in caplog.text


def test_a_model_dropped_from_the_config_is_reported_without_versions(source, aspired,
                                                                      tmp_path):
    source.set_models([model(base_with(tmp_path, "1"))])
    source.poll()
    source.set_models([])
    assert aspired.reports == {"model": []}


def test_the_poller_reports_a_new_version(aspired, tmp_path):
    base = base_with(tmp_path, "1")
    source = FileSystemSource(poll_seconds=0.01)
    source.set_aspired_versions_callback(aspired)
    try:
        source.set_models([model(base)])
        source.start()
        assert aspired.reported.wait(WAIT)
        (base / "2").mkdir()
        deadline = threading.Event()
        while aspired.reports["model"] != [2] and not deadline.wait(0.005):
            pass
        assert aspired.reports["model"] == [2]
    finally:
        source.stop()


def test_a_negative_poll_wait_never_scans(aspired, tmp_path):
    source = FileSystemSource(poll_seconds=-1)
    source.set_aspired_versions_callback(aspired)
    source.set_models([model(base_with(tmp_path, "1"))])
    source.poll()
    assert aspired.reports == {}
