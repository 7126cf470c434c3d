"""Pixel Data written file to file, so no instance is ever whole in memory.

The instance's other attributes are written by pydicom; Pixel Data (7FE0,0010) is the last
element of every IOD the recorder writes (PS3.5 7.1: elements in ascending tag order), so it
is appended to the same file afterwards by these writers, in Explicit VR Little Endian (the
byte order and VR form of every transfer syntax the recorder uses, PS3.5 A.2, A.4).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

FRAGMENT_BYTES = 4 * 1024 * 1024
_PIXEL_DATA = (0x7FE0, 0x0010)
_ITEM = (0xFFFE, 0xE000)
_SEQUENCE_DELIMITER = (0xFFFE, 0xE0DD)
_UNDEFINED_LENGTH = 0xFFFFFFFF
# Explicit VR OB header: group, element, VR, 2 reserved bytes, 32-bit length (PS3.5 7.1.2).
_OB_HEADER = struct.Struct("<HH2sHI")
_ITEM_HEADER = struct.Struct("<HHI")


@dataclass(frozen=True)
class EncapsulatedFile:
    """Encapsulated Pixel Data (PS3.5 A.4) from a file holding the whole compressed stream
    (an MPEG-2 Transport Stream for video, PS3.5 8.2.5-8.2.8): an empty Basic Offset Table,
    then the stream in fragments of at most ``fragment_bytes``, each of even length
    (the last padded with one 0x00 when the stream's length is odd)."""

    path: Path
    fragment_bytes: int = FRAGMENT_BYTES

    def __call__(self, fp: BinaryIO) -> None:
        """Append the Pixel Data element to ``fp``: undefined length, ended by a Sequence
        Delimitation Item (PS3.5 A.4)."""
        fp.write(_OB_HEADER.pack(*_PIXEL_DATA, b"OB", 0, _UNDEFINED_LENGTH))
        fp.write(_ITEM_HEADER.pack(*_ITEM, 0))  # empty Basic Offset Table
        with open(self.path, "rb") as source:
            while chunk := source.read(self.fragment_bytes):
                if len(chunk) % 2:
                    chunk += b"\0"
                fp.write(_ITEM_HEADER.pack(*_ITEM, len(chunk)))
                fp.write(chunk)
        fp.write(_ITEM_HEADER.pack(*_SEQUENCE_DELIMITER, 0))


@dataclass(frozen=True)
class NativeFrames:
    """Native Pixel Data (OB, defined length ``length`` bytes, PS3.5 8.1.1) from chunks
    produced one at a time by ``chunks()``; padded to even length."""

    length: int
    chunks: Callable[[], Iterable[bytes]]

    def __call__(self, fp: BinaryIO) -> None:
        """Append the Pixel Data element to ``fp``; ValueError when ``chunks()`` gave other than
        the ``length`` bytes its header already declared."""
        padded = self.length + (self.length % 2)
        fp.write(_OB_HEADER.pack(*_PIXEL_DATA, b"OB", 0, padded))
        written = 0
        for chunk in self.chunks():
            fp.write(chunk)
            written += len(chunk)
        if written != self.length:
            raise ValueError(f"native Pixel Data: {written} bytes written, {self.length} "
                             "declared")
        if padded != self.length:
            fp.write(b"\0")
