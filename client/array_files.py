"""Arrays in files: .npy and .npz (memory-mapped when stored uncompressed), JSON, and JSON
output of arrays. Used by the command line and the bulk and compare tools."""

from __future__ import annotations

import base64
import io
import json
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from pyserving.client.tensors import as_tensor_array

_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature ... file name length, extra length


def load_npy(path: str | Path) -> np.ndarray:
    return np.load(path, mmap_mode="r", allow_pickle=False)


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of an .npz; uncompressed members (np.savez) are memory-mapped, so a file
    larger than memory streams."""
    arrays = {}
    with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
        for info in archive.infolist():
            name = info.filename.removesuffix(".npy")
            mapped = _mapped_member(path, raw, info) \
                if info.compress_type == zipfile.ZIP_STORED else None
            arrays[name] = mapped if mapped is not None else np.load(
                io.BytesIO(archive.read(info)), allow_pickle=False)
    return arrays


def _mapped_member(path: str | Path, raw: Any, info: zipfile.ZipInfo) -> np.ndarray | None:
    raw.seek(info.header_offset)
    signature, name_length, extra_length = _LOCAL_HEADER.unpack(raw.read(_LOCAL_HEADER.size))
    if signature != b"PK\x03\x04":
        return None
    raw.seek(info.header_offset + _LOCAL_HEADER.size + name_length + extra_length)
    version = np.lib.format.read_magic(raw)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) \
        else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read_header(raw)
    if dtype.hasobject or not np.prod(shape, dtype=np.int64):
        return None
    return np.memmap(path, dtype=dtype, mode="r", offset=raw.tell(), shape=shape,
                     order="F" if fortran_order else "C")


def save_npz(file: str | Path | BinaryIO, arrays: Mapping[str, np.ndarray]) -> None:
    """Write arrays uncompressed (so they memory-map back); strings become numpy bytes."""
    # Typed Any: np.savez's keyword arguments also name its allow_pickle flag.
    named: dict[str, Any] = {name: storable(array) for name, array in arrays.items()}
    np.savez(file, **named)


def storable(array: np.ndarray) -> np.ndarray:
    """An array np.save keeps without pickling: bytes objects as fixed-width bytes (numpy
    drops trailing NUL bytes), bfloat16 as float32."""
    if array.dtype.kind == "O":
        return array.astype(np.bytes_) if array.size else array.astype("S1")
    if array.dtype.kind == "V" or array.dtype.name == "bfloat16":
        return array.astype(np.float32)
    return array


def inputs_from_json(value: Any) -> dict[str, Any]:
    """Named inputs from JSON: ``{"x": [...]}``, or TF Serving REST's ``{"inputs": {...}}``
    (columns) or ``{"instances": [{"x": ...}, ...]}`` (rows)."""
    if isinstance(value, dict) and set(value) == {"inputs"} and isinstance(value["inputs"],
                                                                          dict):
        return value["inputs"]
    if isinstance(value, dict) and set(value) == {"instances"}:
        rows = value["instances"]
        if not rows or not all(isinstance(row, dict) for row in rows):
            raise ValueError('"instances" must be a non-empty list of objects of named inputs')
        return {name: [row[name] for row in rows] for name in rows[0]}
    if not isinstance(value, dict):
        raise ValueError("JSON inputs must be an object of named inputs")
    return value


def load_inputs(path: str | Path) -> dict[str, np.ndarray]:
    """Named inputs from an .npz or a JSON file (typed as tf.make_tensor_proto types them)."""
    path = Path(path)
    if path.suffix == ".npz":
        return load_npz(path)
    if path.suffix == ".json":
        return {name: as_tensor_array(value)
                for name, value in inputs_from_json(json.loads(path.read_text())).items()}
    raise ValueError(f"{path}: inputs come from .npz or .json files")


def jsonable(array: np.ndarray) -> Any:
    """An array as JSON values: bytes as UTF-8 text (else {"b64": ...}), complex numbers as
    [real, imag], floats in their shortest exact form."""
    array = np.asarray(array)
    kind = array.dtype.kind
    if kind in "OS":
        return np.vectorize(_jsonable_bytes, otypes=[object])(array).tolist() \
            if array.size else array.tolist()
    if kind == "c":
        return jsonable(np.stack([array.real, array.imag], axis=-1))
    if kind == "V" or array.dtype.name == "bfloat16":
        array = array.astype(np.float32)
        kind = "f"
    if kind == "f" and array.dtype != np.float64:
        return array.astype(str).astype(np.float64).tolist()
    return array.tolist()


def _jsonable_bytes(value: Any) -> Any:
    if isinstance(value, str):
        return value
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(bytes(value)).decode("ascii")}
