"""The model config every worker of ``--workers N`` follows: the last one a
HandleReloadConfigRequest applied on any worker.

One text-format ModelServerConfig file in the supervisor's run directory, headed by a
generation that grows with each reload (``# generation N``, a comment to the parser). Writers
take a lock file, so generations never repeat, and replace the file in one step, so readers
see the old or the new config, never half of one.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from google.protobuf import text_format

from pyserving.server.config import ModelServerConfig

_HEADER = "# generation "


class SharedModelConfig:
    """The latest reloaded config of a group of workers, and its generation (0: none yet)."""

    def __init__(self, directory: Path) -> None:
        self._path = directory / "model_config.txt"
        self._lock_path = directory / "model_config.lock"

    def publish(self, config: ModelServerConfig) -> int:
        """Make ``config`` the latest; returns its generation."""
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            generation = self.generation() + 1
            scratch = self._path.with_name(f".{self._path.name}.{os.getpid()}")
            scratch.write_text(f"{_HEADER}{generation}\n"
                               f"{text_format.MessageToString(config)}", encoding="utf-8")
            os.replace(scratch, self._path)
        return generation

    def generation(self) -> int:
        header, _ = self._read()
        return int(header.removeprefix(_HEADER)) if header else 0

    def newer_than(self, generation: int) -> tuple[int, ModelServerConfig] | None:
        """The latest config and its generation if that is not ``generation``, else None."""
        header, body = self._read()
        latest = int(header.removeprefix(_HEADER)) if header else 0
        if latest == generation:
            return None
        return latest, text_format.Parse(body, ModelServerConfig())

    def _read(self) -> tuple[str, str]:
        """The header line and the config text ("" and "" before the first publish)."""
        try:
            text = self._path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return "", ""
        header, _, body = text.partition("\n")
        return header, body
