"""One worker process of ``--workers N`` (started by ``workers.Supervisor``, not by users).

    python -m pyserving.server.worker --index=I --count=N --run_dir=D --parent_pid=P -- FLAGS

A normal ModelServer with the server's FLAGS (the supervisor made the ports concrete), whose
metrics add up with the other workers' (files under D/metrics) and whose overall health is
SERVING only while every worker is (the readiness record under D/ready).
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from pyserving.server.cli import ServerLifecycle, configure_logging, run_server
from pyserving.server.options import parse_options
from pyserving.server.workers import POLL_SECONDS, ReadinessRecord

if TYPE_CHECKING:
    from pyserving.server.app import ModelServer

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1


class WorkerLifecycle(ServerLifecycle):
    """Keeps the readiness record and this worker's overall health in step."""

    def __init__(self, record: ReadinessRecord, index: int) -> None:
        self._record = record
        self._index = index
        self._pid = os.getpid()
        self._stopped = threading.Event()

    def built(self, server: "ModelServer") -> None:
        server.health.set_peers_ready(False)
        threading.Thread(target=self._follow_peers, args=(server,), name="worker-peers",
                         daemon=True).start()

    def serving(self, server: "ModelServer") -> None:
        self._record.mark_ready(self._index, self._pid)

    def stopping(self, server: "ModelServer") -> None:
        self._stopped.set()
        self._record.clear(self._index, self._pid)

    def _follow_peers(self, server: "ModelServer") -> None:
        while not self._stopped.wait(POLL_SECONDS):
            server.health.set_peers_ready(self._record.all_ready())


def _die_with_parent(parent_pid: int) -> None:
    """SIGTERM (a graceful stop) when the supervisor dies, even of SIGKILL (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
    except (OSError, AttributeError):  # not Linux: orphans are stopped by their users
        return
    if os.getppid() != parent_pid:  # the parent died before prctl
        os.kill(os.getpid(), signal.SIGTERM)


def _parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="pyserving.server.worker")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--run_dir", type=Path, required=True)
    parser.add_argument("--parent_pid", type=int, required=True)
    parser.add_argument("flags", nargs=argparse.REMAINDER)
    arguments = parser.parse_args(argv)
    flags = arguments.flags[1:] if arguments.flags[:1] == ["--"] else arguments.flags
    return arguments, flags


def main(argv: Sequence[str] | None = None) -> int:
    arguments, flags = _parse(sys.argv[1:] if argv is None else argv)
    _die_with_parent(arguments.parent_pid)
    configure_logging(tag=f"worker {arguments.index}")
    options, _unknown = parse_options(flags)  # the supervisor has reported unknown flags
    from pyserving.server import metrics, rest

    metrics.use_multiprocess_dir(str(arguments.run_dir / "metrics"))
    rest.share_port_with_other_processes()
    record = ReadinessRecord(arguments.run_dir / "ready", arguments.count)
    return run_server(options, WorkerLifecycle(record, arguments.index))


if __name__ == "__main__":
    sys.exit(main())
