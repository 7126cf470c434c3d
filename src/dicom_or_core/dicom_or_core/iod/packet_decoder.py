"""Decoding a live H.264 stream access unit by access unit (ROS-free).

A driver that encodes where the camera is publishes ``VideoPacket`` messages: one ITU-T
H.264 Annex B access unit each (start codes included), SPS + PPS in every key frame (an
IDR access unit), one key frame per second, no B-frames (decode order = presentation
order), and a gap-free sequence number in the sample context. Consumers that need pixels
(the OR view, the bridge's live snapshot) feed the access units, in order, to a
:class:`PacketDecoder`:

* decoding starts at the first key frame: a P access unit references pictures the decoder
  never saw, so everything before the first key frame is skipped (counted, not an error);
* a sequence gap (a lost access unit) or a step back (reordering or a new Series) makes the
  decoder skip everything up to the next key frame, which refreshes every reference
  (ITU-T H.264 8.2.5.1: an IDR picture marks all reference pictures unused), so no
  corrupted picture is ever returned;
* decoding is cheap to call for every access unit: it returns :class:`DecodedPicture`
  objects holding the decoder's YUV picture, and converts to RGB / BGR / grey only when
  asked (:meth:`DecodedPicture.to_ndarray`), so a caller that shows only the newest picture
  converts one picture, not every one;
* bad input (not Annex B, an empty access unit, bytes the decoder rejects) raises
  :class:`PacketDecodeError` (a :class:`~dicom_or_core.model.errors.DicomOrError`) with the
  reason, and the decoder waits for the next key frame: a caller catches one exception
  type and never lets a traceback out of a callback.

The decoder runs with one thread and FFmpeg's low-delay flag, so every access unit gives
its picture at once (frame threads would hold pictures back by a frame per thread).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NoReturn

import av
import numpy as np

from dicom_or_core.iod.h264 import NAL_IDR, nal_types, starts_with_start_code
from dicom_or_core.model.errors import DicomOrError

FORMATS = ("h264",)            # VideoPacket.format values this decoder reads
OUTPUT_FORMATS = {"rgb8": "rgb24", "bgr8": "bgr24", "mono8": "gray",
                  "rgb24": "rgb24", "bgr24": "bgr24", "gray": "gray"}


class PacketDecodeError(DicomOrError):
    """An access unit that cannot be decoded; the decoder resumes at the next key frame."""

    def __init__(self, rule: str, value: object = None) -> None:
        super().__init__("video_packet", rule, value)


@dataclass(frozen=True)
class DecodedPicture:
    """One decoded picture, still in the decoder's format (YUV 4:2:0 for H.264 High
    Profile 8-bit); :meth:`to_ndarray` converts it."""

    frame: Any            # av.VideoFrame
    sequence: int | None  # the sequence number of the access unit it was decoded from
    pts: int | None       # that access unit's PTS, 90 kHz

    @property
    def width(self) -> int:
        """Columns of the picture."""
        return int(self.frame.width)

    @property
    def height(self) -> int:
        """Rows of the picture."""
        return int(self.frame.height)

    def to_ndarray(self, encoding: str = "rgb8") -> np.ndarray:
        """The picture as a uint8 array: ``rgb8`` / ``bgr8`` (rows x columns x 3) or
        ``mono8`` (rows x columns); FFmpeg's names ``rgb24`` / ``bgr24`` / ``gray`` too."""
        if encoding not in OUTPUT_FORMATS:
            raise DicomOrError("encoding", "must be rgb8, bgr8 or mono8", encoding)
        return np.asarray(self.frame.to_ndarray(format=OUTPUT_FORMATS[encoding]))


@dataclass
class DecoderCounts:
    """What the decoder did with the access units it was given."""

    packets: int = 0       # access units given to decode()
    pictures: int = 0      # pictures decoded
    skipped: int = 0       # access units skipped while waiting for a key frame
    gaps: int = 0          # sequence gaps and steps back (each: wait for a key frame)
    errors: int = 0        # access units that raised PacketDecodeError
    last_error: str = field(default="")


class PacketDecoder:
    """Decodes one stream's access units in order; see the module docstring."""

    def __init__(self, codec: str = "h264") -> None:
        if codec not in FORMATS:
            raise DicomOrError("video_codec", f"must be one of {', '.join(FORMATS)}", codec)
        self.codec = codec
        self.counts = DecoderCounts()
        self._context: Any = None
        self._last_sequence: int | None = None
        self._waiting = True

    @property
    def waiting_for_key_frame(self) -> bool:
        """True until a key frame arrived, and again after a gap or an error."""
        return self._waiting

    def reset(self) -> None:
        """Forget the stream so far (a new Series, a resubscription): skip up to the next
        key frame, and start a fresh decoder there."""
        self._context = None
        self._last_sequence = None
        self._waiting = True

    def decode(self, data: Any, key_frame: bool, sequence: int | None = None,
               pts: int | None = None, fmt: str = "h264") -> list[DecodedPicture]:
        """Decode one access unit (bytes or any buffer: the message's ``data``); return the
        pictures it completes (no B-frames, low delay: this access unit's own, or none while
        waiting for a key frame). ``sequence`` (the sample context's) detects loss.

        Raises PacketDecodeError for an access unit that is not decodable."""
        self.counts.packets += 1
        if fmt != self.codec:
            self._fail(f"format must be {self.codec!r}", fmt)
        if sequence is not None:
            last, self._last_sequence = self._last_sequence, sequence
            if last is not None and sequence != last + 1 and not self._waiting:
                self.counts.gaps += 1       # loss, reordering or a new Series
                self._waiting = True
        if self._waiting and not key_frame:
            self.counts.skipped += 1
            return []
        payload = data if isinstance(data, bytes) else bytes(data)
        if not payload:
            self._fail("is empty")
        if not starts_with_start_code(payload):
            self._fail("must be an H.264 Annex B access unit (start with 00 00 01 or "
                       "00 00 00 01)", payload[:8].hex())
        if key_frame and NAL_IDR not in nal_types(payload):
            self._fail("is flagged key_frame but holds no IDR slice (NAL type 5)",
                       nal_types(payload))
        if self._context is None or (key_frame and self._waiting):
            self._context = self._open()
        packet = av.Packet(payload)
        packet.pts = pts
        try:
            frames = self._context.decode(packet)
        except (av.error.FFmpegError, ValueError) as exc:
            self._fail(f"the decoder rejected it: {exc}")
        self._waiting = False
        pictures = [DecodedPicture(f, sequence, f.pts) for f in frames]
        self.counts.pictures += len(pictures)
        return pictures

    def _open(self) -> Any:
        context = av.CodecContext.create(self.codec, "r")
        context.thread_count = 1   # frame threads delay output by a frame per thread
        context.flags |= av.codec.context.Flags.low_delay
        return context

    def _fail(self, rule: str, value: object = None) -> NoReturn:
        """Count the error, wait for the next key frame (with a fresh decoder), raise."""
        self.counts.errors += 1
        self._context = None
        self._waiting = True
        error = PacketDecodeError(rule, value)
        self.counts.last_error = str(error)
        raise error


def decode_packets(packets: list[tuple[bytes, bool]], codec: str = "h264",
                   encoding: str = "rgb8") -> list[np.ndarray]:
    """Every decodable picture of ``(data, key_frame)`` access units in order, converted
    (tests and tools; a live consumer keeps a :class:`PacketDecoder`)."""
    decoder = PacketDecoder(codec)
    out = []
    for index, (data, key) in enumerate(packets):
        out += [p.to_ndarray(encoding) for p in decoder.decode(data, key, index)]
    return out
