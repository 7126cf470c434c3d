"""H.264 encoded where the camera is: the live encoder's settings and an Annex B parser.

A driver that publishes compressed video (``dicom_or_msgs/VideoPacket``) encodes with
:func:`live_encoder`; the recorder stores its access units unchanged in the Pixel Data of a
Video Endoscopic / Video Photographic instance, so the stream must already satisfy the
transfer syntax the instance declares (PS3.5 8.2.7 / 8.2.8):

* H.264 High Profile (``profile_idc`` 100) at Level 4.1 (``1.2.840.10008.1.2.4.102``, up to
  1080p30) or Level 4.2 (``1.2.840.10008.1.2.4.104``, 1080p50/60): the level follows from
  the geometry and rate as for the recorder's own encoder (:func:`~.codec.choose_codec`);
* decodable from every key frame on: SPS and PPS repeated in every IDR access unit (x264
  ``repeat-headers=1``), one IDR per second (``keyint`` = fps, no scene-cut IDRs, so
  instance boundaries fall on a regular grid);
* zero latency, no B-frames: one access unit out per frame in, decode order = presentation
  order, PTS = DTS;
* an access unit delimiter (AUD, NAL type 9) at the start of every access unit (x264
  ``aud=1``): FFmpeg's MPEG-TS muxer inserts one into any H.264 packet that lacks it, which
  would make the stored elementary stream differ from what the camera sent. With it, the
  stream demuxed from the instance is byte-identical to the published packets.

:func:`check_stream` is the recorder's door: an access unit with an SPS whose profile or
level does not fit is refused with a :class:`DicomOrError` naming the rule.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from pydicom.uid import MPEG4HP41, MPEG4HP422D

from dicom_or_core.iod.codec import CodecChoice, PacketEncoder, choose_codec
from dicom_or_core.model.errors import DicomOrError

NAL_IDR = 5       # coded slice of an IDR picture (ITU-T H.264 Table 7-1)
NAL_SEI = 6
NAL_SPS = 7
NAL_PPS = 8
NAL_AUD = 9
PROFILE_HIGH = 100
# level_idc is ten times the level number (ITU-T H.264 A.3).
LEVEL_IDC: dict[str, int] = {str(MPEG4HP41): 41, str(MPEG4HP422D): 42}
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium")


def live_encoder(rows: int, columns: int, rate_hz: float, pixel_encoding: str,
                 quality: int = 23, preset: str = "superfast",
                 threads: int = 0) -> PacketEncoder:
    """The camera-side H.264 encoder (see the module docstring for why each setting).

    The level is the smallest of 4.1 / 4.2 the geometry fits (DicomOrError beyond 4.2).
    ``preset`` ``ultrafast`` is refused: it turns off the 8x8 transform and CABAC, and x264
    then writes a Constrained Baseline SPS, which no DICOM H.264 transfer syntax accepts."""
    if preset not in PRESETS or preset == "ultrafast":
        raise DicomOrError("h264_preset", "must be one of "
                           f"{', '.join(PRESETS[1:])} (High Profile needs CABAC)", preset)
    choice = choose_codec(rows, columns, rate_hz, "h264")
    return PacketEncoder(choice, rows, columns, pixel_encoding, rate_hz, quality, preset,
                         threads, x264_extra="aud=1:scenecut=0:min-keyint="
                         f"{max(1, round(rate_hz))}")


# -- Annex B parsing ------------------------------------------------------------------------


def nal_units(data: bytes) -> Iterator[tuple[int, int, int]]:
    """Each NAL unit of an Annex B byte stream as (nal_unit_type, start, end): ``start``
    the NAL header byte, ``end`` the next start code (trailing zero bytes excluded)."""
    n = len(data)
    starts = []
    i = data.find(b"\x00\x00\x01")
    while i >= 0:
        starts.append(i + 3)
        i = data.find(b"\x00\x00\x01", i + 3)
    for k, start in enumerate(starts):
        end = starts[k + 1] - 3 if k + 1 < len(starts) else n
        while end > start and data[end - 1] == 0:
            end -= 1  # the zero byte of a 4-byte start code, or trailing_zero_8bits
        if start < n:
            yield data[start] & 0x1F, start, end


def starts_with_start_code(data: bytes) -> bool:
    """Whether ``data`` begins with an Annex B start code (3 or 4 bytes)."""
    return data.startswith(b"\x00\x00\x01") or data.startswith(b"\x00\x00\x00\x01")


def nal_types(data: bytes) -> list[int]:
    """The NAL unit types of an access unit, in order."""
    return [t for t, _, _ in nal_units(data)]


def is_idr(data: bytes) -> bool:
    """Whether an access unit holds an IDR picture (decoding can begin here)."""
    return NAL_IDR in nal_types(data)


def _rbsp(nal: bytes) -> bytes:
    """A NAL unit's payload without emulation prevention bytes (00 00 03 -> 00 00)."""
    return nal.replace(b"\x00\x00\x03", b"\x00\x00")


