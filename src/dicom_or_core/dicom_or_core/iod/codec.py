"""Real-time video encoding for DICOM video IODs with PyAV (libx264, libx265, mpeg2video).

The codec and transfer syntax follow from the stream's size and rate and the level limits
of the standards the DICOM transfer syntaxes name (PS3.5 8.2.5-8.2.10, 10.13-10.15):

* H.264 High Profile Level 4.1, ``1.2.840.10008.1.2.4.102`` (PS3.5 8.2.7): at most 8192
  macroblocks per frame and 245760 macroblocks/s (1920x1080 at 30 fps fits: 8160 MB x 30).
* H.264 High Profile Level 4.2 for 2D video, ``1.2.840.10008.1.2.4.104`` (PS3.5 8.2.8):
  8704 MB per frame, 522240 MB/s (1080p50/60).
* HEVC Main Profile Level 5.1, ``1.2.840.10008.1.2.4.107`` (PS3.5 8.2.10): above 1080p,
  up to 8912896 luma samples per picture and 534773760 per second (4K60).
* MPEG-2 Main Profile Main Level ``.100`` (<= 720x576, <= 30 fps) or High Level ``.101``
  (<= 1920x1152) on request (``codec="mpeg2"``).

The encoder is configured for zero latency (no B-frames, no look-ahead): every input frame
produces its packet at once, so the recorder can journal each frame durably as soon as it
arrives (see :mod:`dicom_or_core.archive.spool`). Rate control is constant quality (CRF)
capped by the level's maximum bit rate (VBV), so quality holds and the stream never exceeds
its level.

The video bit stream is carried in an MPEG-2 Transport Stream (ISO/IEC 13818-1), the
container PS3.5 8.2.7/8.2.8 names, with the PTS of each frame taken from its acquisition
stamp (90 kHz clock, relative to the first frame of the instance): a dropped frame keeps its
gap in the decoded timeline as well as in FrameTimeVector.
"""

from __future__ import annotations

import io
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np
from pydicom.uid import HEVCMP51, MPEG2MPHL, MPEG2MPML, MPEG4HP41, MPEG4HP422D

from dicom_or_core.model.errors import DicomOrError

PTS_HZ = 90_000  # MPEG system clock for PTS/DTS (ISO/IEC 13818-1 2.4.3.7)
CODECS = ("auto", "h264", "hevc", "mpeg2")
_AV_FORMATS = {"rgb8": "rgb24", "bgr8": "bgr24", "mono8": "gray"}


@dataclass(frozen=True)
class CodecChoice:
    """The encoder and the DICOM Transfer Syntax whose constraints it satisfies."""

    name: str                  # h264, hevc, mpeg2
    encoder: str               # PyAV / FFmpeg encoder name
    transfer_syntax_uid: str
    level: str
    compression_method: str    # LossyImageCompressionMethod (0028,2114), PS3.3 C.7.6.1.1.5
    max_bit_rate_kbps: int     # the level's maximum bit rate (VBV cap)
    options: dict[str, str] = field(default_factory=dict)


def _macroblocks(rows: int, columns: int) -> int:
    return math.ceil(rows / 16) * math.ceil(columns / 16)


