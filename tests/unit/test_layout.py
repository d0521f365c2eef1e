"""The suite's layout holds: unit test modules import no TensorFlow (so tests/unit runs in
seconds), and no test module imports another (shared code lives in tests/*.py)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from support import REPO

TESTS = REPO / "tests"


def test_unit_test_modules_import_no_tensorflow() -> None:
    modules = sorted(path.stem for path in (TESTS / "unit").glob("test_*.py"))
    script = (f"import sys; sys.path[:0] = [{str(TESTS)!r}, {str(TESTS / 'unit')!r}]\n"
              f"for name in {modules!r}: __import__(name)\n"
              "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow')\n"
              "assert not loaded, loaded\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_no_test_module_imports_another() -> None:
    offenders = {str(path.relative_to(TESTS)): sorted(name for name in _imported_modules(path)
                                                     if name.split(".")[0].startswith("test_"))
                 for path in sorted(TESTS.rglob("test_*.py"))}
    assert not {path: names for path, names in offenders.items() if names}
