"""Synthetic endoscope video whose pixels carry their own frame number and capture time.

Every frame has a *code band*: a grid of black / white cells in its top rows that encodes

    sync byte (8 bits) | frame sequence (32 bits) | capture time ns (64 bits) | CRC-16 (16 bits)

so a receiver - a subscriber, the recorder after decoding the archived H.264 / JPEG, a
benchmark in another process - measures loss, reordering and latency from the image alone,
with no side channel. Cells are large (at least 4 px, about 1/60 of the short side) and use
the levels 16 / 235 (video range), so the band survives lossy compression at default quality:
a decoder averages the centre of each cell and thresholds at mid-grey; the CRC rejects a frame
whose band did not survive instead of returning a wrong number.

Below the band the frame shows moving content (a scrolling colour gradient and a moving
"instrument" disc), so codecs and displays see realistic motion. This module is ROS-free.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass

import numpy as np

from dicom_or_core.model.errors import DicomOrError
from dicom_or_core.model.pixels import CHANNELS

SYNC = 0xA5
LOW, HIGH = 16, 235
_BITS = 8 + 32 + 64 + 16
MIN_WIDTH, MIN_HEIGHT = 96, 64


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no final XOR) of
    ``data``: the standard library's ``binascii.crc_hqx`` seeded with 0xFFFF."""
    return binascii.crc_hqx(data, 0xFFFF)


@dataclass(frozen=True)
class BandLayout:
    """Where the code band's cells are in a frame of a given size."""

    width: int
    height: int
    cell: int
    columns: int
    rows: int

    @property
    def band_height(self) -> int:
        """Pixel rows the code band takes at the top of the frame."""
        return self.rows * self.cell


