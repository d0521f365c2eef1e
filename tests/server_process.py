"""Server processes for the tests that run the CLI (`python -m pyserving.server`): each one's
stderr goes to a file (a full pipe can never block it), and tests wait for its log lines."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from support import wait_for_log

SERVER_COMMAND = (sys.executable, "-m", "pyserving.server")
START_TIMEOUT = 90.0  # importing TensorFlow takes seconds on a busy two-core machine
RUNNING_TCP = re.compile(r"Running gRPC ModelServer at 0\.0\.0\.0:(\d+) \.\.\.")
STARTUP_FAILED = "Failed to start server. Error: "


class ServerProcess:
    """One server process; its stderr goes to a file so a full pipe can never block it."""

    def __init__(self, args: list[str], workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.stderr_path = workdir / "stderr.txt"
        with open(self.stderr_path, "wb") as stderr, open(workdir / "stdout.txt", "wb") as out:
            self.popen = subprocess.Popen([*SERVER_COMMAND, *args], cwd=workdir,
                                          stdin=subprocess.DEVNULL, stdout=out, stderr=stderr)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stdout(self) -> str:
        return (self.stderr_path.parent / "stdout.txt").read_text(errors="replace")

    def wait_for_log(self, pattern: str | re.Pattern[str], after: int = 0) -> re.Match[str]:
        return wait_for_log(self.stderr, pattern, self.popen, START_TIMEOUT, after)

    def tcp_target(self) -> str:
        return f"127.0.0.1:{self.wait_for_log(RUNNING_TCP).group(1)}"

    def wait_for_exit(self) -> int:
        return self.popen.wait(START_TIMEOUT)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


class Launcher:
    """Starts server processes in numbered work dirs and stops all of them on close()."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._processes: list[ServerProcess] = []

    def __call__(self, *args: str) -> ServerProcess:
        process = ServerProcess(list(args), self._root / f"server{len(self._processes)}")
        self._processes.append(process)
        return process

    def close(self) -> None:
        for process in self._processes:
            process.stop()


def assert_clean_startup_failure(process: ServerProcess, message: str) -> None:
    """Exit status 255, TF Serving's message (its last line on stdout), no Python traceback."""
    assert process.wait_for_exit() == 255
    stdout, stderr = process.stdout(), process.stderr()
    assert STARTUP_FAILED in stdout
    assert message in stdout + stderr
    assert "Traceback" not in stderr


def startup_failure_line(process: ServerProcess) -> str:
    """The "Failed to start server. Error: ..." text tensorflow_model_server prints last."""
    assert process.wait_for_exit() == 255
    stdout = process.stdout()
    assert stdout.startswith(STARTUP_FAILED) and stdout.endswith("\n"), stdout
    assert "Traceback" not in process.stderr()
    return stdout[len(STARTUP_FAILED):-1]