def choose_codec(rows: int, columns: int, rate_hz: float, codec: str = "auto") -> CodecChoice:
    """Pick codec + transfer syntax for a ``columns`` x ``rows`` stream at ``rate_hz``.

    ``auto`` prefers H.264 Level 4.1, then Level 4.2, then HEVC Main 5.1; ``h264``,
    ``hevc`` or ``mpeg2`` force a family. A size or rate beyond every level of the family
    is refused with a DicomOrError (an out-of-level stream would not be a valid instance).
    """
    if codec not in CODECS:
        raise DicomOrError("video_codec", f"must be one of {', '.join(CODECS)}", codec)
    if rows % 2 or columns % 2:
        raise DicomOrError("descriptor.rows", "4:2:0 video needs even rows and columns "
                           "(use the lossless mode for odd sizes)", (rows, columns))
    mbs = _macroblocks(rows, columns)
    fps = max(rate_hz, 1e-3)
    if codec in ("auto", "h264"):
        if mbs <= 8192 and mbs * fps <= 245760 and max(rows, columns) <= 16 * 256:
            return CodecChoice("h264", "libx264", MPEG4HP41, "4.1",
                               "ISO_14496_10", 62500)
        if mbs <= 8704 and mbs * fps <= 522240 and max(rows, columns) <= 16 * 264:
            return CodecChoice("h264", "libx264", MPEG4HP422D, "4.2",
                               "ISO_14496_10", 62500)
        if codec == "h264":
            raise DicomOrError("video_codec", "the stream exceeds H.264 High Profile Level "
                               "4.2 (PS3.5 8.2.8); use hevc", (columns, rows, rate_hz))
    if codec in ("auto", "hevc"):
        luma = rows * columns
        if luma <= 8912896 and luma * fps <= 534773760 and max(rows, columns) <= 8444:
            return CodecChoice("hevc", "libx265", HEVCMP51, "5.1",
                               "ISO_23008_2", 40000)
        raise DicomOrError("video_codec", "the stream exceeds HEVC Main Profile Level 5.1 "
                           "(PS3.5 8.2.10)", (columns, rows, rate_hz))
    # MPEG-2 Main Profile (ISO/IEC 13818-2 Table 8-10/8-11); PS3.5 8.2.5 fixes the frame
    # rate to 25 (PAL) or 29.97/30 (NTSC) frames per second.
    if not any(abs(fps - r) < 0.01 for r in (25.0, 29.97, 30.0)):
        raise DicomOrError("video_codec", "MPEG-2 needs a nominal rate of 25 or 30 fps "
                           "(PS3.5 8.2.5)", rate_hz)
    if rows <= 576 and columns <= 720 and fps <= 30:
        return CodecChoice("mpeg2", "mpeg2video", MPEG2MPML, "MP@ML",
                           "ISO_13818_2", 15000)
    if rows <= 1152 and columns <= 1920 and rows * columns * fps <= 62668800:
        return CodecChoice("mpeg2", "mpeg2video", MPEG2MPHL, "MP@HL",
                           "ISO_13818_2", 80000)
    raise DicomOrError("video_codec", "the stream exceeds MPEG-2 Main Profile High Level",
                       (columns, rows, rate_hz))


@dataclass
class EncodedPacket:
    """One encoded frame: PTS/DTS in 90 kHz ticks from the instance's first frame."""

    pts: int
    dts: int
    keyframe: bool
    data: bytes


class PacketEncoder:
    """Encode frames one by one into packets (zero latency: one packet per frame).

    ``quality`` is the CRF (H.264/HEVC; lower is better) or the fixed quantiser for MPEG-2.
    ``x264_extra``: more ``key=value`` x264 options (``:``-separated), appended to the ones
    the transfer syntax needs (see :func:`dicom_or_core.iod.h264.live_encoder`).
    """

    def __init__(self, choice: CodecChoice, rows: int, columns: int, pixel_encoding: str,
                 rate_hz: float, quality: int = 18, preset: str = "superfast",
                 threads: int = 0, x264_extra: str = "") -> None:
        if pixel_encoding not in _AV_FORMATS:
            raise DicomOrError("descriptor.pixel_encoding", "must be rgb8, bgr8 or mono8",
                               pixel_encoding)
        self.choice = choice
        self.rows, self.columns = rows, columns
        self.in_format = _AV_FORMATS[pixel_encoding]
        self.rate_hz = rate_hz
        ctx = av.CodecContext.create(choice.encoder, "w")
        ctx.width, ctx.height = columns, rows
        ctx.pix_fmt = "yuv420p"
        ctx.framerate = _fraction(rate_hz)
        # MPEG-2 only knows its fixed frame rates; it counts frames, the others 90 kHz ticks.
        ctx.time_base = 1 / ctx.framerate if choice.name == "mpeg2" else Fraction(1, PTS_HZ)
        ctx.thread_count = threads
        gop = max(1, round(rate_hz))  # one random access point per second
        ctx.gop_size = gop
        ctx.max_b_frames = 0
        opts: dict[str, str] = {}
        if choice.name == "h264":
            level = choice.level.replace(".", "")
            opts = {"preset": preset, "tune": "zerolatency", "profile": "high",
                    "crf": str(quality), "level": choice.level,
                    "x264-params": f"level={level}:vbv-maxrate={choice.max_bit_rate_kbps}:"
                                   f"vbv-bufsize={choice.max_bit_rate_kbps}:keyint={gop}:"
                                   "bframes=0:rc-lookahead=0:sync-lookahead=0:repeat-headers=1"
                                   + (f":{x264_extra}" if x264_extra else "")}
        elif choice.name == "hevc":
            opts = {"preset": preset, "tune": "zerolatency",
                    "x265-params": f"crf={quality}:profile=main:level-idc=51:vbv-maxrate="
                                   f"{choice.max_bit_rate_kbps}:vbv-bufsize="
                                   f"{choice.max_bit_rate_kbps}:keyint={gop}:bframes=0:"
                                   "repeat-headers=1:log-level=error"}
        else:
            # Frame threads would delay each packet by a frame; slices do not.
            ctx.thread_type = "SLICE"
            ctx.thread_count = 1
            ctx.bit_rate = choice.max_bit_rate_kbps * 1000 // 2
            # Main Profile VBV buffer: 1835008 bits at High Level, 1835008 at Main too.
            opts = {"maxrate": str(choice.max_bit_rate_kbps * 1000), "bufsize": "1835008"}
            ctx.flags |= av.codec.context.Flags.qscale
            ctx.global_quality = max(1, quality // 6) * 118  # FF_QP2LAMBDA
        ctx.options = {k: v for k, v in opts.items()}
        ctx.open()
        self._ctx = ctx
        self._pending: deque[int] = deque()

    def encode(self, image: np.ndarray, pts: int) -> list[EncodedPacket]:
        """Encode one frame (rows x columns [x 3] uint8) presented at ``pts`` (90 kHz)."""
        expected = (self.rows, self.columns) if self.in_format == "gray" else \
            (self.rows, self.columns, 3)
        if image.shape != expected or image.dtype != np.uint8:
            raise DicomOrError("frame", f"must be a uint8 image of shape {expected}",
                               (image.shape, str(image.dtype)))
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format=self.in_format)
        frame = frame.reformat(format="yuv420p")
        frame.pts = round(pts * self._ctx.time_base.denominator
                          / (self._ctx.time_base.numerator * PTS_HZ))
        frame.time_base = self._ctx.time_base
        self._pending.append(pts)
        return self._stamped(self._ctx.encode(frame))

    def _stamped(self, packets: list[av.Packet]) -> list[EncodedPacket]:
        # No B-frames: packets leave in input order, each decoded when presented, so
        # PTS = DTS = that frame's own stamp (exact, whatever the encoder's time base).
        out = []
        for p in packets:
            stamp = self._pending.popleft()
            out.append(EncodedPacket(stamp, stamp, bool(p.is_keyframe), bytes(p)))
        return out

    @property
    def delayed_frames(self) -> int:
        """Frames given to the encoder whose packet has not come out yet (x264/x265 in
        zero-latency mode: 0; FFmpeg's MPEG-2 encoder: 1)."""
        return len(self._pending)

    def flush(self) -> list[EncodedPacket]:
        """Drain the encoder: the packets of the frames it still holds."""
        return self._stamped(self._ctx.encode(None))


