"""TFRecord files without TensorFlow: the framing TensorFlow's ``tf.data.TFRecordDataset`` and
TF Serving's warmup reader read (tensorflow/core/lib/io/record_writer.cc), one record as

    uint64 length (little-endian) | uint32 masked CRC32C of the length | data
    | uint32 masked CRC32C of the data

The CRC32C comes from the ``crc32c`` package (hardware-accelerated where the CPU has it).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import crc32c

_MASK_DELTA = 0xA282EAD8
_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")
HEADER_BYTES = _LENGTH.size + _CRC.size
FOOTER_BYTES = _CRC.size


class TFRecordError(ValueError):
    """A file that is not TFRecord, or a record cut short or corrupted."""


def masked_crc(data: bytes) -> int:
    """TensorFlow's crc32c::Mask: the CRC rotated right by 15 bits plus a constant, so a
    record's CRC stored inside data does not look like a CRC of itself."""
    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
    """One record as it is written to a TFRecord file."""
    length = _LENGTH.pack(len(data))
    return b"".join((length, _CRC.pack(masked_crc(length)), data, _CRC.pack(masked_crc(data))))


def write_records(path: str | Path, records: Iterator[bytes] | list[bytes]) -> int:
    """Write ``records`` as a new TFRecord file; returns how many were written."""
    count = 0
    with open(path, "wb") as handle:
        for record in records:
            handle.write(frame(record))
            count += 1
    return count


def read_records(path: str | Path) -> Iterator[bytes]:
    """The records of a TFRecord file, checked against their CRCs."""
    with open(path, "rb") as handle:
        yield from iter_records(handle, str(path))


def iter_records(handle: BinaryIO, name: str = "<stream>") -> Iterator[bytes]:
    offset = 0
    while True:
        header = handle.read(HEADER_BYTES)
        if not header:
            return
        if len(header) < HEADER_BYTES:
            raise TFRecordError(f"{name}: truncated record header at offset {offset}")
        length_bytes, (length_crc,) = header[:_LENGTH.size], _CRC.unpack(header[_LENGTH.size:])
        if masked_crc(length_bytes) != length_crc:
            raise TFRecordError(f"{name}: corrupted record at offset {offset} (not a TFRecord "
                                "file?)")
        (length,) = _LENGTH.unpack(length_bytes)
        body = handle.read(length + FOOTER_BYTES)
        if len(body) < length + FOOTER_BYTES:
            raise TFRecordError(f"{name}: truncated record at offset {offset}")
        data = body[:length]
        if masked_crc(data) != _CRC.unpack(body[length:])[0]:
            raise TFRecordError(f"{name}: corrupted record data at offset {offset}")
        yield data
        offset += HEADER_BYTES + length + FOOTER_BYTES
