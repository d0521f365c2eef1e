"""One worker process of ``--workers N`` (started by ``supervisor.Supervisor``, not by users).

    python -m pyserving.server.workers.worker --index=I --count=N --run_dir=D --parent_pid=P \
        -- FLAGS

A normal ModelServer with the server's FLAGS (the supervisor made the ports concrete), whose
metrics add up with the other workers' (files under D/metrics), whose overall health is
SERVING only while every worker is (the readiness record under D/ready), and whose model
config follows the last ReloadConfig request any worker applied (D/model_config.txt).
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pyserving.server.cli import ServerLifecycle, configure_logging, run_server
from pyserving.server.errors import ServingError
from pyserving.server.options import parse_options
from pyserving.server.workers.supervisor import POLL_SECONDS, ReadinessRecord

if TYPE_CHECKING:
    from pyserving.server.app import ModelServer
    from pyserving.server.config import ModelServerConfig
    from pyserving.server.workers.shared_config import SharedModelConfig

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1
CONFIG_POLL_SECONDS = 0.5


class WorkerLifecycle(ServerLifecycle):
    """Keeps the readiness record, this worker's overall health and its model config in step
    with the other workers."""

    def __init__(self, record: ReadinessRecord, index: int,
                 shared_config: SharedModelConfig) -> None:
        self._record = record
        self._index = index
        self._pid = os.getpid()
        self._stopped = threading.Event()
        self._shared_config = shared_config
        self._generation = 0  # of the shared config this worker serves
        self._failed_generation = 0  # the last one that failed here, logged once

    def built(self, server: ModelServer) -> None:
        server.health.set_peers_ready(False)
        threading.Thread(target=self._follow_peers, args=(server,), name="worker-peers",
                         daemon=True).start()

    def configured(self, server: ModelServer) -> None:
        # A restarted worker catches up with the others before it takes connections.
        self._follow_config(server)

    def reloaded(self, config: ModelServerConfig) -> None:
        try:
            self._generation = self._shared_config.publish(config)
        except OSError as error:
            log.error("the reloaded model config is not shared with the other workers: %s",
                      error)
            return
        log.info("model config of reload %d shared with the other workers", self._generation)

    def serving(self, server: ModelServer) -> None:
        self._record.mark_ready(self._index, self._pid)
        threading.Thread(target=self._follow_configs, args=(server,), name="worker-config",
                         daemon=True).start()

    def stopping(self, server: ModelServer) -> None:
        self._stopped.set()
        self._record.clear(self._index, self._pid)

    def _follow_peers(self, server: ModelServer) -> None:
        while not self._stopped.wait(POLL_SECONDS):
            server.health.set_peers_ready(self._record.all_ready())

    def _follow_configs(self, server: ModelServer) -> None:
        while not self._stopped.wait(CONFIG_POLL_SECONDS):
            self._follow_config(server)

    def _follow_config(self, server: ModelServer) -> None:
        """Apply the shared config if it is newer than this worker's (a failure is retried)."""
        try:
            latest = self._shared_config.newer_than(self._generation)
        except OSError as error:
            log.error("cannot read the workers' model config: %s", error)
            return
        if latest is None:
            return
        generation, config = latest
        try:
            if server.configurator.follow(
                    config, lambda: self._shared_config.generation() == generation):
                self._generation = generation
                log.info("now serving the model config of reload %d", generation)
        except (OSError, ServingError) as error:
            if generation != self._failed_generation:
                self._failed_generation = generation
                log.error("model config of reload %d not applied (retrying): %s", generation,
                          error)


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
    parser = argparse.ArgumentParser(prog="pyserving.server.workers.worker")
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
    options, _unknown = parse_options(flags)  # the supervisor has reported unknown flags
    configure_logging(tag=f"worker {arguments.index}", log_format=options.log_format)
    from pyserving.server import metrics
    from pyserving.server.rest import server as rest
    from pyserving.server.workers.shared_config import SharedModelConfig

    metrics.use_multiprocess_dir(str(arguments.run_dir / "metrics"))
    rest.share_port_with_other_processes()
    record = ReadinessRecord(arguments.run_dir / "ready", arguments.count)
    shared_config = SharedModelConfig(arguments.run_dir)
    return run_server(options, WorkerLifecycle(record, arguments.index, shared_config))


if __name__ == "__main__":
    sys.exit(main())
