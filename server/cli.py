"""``pyserving`` / ``python -m pyserving.server``: tensorflow_model_server's command line."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pyserving.server import logging_setup
from pyserving.server.options import (
    ServerOptions,
    build_parser,
    explicitly_set_inert_flags,
    parse_options,
)
from pyserving.server.workers.supervisor import WorkerFlagError, supervise, worker_count

if TYPE_CHECKING:
    from pyserving.server.app import ModelServer
    from pyserving.server.config import ModelServerConfig

VERSION = "0.1.0"
# tensorflow_model_server returns -1 from main when it cannot start.
EXIT_START_FAILED = 255
STARTUP_FAILED = "Failed to start server. Error: "


def configure_logging(tag: str = "", log_format: str = "text") -> None:
    """Log lines to stderr (``--log_format``: text or JSON, logging_setup.py); ``tag`` (e.g.
    "worker 1") names the process in each line."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    logging_setup.configure(log_format, tag)


def report_startup_failure(error: object) -> None:
    """tensorflow_model_server's last words when it cannot start: on stdout (std::cout)."""
    print(f"{STARTUP_FAILED}{error}", flush=True)


class ServerLifecycle:
    """Hooks around one ModelServer's life in ``run_server`` (a worker process uses them)."""

    def built(self, server: ModelServer) -> None:
        """The server exists; start() comes next."""

    def configured(self, server: ModelServer) -> None:
        """In start(): the start-up model config is applied; the ports open next."""

    def reloaded(self, config: ModelServerConfig) -> None:
        """A ReloadConfig request applied ``config``; the request returns next."""

    def serving(self, server: ModelServer) -> None:
        """start() returned: the models are loaded and the ports open."""

    def stopping(self, server: ModelServer) -> None:
        """A stop signal arrived; stop() comes next."""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    options, unknown = parse_options(argv)
    if options.version:
        import tensorflow as tf

        print(f"TensorFlow ModelServer: pyserving-{VERSION}\nTensorFlow Library: {tf.__version__}")
        return 0
    if unknown:  # tensorflow_model_server names the first one, shows the usage, starts anyway
        print(f"unknown argument: {unknown[0]}\n{build_parser().format_help()}", end="")
    if options.log_format not in logging_setup.LOG_FORMATS:
        formats = ", ".join(logging_setup.LOG_FORMATS)
        report_startup_failure(f"--log_format must be one of {formats}, "
                               f"not {options.log_format!r}")
        return EXIT_START_FAILED
    configure_logging(log_format=options.log_format)
    log = logging.getLogger("pyserving")
    for name in explicitly_set_inert_flags(options):
        log.warning("--%s is accepted for compatibility but not implemented yet; ignored", name)
    try:
        workers = worker_count(options)
    except WorkerFlagError as error:
        report_startup_failure(error)
        return EXIT_START_FAILED
    if workers > 1:
        return supervise(options, argv, workers)
    return run_server(options)


def run_server(options: ServerOptions, lifecycle: ServerLifecycle | None = None) -> int:
    """Start a ModelServer, serve until SIGTERM/SIGINT, stop it; returns the exit code."""
    lifecycle = lifecycle or ServerLifecycle()
    log = logging.getLogger("pyserving")
    # TensorFlow is imported only now, so --help and bad flags answer at once.
    from pyserving.server.app import ModelServer
    from pyserving.server.errors import ServingError

    try:
        server = ModelServer(options, on_configured=lifecycle.configured,
                             on_reload=lifecycle.reloaded)
    except ServingError as error:
        report_startup_failure(error)
        return EXIT_START_FAILED
    lifecycle.built(server)
    stop_requested = threading.Event()

    def _shutdown(signum: int, _frame: object) -> None:
        if not server.serving:
            # Still loading: die of the signal, as tensorflow_model_server does.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop_requested.set()

    # Installed before start() so that a signal right after "Running gRPC ModelServer" is
    # already a graceful stop.
    signal.signal(signal.SIGTERM, _shutdown)
    signal.signal(signal.SIGINT, _shutdown)
    try:
        server.start()
    except ServingError as error:
        report_startup_failure(error)
        return EXIT_START_FAILED
    lifecycle.serving(server)
    stop_requested.wait()
    lifecycle.stopping(server)
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
