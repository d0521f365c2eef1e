"""``pyserving`` / ``python -m pyserving.server``: tensorflow_model_server's command line."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Sequence

from pyserving.server.options import explicitly_set_inert_flags, parse_options

VERSION = "0.1.0"
# tensorflow_model_server returns -1 from main when it cannot start.
EXIT_START_FAILED = 255


def _configure_logging() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr,
        format="%(asctime)s.%(msecs)03d %(levelname)s %(name)s] %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S")


def main(argv: Sequence[str] | None = None) -> int:
    options, unknown = parse_options(argv)
    if options.version:
        import tensorflow as tf

        print(f"TensorFlow ModelServer: pyserving-{VERSION}\nTensorFlow Library: {tf.__version__}")
        return 0
    _configure_logging()
    log = logging.getLogger("pyserving")
    for argument in unknown:
        log.warning("unknown argument: %s (ignored)", argument)
    for name in explicitly_set_inert_flags(options):
        log.warning("--%s is accepted for compatibility but not implemented yet; ignored", name)

    # TensorFlow is imported only now, so --help and bad flags answer at once.
    from pyserving.server.app import ModelServer
    from pyserving.server.config import ConfigParseError
    from pyserving.server.errors import ServingError

    try:
        server = ModelServer(options)
    except ServingError as error:
        print(f"Failed to start server. Error: {error}", file=sys.stderr)
        return EXIT_START_FAILED
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
    except ConfigParseError as error:
        print(error.detail, file=sys.stderr)
        print(f"Failed to start server. Error: {error}", file=sys.stderr)
        return EXIT_START_FAILED
    except ServingError as error:
        print(f"Failed to start server. Error: {error}", file=sys.stderr)
        return EXIT_START_FAILED
    stop_requested.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
