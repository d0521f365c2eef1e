"""The docs follow the code: docs/flags.md is what tools/flags_doc.py prints from ServerOptions,
the README stays short, and every relative link between README.md and docs/*.md resolves,
anchors included."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from support import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_flags_page_is_generated_from_server_options():
    generated = subprocess.run([sys.executable, str(REPO / "tools" / "flags_doc.py")],
                               capture_output=True, text=True, check=True, timeout=60).stdout
    assert (REPO / "docs" / "flags.md").read_text() == generated, (
        "docs/flags.md is stale: .venv/bin/python tools/flags_doc.py > docs/flags.md")


def test_readme_is_short():
    assert len((REPO / "README.md").read_text().splitlines()) <= 300


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    anchors, fenced = set(), False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def test_relative_links_resolve():
    broken = []
    for page in PAGES:
        for target in _LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken


def test_pages_keep_lines_within_100_columns_outside_tables():
    long = [f"{page.name}:{number}" for page in PAGES
            for number, line in enumerate(page.read_text().splitlines(), 1)
            if len(line) > 100 and not line.startswith(("|", "  |"))]
    assert not long, long
