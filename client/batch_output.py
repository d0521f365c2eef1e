"""The resumable output of batch-predict.

Each finished batch is written at once to ``OUT.partial/NNNNNNNN.npz`` (atomically, by
rename), next to a manifest naming the inputs and the model. A run that stops — killed,
failed, or ``--max-batches`` reached — leaves that folder; the next run with ``--resume``
checks the manifest and sends only the batches that have no file yet. When every batch is
there, the batches are joined in input order into ``OUT`` (an uncompressed .npz, streamed
array by array so it never needs all outputs in memory) and the folder is removed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pyserving.client.array_files import save_npz

MANIFEST = "manifest.json"
_CHUNK = re.compile(r"^(\d{8})\.npz$")


class OutputError(Exception):
    """The output folder cannot be used for this run."""


class BatchOutput:
    """Batch files of one run in ``<out>.partial``, joined into ``<out>`` when complete."""

    def __init__(self, out: str | Path, manifest: Mapping[str, Any], *,
                 resume: bool = False) -> None:
        self.out = Path(out)
        self.folder = self.out.with_name(self.out.name + ".partial")
        manifest = json.loads(json.dumps(manifest))  # as it reads back
        if self.folder.exists():
            if not resume:
                raise OutputError(f"{self.folder} holds an interrupted run: pass --resume to "
                                  "continue it, or delete it")
            found = json.loads((self.folder / MANIFEST).read_text())
            if found != manifest:
                changed = sorted(k for k in manifest.keys() | found.keys()
                                 if manifest.get(k) != found.get(k))
                raise OutputError(f"{self.folder} belongs to a different run (differs in: "
                                  f"{', '.join(changed)}); delete it to start over")
        else:
            self.folder.mkdir(parents=True)
            (self.folder / MANIFEST).write_text(json.dumps(manifest, indent=1))

    def done(self) -> set[int]:
        """The indices of the batches already written."""
        return {int(m.group(1)) for m in map(_CHUNK.match, os.listdir(self.folder)) if m}

    def write(self, index: int, outputs: Mapping[str, np.ndarray]) -> None:
        staging = self.folder / f"{index:08d}.tmp"
        with open(staging, "wb") as file:
            save_npz(file, outputs)
        os.replace(staging, self.folder / f"{index:08d}.npz")

    def assemble(self, batches: int) -> None:
        """Join batches 0..batches-1 into the output file and remove the folder."""
        chunks = [self.folder / f"{index:08d}.npz" for index in range(batches)]
        missing = [c.name for c in chunks if not c.exists()]
        if missing:
            raise OutputError(f"{len(missing)} batches are missing, e.g. {missing[0]}")
        layouts = _layouts(chunks)
        staging = self.out.with_name(self.out.name + ".tmp")
        with zipfile.ZipFile(staging, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for name, (dtype, shape) in layouts.items():
                with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array_header_1_0(member, {
                        "descr": np.lib.format.dtype_to_descr(dtype),
                        "fortran_order": False, "shape": shape})
                    for chunk in chunks:
                        with np.load(chunk, allow_pickle=False) as arrays:
                            member.write(_rows(arrays[name]).astype(dtype).tobytes())
        os.replace(staging, self.out)
        shutil.rmtree(self.folder)


def _rows(array: np.ndarray) -> np.ndarray:
    return array.reshape(1) if array.ndim == 0 else array


def _layouts(chunks: list[Path]) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """Each output's dtype and joined shape, from the batch files' headers."""
    dtypes: dict[str, list[np.dtype]] = {}
    shapes: dict[str, list[tuple[int, ...]]] = {}
    for chunk in chunks:
        with zipfile.ZipFile(chunk) as archive:
            for info in archive.infolist():
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) \
                        else np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(member)
                name = info.filename.removesuffix(".npy")
                dtypes.setdefault(name, []).append(dtype)
                shapes.setdefault(name, []).append(shape or (1,))
    layouts = {}
    for name, dtype_list in dtypes.items():
        if len(dtype_list) != len(chunks):
            raise OutputError(f"output {name!r} is missing from some batches")
        tails = {shape[1:] for shape in shapes[name]}
        if len(tails) != 1:
            raise OutputError(f"output {name!r} changes shape between batches "
                              f"({sorted(tails)}), so its batches cannot be joined")
        rows = sum(shape[0] for shape in shapes[name])
        layouts[name] = (np.result_type(*dtype_list), (rows, *tails.pop()))
    return layouts
