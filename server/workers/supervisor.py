"""``--workers N``: N server processes sharing the gRPC and REST ports, and their supervisor.

The supervisor (the process the user started) imports no TensorFlow. It reserves the ports
(a socket bound with SO_REUSEPORT that never listens: ``--port=0`` becomes one concrete port
for every worker, and nobody else takes a port while a worker restarts), then spawns N
``python -m pyserving.server.workers.worker`` processes. Each is a normal ModelServer with the same
flags, binding with SO_REUSEPORT, so the kernel spreads new connections among them. The
supervisor restarts a worker that dies (with a backoff), forwards SIGTERM/SIGINT to all and
waits for their drain. A readiness record (one file per serving worker) lets every worker
report the overall health as SERVING only while all N serve.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from pyserving.server.options import ServerOptions

log = logging.getLogger(__name__)

EXIT_START_FAILED = 255
POLL_SECONDS = 0.1
FIRST_RESTART_DELAY = 0.5  # doubles on each failed restart, back to this once a worker serves
MAX_RESTART_DELAY = 30.0
STOP_MARGIN_SECONDS = 30.0  # beyond the grace period, for unloading, before SIGKILL


class WorkerFlagError(ValueError):
    """--workers (or a flag it cannot be combined with) is wrong; the server does not start."""


def worker_count(options: ServerOptions) -> int:
    """--workers as a number: "auto" is the CPUs this process may run on."""
    text = options.workers.strip().lower()
    if text == "auto":
        count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else os.cpu_count() or 1
    else:
        try:
            count = int(text)
        except ValueError:
            count = 0
        if count < 1:
            raise WorkerFlagError(f"--workers must be a positive integer or 'auto', "
                                  f"got '{options.workers}'")
    if count > 1:
        _check_shareable(options)
    return count


def _check_shareable(options: ServerOptions) -> None:
    if not hasattr(socket, "SO_REUSEPORT"):
        raise WorkerFlagError("--workers > 1 needs SO_REUSEPORT, which this platform lacks")
    if options.grpc_socket_path:
        raise WorkerFlagError("--grpc_socket_path cannot be shared by several --workers; "
                              "use --port")
    arguments = {key.strip(): value.strip() for key, _, value in
                 (item.partition("=") for item in options.grpc_channel_arguments.split(","))}
    if arguments.get("grpc.so_reuseport") == "0":
        raise WorkerFlagError("--workers > 1 needs SO_REUSEPORT; remove grpc.so_reuseport=0 "
                              "from --grpc_channel_arguments")


class ReadinessRecord:
    """Which workers serve now: one file per serving worker, named by its index, holding its
    pid. Workers add and remove their own; the supervisor removes a dead worker's."""

    def __init__(self, directory: Path, count: int) -> None:
        self.directory = directory
        self.count = count

    def _path(self, index: int) -> Path:
        return self.directory / str(index)

    def mark_ready(self, index: int, pid: int) -> None:
        scratch = self.directory / f".{index}.{pid}"
        scratch.write_text(str(pid))
        os.replace(scratch, self._path(index))

    def clear(self, index: int, pid: int) -> None:
        """Remove worker ``index``'s entry if it is ``pid``'s (not a successor's)."""
        if self.pid_of(index) == pid:
            self._path(index).unlink(missing_ok=True)

    def pid_of(self, index: int) -> int | None:
        try:
            return int(self._path(index).read_text())
        except (OSError, ValueError):
            return None

    def all_ready(self) -> bool:
        return all(self._path(index).exists() for index in range(self.count))


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port) with SO_REUSEPORT that never listens: it holds the port
    for the workers, who bind it too. The wildcard host is held on IPv6 and IPv4 at once, as
    gRPC binds it, where the machine has IPv6."""
    if host == "0.0.0.0" and socket.has_ipv6:
        try:
            return _bound(socket.AF_INET6, "::", port)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise
    return _bound(socket.AF_INET, host, port)


def _bound(family: socket.AddressFamily, host: str, port: int) -> socket.socket:
    reservation = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_INET6:
            reservation.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reservation.bind((host, port))
    except OSError:
        reservation.close()
        raise
    return reservation


@dataclasses.dataclass
class _Slot:
    """One worker position: its current process and its restart bookkeeping."""

    index: int
    process: subprocess.Popen | None = None
    serving: bool = False
    failed_starts: int = 0
    restart_at: float = 0.0


class Supervisor:
    """Runs N workers until a stop signal: restarts the ones that die, then drains all."""

    def __init__(self, command: Sequence[str], count: int, run_dir: Path,
                 grace_seconds: float, address: str) -> None:
        self._command = list(command)
        self._run_dir = run_dir
        self._record = ReadinessRecord(run_dir / "ready", count)
        self._metrics_dir = run_dir / "metrics"
        self._slots = [_Slot(index) for index in range(count)]
        self._grace = grace_seconds
        self._address = address
        self.all_served = False  # every worker has served once: start-up is over
        self.stop_signal: int | None = None
        self._stop = threading.Event()

    def run(self) -> int:
        for directory in (self._record.directory, self._metrics_dir):
            directory.mkdir(parents=True, exist_ok=True)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        log.info("starting %d workers", len(self._slots))
        for slot in self._slots:
            self._spawn(slot)
        while not self._stop.wait(POLL_SECONDS):
            for slot in self._slots:
                if not self._watch(slot):
                    self._stop_all(signal.SIGTERM)
                    return EXIT_START_FAILED
            if not self.all_served and all(slot.serving for slot in self._slots):
                self.all_served = True
                log.info("all %d workers are serving; Running gRPC ModelServer at %s ...",
                         len(self._slots), self._address)
        return self._stop_all(self.stop_signal or signal.SIGTERM)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.stop_signal = signum
        self._stop.set()

    def _spawn(self, slot: _Slot) -> None:
        arguments = [f"--index={slot.index}", f"--count={len(self._slots)}",
                     f"--run_dir={self._run_dir}", f"--parent_pid={os.getpid()}"]
        slot.process = subprocess.Popen(
            [sys.executable, "-m", "pyserving.server.workers.worker", *arguments, "--",
             *self._command],
            stdin=subprocess.DEVNULL)
        slot.serving = False
        log.info("worker %d started: pid %d", slot.index, slot.process.pid)

    def _watch(self, slot: _Slot) -> bool:
        """Follow one worker; False when it failed during start-up (the server cannot start)."""
        if self._stop.is_set():  # a Ctrl-C reaches the workers too: their exits are no failures
            return True
        if slot.process is None:
            if time.monotonic() >= slot.restart_at:
                self._spawn(slot)
            return True
        pid = slot.process.pid
        returncode = slot.process.poll()
        if returncode is None:
            if not slot.serving and self._record.pid_of(slot.index) == pid:
                slot.serving, slot.failed_starts = True, 0
                log.info("worker %d (pid %d) is serving", slot.index, pid)
            return True
        self._forget(slot, pid)
        if not self.all_served:
            log.error("worker %d (pid %d) %s during start-up; stopping the other workers",
                      slot.index, pid, _describe_exit(returncode))
            return False
        delay = min(FIRST_RESTART_DELAY * 2 ** slot.failed_starts, MAX_RESTART_DELAY)
        slot.failed_starts += 1
        slot.restart_at = time.monotonic() + delay
        log.warning("worker %d (pid %d) %s; restarting it in %.1f s", slot.index, pid,
                    _describe_exit(returncode), delay)
        return True

    def _forget(self, slot: _Slot, pid: int) -> None:
        """A worker (process ``pid``) has exited: drop its readiness entry and its live
        metrics."""
        from prometheus_client import multiprocess

        self._record.clear(slot.index, pid)
        multiprocess.mark_process_dead(pid, str(self._metrics_dir))
        slot.process, slot.serving = None, False

    def _stop_all(self, signum: int) -> int:
        """Forward the signal to every worker and wait for each to drain and exit."""
        running = [(slot, slot.process) for slot in self._slots if slot.process is not None]
        log.info("stopping %d workers (%s)", len(running), signal.Signals(signum).name)
        for _, process in running:
            process.send_signal(signum)
        deadline = time.monotonic() + self._grace + STOP_MARGIN_SECONDS
        for slot, process in running:
            try:
                process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.warning("worker %d (pid %d) did not stop in time; killing it", slot.index,
                            process.pid)
                process.kill()
                process.wait()
            self._forget(slot, process.pid)
        log.info("all workers stopped")
        return 0


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        return f"was killed by {signal.Signals(-returncode).name}"
    return f"exited with code {returncode}"


def supervise(options: ServerOptions, argv: Sequence[str], count: int) -> int:
    """Serve with ``count`` worker processes until SIGTERM/SIGINT; returns the exit code."""
    host = "0.0.0.0"
    reservations: list[socket.socket] = []
    try:
        ports = [options.port] + ([options.rest_api_port] if options.rest_api_port else [])
        for port in ports:
            try:
                reservations.append(reserve_port(host, port))
            except OSError as error:
                print(f"Failed to start server. Error: UNAVAILABLE: Failed to reserve port "
                      f"{host}:{port} for {count} workers: {error.strerror}", flush=True)
                return EXIT_START_FAILED
        grpc_port = reservations[0].getsockname()[1]
        command = [*argv, f"--port={grpc_port}", f"--workers={count}"]
        run_dir = Path(tempfile.mkdtemp(prefix="pyserving-workers-"))
        try:
            supervisor = Supervisor(command, count, run_dir,
                                    options.shutdown_grace_period_seconds, f"{host}:{grpc_port}")
            code = supervisor.run()
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
    finally:
        for reservation in reservations:
            reservation.close()
    if code == 0 and not supervisor.all_served and supervisor.stop_signal is not None:
        # Stopped while still loading: die of the signal, as a single server does.
        signal.signal(supervisor.stop_signal, signal.SIG_DFL)
        os.kill(os.getpid(), supervisor.stop_signal)
    return code
