"""H.264 access units as a camera-side encoder publishes them (VideoPacket), for the tests
of their consumers: the project's own encoder (dicom_or_core.iod.codec.PacketEncoder, one
key frame per second, SPS + PPS in each) over frames that carry their index as a bar code,
so a test can tell which frame a decoded picture is even after lossy compression."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dicom_or_core.iod.codec import PTS_HZ, PacketEncoder, choose_codec

BITS = 8   # the bar code: 8 vertical bars, white = 1, over the top half of the frame


@dataclass(frozen=True)
class Packet:
    """One access unit as the VideoPacket carries it."""

    data: bytes
    key_frame: bool
    pts: int


def barcode_frame(index: int, rows: int = 240, columns: int = 320) -> np.ndarray:
    """An RGB frame whose top half shows ``index % 256`` as 8 black/white bars and whose
    bottom half is a colour gradient (so RGB order matters)."""
    image = np.zeros((rows, columns, 3), np.uint8)
    bar = columns // BITS
    for bit in range(BITS):
        if (index >> bit) & 1:
            image[: rows // 2, bit * bar:(bit + 1) * bar] = 255
    ramp = np.linspace(0, 255, columns, dtype=np.float32)
    image[rows // 2:, :, 0] = ramp.astype(np.uint8)          # red rises left to right
    image[rows // 2:, :, 2] = (255 - ramp).astype(np.uint8)  # blue falls
    return image


def read_barcode(rgb: np.ndarray) -> int:
    """The index a decoded :func:`barcode_frame` shows (mod 256)."""
    rows, columns = rgb.shape[:2]
    bar = columns // BITS
    value = 0
    for bit in range(BITS):
        block = rgb[rows // 8: rows * 3 // 8, bit * bar + bar // 4:(bit + 1) * bar - bar // 4]
        if block.mean() > 128:
            value |= 1 << bit
    return value


def encode(count: int, rows: int = 240, columns: int = 320, rate_hz: float = 30.0,
           first: int = 0) -> list[Packet]:
    """``count`` access units of bar-code frames ``first..first+count-1``; a key frame every
    ``round(rate_hz)`` frames, the first one a key frame."""
    encoder = PacketEncoder(choose_codec(rows, columns, rate_hz, "h264"), rows, columns,
                            "rgb8", rate_hz, preset="ultrafast", threads=1)
    out = []
    for i in range(count):
        pts = round(i * PTS_HZ / rate_hz)
        for p in encoder.encode(barcode_frame(first + i, rows, columns), pts):
            out.append(Packet(p.data, p.keyframe, p.pts))
    out += [Packet(p.data, p.keyframe, p.pts) for p in encoder.flush()]
    return out


def packet_message(packet: Packet, sequence: int, series_uid: str,
                   acquisition_ns: int) -> Any:
    """A dicom_or_msgs/VideoPacket of ``packet`` (imports ROS interfaces on use)."""
    from dicom_or_msgs.msg import VideoPacket

    msg = VideoPacket()
    msg.context.series_instance_uid = series_uid
    msg.context.sequence = sequence
    msg.context.acquisition_time.sec = acquisition_ns // 1_000_000_000
    msg.context.acquisition_time.nanosec = acquisition_ns % 1_000_000_000
    msg.format = "h264"
    msg.key_frame = packet.key_frame
    msg.pts = packet.pts
    msg.data = packet.data
    return msg
