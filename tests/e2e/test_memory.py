"""Unloading frees a version's memory: RSS stays flat over repeated load/unload cycles."""

import re
import subprocess
import sys

from support import REPO


def test_rss_growth_over_load_unload_cycles_stays_under_ten_percent():
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "memory_cycles.py"), "--cycles", "20",
         "--megabytes", "8"],
        capture_output=True, text=True, timeout=240, check=True)
    growth = float(re.search(r"growth after the first cycle: ([-+\d.]+)%", result.stdout)[1])
    assert growth < 10.0, result.stdout
