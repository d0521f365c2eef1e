"""Shared constants and small helpers of the test suite."""

import os
import socket
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TESTDATA = Path(os.environ.get("PYSERVING_TESTDATA",
                               REPO.parent / "shared" / "testdata" / "tf_serving"))


def free_port() -> int:
    """A loopback port free right now (for servers that cannot bind port 0 themselves)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
