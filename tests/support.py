"""Shared constants and small helpers of the test suite."""

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
# TF Serving's testdata folder when PYSERVING_TESTDATA names one; otherwise the same layout that
# conftest.py builds with TensorFlow (testdata_models.py) into this folder at session start.
TESTDATA_OVERRIDE = os.environ.get("PYSERVING_TESTDATA")
TESTDATA = (Path(TESTDATA_OVERRIDE) if TESTDATA_OVERRIDE
            else Path(tempfile.mkdtemp(prefix="pyserving-testdata-")))


def free_port() -> int:
    """A loopback port free right now (for servers that cannot bind port 0 themselves)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop_process(process: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM a server process and wait for it to drain; kill it if it does not exit."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def write_to_terminal(request: pytest.FixtureRequest, line: str) -> None:
    """Print a summary line past pytest's output capture (e.g. how many cases a fuzzer ran)."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)


def post_json(url: str, body: object, timeout: float = 20.0) -> tuple[int, object]:
    """(HTTP status, decoded JSON body) of a JSON POST, error statuses included."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


_PAGE_LINE = re.compile(r'([^{ ]+)(?:\{(.*)\})? (\S+)')
_PAGE_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def metrics_page_samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample line of a metrics page in Prometheus' text format (``name{l="v"} value``
    or ``name value``, each label once), keyed by (name, labels)."""
    samples = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = _PAGE_LINE.fullmatch(line)
        assert match, f"not a sample line: {line!r}"
        labels = frozenset(_PAGE_LABEL.findall(match[2] or ""))
        samples[(match[1], labels)] = float(match[3])
    return samples


def wait_until(condition: Callable[[], object], what: str = "a condition",
               timeout: float = 30.0, interval: float = 0.002) -> bool:
    """Poll ``condition`` until it is true (then True); fail after ``timeout`` seconds. Tests
    order events with this, never with a fixed sleep; this is the suite's one polling loop."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(interval)
    return True


def wait_for_log(read: Callable[[], str], pattern: str | re.Pattern[str],
                 process: subprocess.Popen | None = None, timeout: float = 90.0,
                 after: int = 0) -> re.Match[str]:
    """The first match of ``pattern`` in the log text ``read()`` returns, at or after character
    ``after``; fails at once if ``process`` exits first, and after ``timeout`` seconds."""
    compiled = re.compile(pattern)
    found: list[re.Match[str]] = []

    def logged() -> bool:
        text = read()
        match = compiled.search(text, after)
        if match:
            found.append(match)
            return True
        if process is not None and process.poll() is not None:
            pytest.fail(f"process exited with {process.returncode} before logging "
                        f"{compiled.pattern!r}; log:\n{text}")
        return False

    try:
        wait_until(logged, f"{compiled.pattern!r} in the log", timeout, interval=0.05)
    except AssertionError:
        pytest.fail(f"no {compiled.pattern!r} within {timeout} s; log:\n{read()}")
    return found[0]


def requests_in_flight(server: Any, model: str, api: str = "Predict") -> int:
    """gRPC ``api`` requests an in-process ModelServer is handling for ``model`` now: counted
    from the moment the RPC reaches its handler (pyserving_inflight_requests)."""
    value = server.metrics.registry.get_sample_value(
        "pyserving_inflight_requests", {"model_name": model, "API": api, "entrypoint": "GRPC"})
    return int(value or 0)


def connections_by_pid(port: int, pids: list[int]) -> dict[int, set[int]]:
    """The socket inodes of each process's established connections on local port ``port``."""
    established = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, encoding="ascii") as handle:
            for line in handle.readlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                    established.add(int(fields[9]))
    owned: dict[int, set[int]] = {}
    for pid in pids:
        inodes = set()
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                match = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(fd))
            except OSError:  # closed meanwhile
                continue
            if match and int(match.group(1)) in established:
                inodes.add(int(match.group(1)))
        owned[pid] = inodes
    return owned


def copy_testdata(name: str, target: Path) -> Path:
    """A writable copy of the test model folder ``name`` (TESTDATA) at ``target``: the
    fixtures' SavedModels may be read-only, and tests add, change and remove versions."""
    shutil.copytree(TESTDATA / name, target)
    for path in [target, *target.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)
    return target
