"""tests/unit: the core on plain-Python fakes, no TensorFlow and no sockets; the folder runs in
seconds (`python -m pytest tests/unit`)."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _no_tensorflow() -> Iterator[None]:
    """A unit test that imports TensorFlow fails (checked when nothing imported it before,
    e.g. in a run of tests/unit alone; test_layout.py checks the imports in any run)."""
    loaded = "tensorflow" in sys.modules
    yield
    assert loaded or "tensorflow" not in sys.modules, "a unit test imported TensorFlow"