def layout(width: int, height: int) -> BandLayout:
    """The code band layout of a ``width`` x ``height`` frame (the same on both ends)."""
    if width < MIN_WIDTH or height < MIN_HEIGHT:
        raise DicomOrError("width", f"a synthetic frame needs at least {MIN_WIDTH}x"
                           f"{MIN_HEIGHT} pixels", (width, height))
    cell = max(4, min(width, height) // 60)
    columns = width // cell
    rows = -(-_BITS // columns)
    if rows * cell > height // 2:
        raise DicomOrError("height", "frame too small for the code band", (width, height))
    return BandLayout(width, height, cell, columns, rows)


def _bits(sequence: int, time_ns: int) -> np.ndarray:
    payload = (sequence & 0xFFFFFFFF).to_bytes(4, "big") + \
        (time_ns & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big")
    data = bytes([SYNC]) + payload + crc16(payload).to_bytes(2, "big")
    return np.unpackbits(np.frombuffer(data, np.uint8))


def encode_band(frame: np.ndarray, sequence: int, time_ns: int) -> np.ndarray:
    """Write the code band for (``sequence``, ``time_ns``) into ``frame`` in place.

    ``frame`` is H x W (mono) or H x W x C uint8; every channel gets the same level so the
    band reads the same in RGB, BGR and grey.
    """
    height, width = frame.shape[:2]
    lay = layout(width, height)
    bits = _bits(sequence, time_ns)
    cells = np.zeros(lay.rows * lay.columns, np.uint8)
    cells[:bits.size] = bits
    grid = np.where(cells.reshape(lay.rows, lay.columns), HIGH, LOW).astype(np.uint8)
    band = np.repeat(np.repeat(grid, lay.cell, axis=0), lay.cell, axis=1)
    used = lay.columns * lay.cell
    if frame.ndim == 3:
        frame[:lay.band_height, :used] = band[:, :, None]
        frame[:lay.band_height, used:] = LOW
    else:
        frame[:lay.band_height, :used] = band
        frame[:lay.band_height, used:] = LOW
    return frame


def decode_band(frame: np.ndarray) -> tuple[int, int] | None:
    """(sequence, capture time ns) read from a frame's code band, or None when the band is
    missing or damaged (sync byte or CRC mismatch)."""
    height, width = frame.shape[:2]
    try:
        lay = layout(width, height)
    except DicomOrError:
        return None
    # Only the band's rows are read: decoding stays cheap at 4K.
    band = np.asarray(frame[:lay.band_height, :lay.columns * lay.cell], dtype=np.float32)
    if band.ndim == 3:
        band = band.mean(axis=2)
    margin = lay.cell // 4
    cells = band.reshape(lay.rows, lay.cell, lay.columns, lay.cell)
    inner = cells[:, margin:lay.cell - margin, :, margin:lay.cell - margin]
    means = inner.mean(axis=(1, 3)).reshape(-1)[:_BITS]
    bits = (means > (LOW + HIGH) / 2).astype(np.uint8)
    data = np.packbits(bits).tobytes()
    if data[0] != SYNC:
        return None
    payload = data[1:13]
    if int.from_bytes(data[13:15], "big") != crc16(payload):
        return None
    return int.from_bytes(payload[:4], "big"), int.from_bytes(payload[4:], "big")


class PatternSource:
    """Moving test pattern frames of a fixed size and pixel encoding.

    The background is a colour gradient pre-rendered twice as wide as the frame; each frame
    copies a window of it shifted by a few pixels (one contiguous copy, fast even at 4K), then
    draws a moving disc ("instrument") and the code band.
    """

    def __init__(self, width: int, height: int, encoding: str = "rgb8") -> None:
        if encoding not in CHANNELS:
            raise DicomOrError("pixel_format", f"must be one of {', '.join(CHANNELS)}",
                               encoding)
        self.layout = layout(width, height)
        self.width, self.height, self.encoding = width, height, encoding
        ys, xs = np.mgrid[0:height, 0:2 * width].astype(np.float32)
        phase = 2 * np.pi * xs / width
        red = 128 + 90 * np.sin(phase)
        green = 110 + 60 * np.sin(phase + 2.1) * (ys / height)
        blue = 120 + 80 * np.cos(phase + 4.2)
        rgb = np.stack([red, green, blue], axis=2).clip(0, 255).astype(np.uint8)
        if encoding == "bgr8":
            rgb = np.ascontiguousarray(rgb[:, :, ::-1])
        if encoding == "mono8":
            rgb = np.ascontiguousarray(rgb.mean(axis=2).astype(np.uint8))
        self._background = rgb
        self._step = max(1, width // 240)
        self._radius = max(4, min(width, height) // 12)
        shape = (height, width) if encoding == "mono8" else (height, width, 3)
        self._frame = np.empty(shape, np.uint8)

    @property
    def shape(self) -> tuple[int, ...]:
        """The frames' array shape: (height, width) for mono8, else (height, width, 3)."""
        return self._frame.shape

    def frame(self, sequence: int, time_ns: int) -> np.ndarray:
        """Frame number ``sequence`` captured at ``time_ns``; the returned array is reused
        by the next call (copy it, or serialise it, before asking for another)."""
        offset = (sequence * self._step) % self.width
        self._frame[...] = self._background[:, offset:offset + self.width]
        # The "instrument": a bright disc on a Lissajous path below the code band.
        t = sequence / 30.0
        top = self.layout.band_height + self._radius
        cx = int(self.width / 2 + (self.width / 2 - self._radius - 1) * np.sin(0.7 * t))
        cy = int(top + (self.height - top - self._radius - 1) * (0.5 + 0.5 * np.sin(1.1 * t)))
        r = self._radius
        y0, y1 = max(cy - r, 0), min(cy + r, self.height)
        x0, x1 = max(cx - r, 0), min(cx + r, self.width)
        yy, xx = np.ogrid[y0:y1, x0:x1]
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        self._frame[y0:y1, x0:x1][mask] = 230
        return encode_band(self._frame, sequence, time_ns)