@dataclass(frozen=True)
class SpsInfo:
    """What the recorder needs of a sequence parameter set (ITU-T H.264 7.3.2.1.1)."""

    profile_idc: int
    constraint_flags: int
    level_idc: int


def parse_sps(nal: bytes) -> SpsInfo:
    """The profile and level of an SPS NAL unit (header byte first)."""
    if len(nal) < 4 or nal[0] & 0x1F != NAL_SPS:
        raise DicomOrError("video_packet.data", "not a sequence parameter set", len(nal))
    body = _rbsp(nal[1:8])
    return SpsInfo(body[0], body[1], body[2])


def find_sps(data: bytes) -> SpsInfo | None:
    """The first SPS of an access unit, or None."""
    for t, start, end in nal_units(data):
        if t == NAL_SPS:
            return parse_sps(data[start:end])
    return None


@dataclass(frozen=True)
class AccessUnit:
    """What the recorder checks of one access unit before it stores it."""

    key_frame: bool                 # holds an IDR picture
    sps: SpsInfo | None             # its SPS, when it carries one


def inspect(data: bytes) -> AccessUnit:
    """Parse an access unit: refuse one that is not an Annex B byte stream (DicomOrError)."""
    if not starts_with_start_code(data):
        raise DicomOrError("video_packet.data", "is not an H.264 Annex B access unit (no "
                           "start code)", data[:4].hex())
    key_frame, sps, any_unit = False, None, False
    for nal_type, start, end in nal_units(data):   # one pass over the unit
        any_unit = True
        key_frame = key_frame or nal_type == NAL_IDR
        if nal_type == NAL_SPS and sps is None:
            sps = parse_sps(data[start:end])
    if not any_unit:
        raise DicomOrError("video_packet.data", "holds no NAL unit")
    return AccessUnit(key_frame, sps)


def transfer_syntax_for(sps: SpsInfo, rows: int, columns: int,
                        rate_hz: float) -> CodecChoice:
    """The recorded transfer syntax of a stream with this SPS and geometry: High Profile
    Level 4.1 or 4.2, the higher of what the geometry needs and what the SPS declares
    (PS3.5 8.2.7 / 8.2.8); DicomOrError for any other profile or a higher level."""
    if sps.profile_idc != PROFILE_HIGH:
        raise DicomOrError("video_packet.sps", f"profile_idc {sps.profile_idc} is not High "
                           f"Profile ({PROFILE_HIGH}): no DICOM H.264 transfer syntax "
                           "(PS3.5 8.2.7/8.2.8) can carry it unchanged", sps.profile_idc)
    choice = choose_codec(rows, columns, rate_hz, "h264")
    if sps.level_idc > LEVEL_IDC[MPEG4HP422D]:
        raise DicomOrError("video_packet.sps", f"level {sps.level_idc / 10:g} exceeds High "
                           "Profile Level 4.2 (PS3.5 8.2.8)", sps.level_idc)
    if sps.level_idc > LEVEL_IDC[choice.transfer_syntax_uid]:
        choice = CodecChoice("h264", choice.encoder, MPEG4HP422D, "4.2",
                             choice.compression_method, choice.max_bit_rate_kbps)
    return choice
