"""Shared constants of the test suite."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TESTDATA = Path(os.environ.get("PYSERVING_TESTDATA",
                               REPO.parent / "shared" / "testdata" / "tf_serving"))