def _fraction(rate_hz: float) -> Fraction:
    return Fraction(rate_hz).limit_denominator(1001)


class TsMuxer:
    """Packets into an MPEG-2 Transport Stream as they come (PTS/DTS from the packets), to a
    file path or a binary file object: a recorder muxes while recording, so closing a
    segment has nothing left to mux."""

    def __init__(self, target: str | Path | BinaryIO, choice: CodecChoice, rows: int,
                 columns: int, rate_hz: float) -> None:
        codec_name = {"h264": "h264", "hevc": "hevc", "mpeg2": "mpeg2video"}[choice.name]
        self._container = av.open(str(target) if isinstance(target, Path) else target, "w",
                                  format="mpegts")
        self._stream = self._container.add_stream(codec_name, rate=_fraction(rate_hz))
        self._stream.width, self._stream.height = columns, rows
        self._stream.time_base = Fraction(1, PTS_HZ)
        self.packets = 0

    def mux(self, p: EncodedPacket) -> None:
        """Mux one packet with its own PTS/DTS (90 kHz, PTS_HZ), zero at the first frame."""
        packet = av.Packet(p.data)
        packet.stream = self._stream
        packet.time_base = self._stream.time_base
        # The TS muxer adds a fixed 1.4 s PTS offset only when told to; keep the stamps'
        # own zero so decoders see PTS = time since the first frame.
        packet.pts, packet.dts = p.pts, p.dts
        packet.is_keyframe = p.keyframe
        self._container.mux(packet)
        self.packets += 1

    def close(self) -> None:
        """Flush the muxer's last Transport Stream packets and close the container."""
        self._container.close()


def mux_mpegts(choice: CodecChoice, rows: int, columns: int, rate_hz: float,
               packets: Iterable[EncodedPacket]) -> bytes:
    """The packets as one MPEG-2 Transport Stream in memory (tests, snapshots)."""
    out = io.BytesIO()
    muxer = TsMuxer(out, choice, rows, columns, rate_hz)
    for p in packets:
        muxer.mux(p)
    muxer.close()
    return out.getvalue()


def decode_frames(bitstream: bytes, out_format: str = "rgb24") -> list[tuple[float, np.ndarray]]:
    """Decode a stored video bit stream (MPEG-TS) into (PTS seconds, image) pairs."""
    frames = []
    with av.open(io.BytesIO(bitstream), "r") as container:
        stream = container.streams.video[0]
        start = None
        for frame in container.decode(stream):
            t = float(frame.pts * frame.time_base) if frame.pts is not None else float("nan")
            start = t if start is None else start
            frames.append((t - start, frame.to_ndarray(format=out_format)))
    return frames


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 images, dB."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)
