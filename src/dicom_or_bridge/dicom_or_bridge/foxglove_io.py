"""What the Foxglove bridge sends, without ROS: message schemas as ``ros2msg`` text, the rate
cap of the video channels, and the JPEG / H.264 encoders of those channels.

``ros2msg`` is the schema encoding rosbag2 writes into MCAP and foxglove_bridge advertises:
the top-level ``.msg`` text first, then every type it uses (recursively, each once), each
preceded by a line of 80 ``=`` and ``MSG: <package>/msg/<Type>`` (rosbag2's
docs/message_definition_encoding.md). A viewer that never saw the project's interfaces
decodes the CDR bytes with it alone.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from dicom_or_core.model.errors import DicomOrError

# The .msg primitive types (rosidl_adapter's PRIMITIVE_TYPES); anything else is a message.
PRIMITIVES = frozenset({
    "bool", "byte", "char", "float32", "float64", "int8", "uint8", "int16", "uint16",
    "int32", "uint32", "int64", "uint64", "string", "wstring"})
DELIMITER = "=" * 80
_ARRAY = re.compile(r"\[[^\]]*\]$")
VIDEO_FORMATS = ("jpeg", "h264", "none")


def full_type_name(field_type: str, package: str) -> str | None:
    """``pkg/msg/Type`` of a field's type as written in a .msg of ``package``; None for a
    primitive (arrays and bounded strings, ``string<=8[]``, included)."""
    base = _ARRAY.sub("", field_type).split("<=")[0]
    if base in PRIMITIVES:
        return None
    parts = base.split("/")
    if len(parts) == 1:  # a bare name is a message of the same package
        return f"{package}/msg/{base}"
    return f"{parts[0]}/msg/{parts[-1]}"


def field_types(text: str, package: str) -> list[str]:
    """The message types the fields and constants of a .msg text use, in order."""
    found = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 2:
            name = full_type_name(words[0], package)
            if name is not None and name not in found:
                found.append(name)
    return found


def ros2msg_definition(type_name: str, read: Callable[[str], str]) -> str:
    """The complete ``ros2msg`` definition of ``type_name`` (``pkg/msg/Type``), with
    ``read(pkg/msg/Type)`` giving one .msg file's text; dependencies breadth first, once."""
    top = read(type_name)
    sections, seen = [top.rstrip("\n")], {type_name}
    queue = field_types(top, type_name.split("/")[0])
    while queue:
        name = queue.pop(0)
        if name in seen:
            continue
        seen.add(name)
        text = read(name)
        sections.append(f"{DELIMITER}\nMSG: {name}\n{text.rstrip(chr(10))}")
        queue += field_types(text, name.split("/")[0])
    return "\n".join(sections) + "\n"


def installed_msg_text(type_name: str) -> str:
    """A .msg file as its package installed it: ``share/<pkg>/msg/<Type>.msg`` (rosidl
    installs the sources beside the generated code; dicom_or_msgs installs the workspace's
    msg/ folder there)."""
    from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

    package, _, name = type_name.split("/")
    try:
        path = Path(get_package_share_directory(package)) / "msg" / f"{name}.msg"
        return path.read_text()
    except (PackageNotFoundError, OSError) as exc:
        raise DicomOrError("schema", f"no .msg definition of {type_name}: {exc}") from None


class RateCap:
    """At most ``rate_hz`` accepted events per second (a minimum interval, monotonic)."""

    def __init__(self, rate_hz: float) -> None:
        self.interval = 1.0 / rate_hz
        self._next = 0.0

    def ready(self, now: float | None = None) -> bool:
        """Whether an event now may pass; if so the next one must wait an interval."""
        now = time.monotonic() if now is None else now
        if now < self._next:
            return False
        # From the due time, not from now, so the average rate is the cap even when the
        # source's period jitters around it; but never a burst to catch up after a pause.
        self._next = max(self._next + self.interval, now)
        return True


def scaled_size(width: int, height: int, scale: float, even: bool) -> tuple[int, int]:
    """The output size of a ``width`` x ``height`` frame at ``scale`` (at least 2 x 2);
    ``even`` for 4:2:0 video, whose chroma planes halve both sides."""
    w, h = max(2, round(width * scale)), max(2, round(height * scale))
    if even:
        w, h = w - w % 2, h - h % 2
    return w, h


def to_bgr(pixels: np.ndarray, encoding: str) -> np.ndarray:
    """A frame in OpenCV's channel order (mono stays one channel)."""
    if encoding == "rgb8":
        return np.ascontiguousarray(pixels[..., ::-1])
    return pixels


class JpegEncoder:
    """Frames as baseline JPEG (foxglove.CompressedImage ``format: jpeg``)."""

    format = "jpeg"

    def __init__(self, quality: int, scale: float) -> None:
        self.quality, self.scale = quality, scale

    def encode(self, pixels: np.ndarray, encoding: str, keyframe: bool = False) -> bytes:
        """One frame (``encoding`` rgb8 / bgr8 / mono8) as a JPEG file; ``keyframe`` is
        ignored (every JPEG stands alone)."""
        bgr = to_bgr(pixels, encoding)
        if self.scale != 1.0:
            size = scaled_size(bgr.shape[1], bgr.shape[0], self.scale, even=False)
            bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
        ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            raise DicomOrError("video", "JPEG encoding failed", bgr.shape)
        return data.tobytes()


_AV_FORMATS = {"rgb8": "rgb24", "bgr8": "bgr24", "mono8": "gray"}


class H264Encoder:
    """Frames as an H.264 Annex B stream, one access unit per frame (foxglove.CompressedVideo
    ``format: h264``): no B-frames (a viewer decodes each message as it comes), SPS/PPS
    repeated before every keyframe, and a keyframe on demand, so a viewer that subscribes
    late starts decoding at its first message."""

    format = "h264"

    def __init__(self, rate_hz: float, bitrate_kbps: int, scale: float) -> None:
        self.rate_hz, self.bitrate, self.scale = rate_hz, bitrate_kbps * 1000, scale
        self._codec: av.video.codeccontext.VideoCodecContext | None = None
        self._frames = 0

    def _open(self, width: int, height: int) -> av.video.codeccontext.VideoCodecContext:
        codec = av.CodecContext.create("libx264", "w")
        codec.width, codec.height = scaled_size(width, height, self.scale, even=True)
        codec.pix_fmt = "yuv420p"
        codec.time_base = Fraction(1, 1000)
        codec.framerate = Fraction(round(self.rate_hz * 1000), 1000)
        codec.bit_rate = self.bitrate
        codec.gop_size = max(1, round(self.rate_hz * 2))  # a keyframe every 2 s anyway
        codec.max_b_frames = 0
        codec.options = {"preset": "ultrafast", "tune": "zerolatency",
                         "x264-params": "repeat-headers=1"}
        codec.open()
        return codec

    def encode(self, pixels: np.ndarray, encoding: str, keyframe: bool = False) -> bytes:
        """One frame as the access unit(s) the encoder gives back (zerolatency: this one)."""
        if self._codec is None:
            self._codec = self._open(pixels.shape[1], pixels.shape[0])
        codec = self._codec
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels),
                                           format=_AV_FORMATS[encoding])
        frame = frame.reformat(width=codec.width, height=codec.height, format="yuv420p")
        frame.pts = self._frames * round(1000 / self.rate_hz)
        self._frames += 1
        if keyframe:
            frame.pict_type = av.video.frame.PictureType.I
        return b"".join(bytes(packet) for packet in codec.encode(frame))

    def close(self) -> None:
        """Release the encoder (a frame-size change or shutdown)."""
        self._codec = None


def make_encoder(video_format: str, rate_hz: float, scale: float, jpeg_quality: int,
                 bitrate_kbps: int) -> JpegEncoder | H264Encoder:
    """The encoder of ``video_format`` (``jpeg`` or ``h264``)."""
    if video_format == "h264":
        return H264Encoder(rate_hz, bitrate_kbps, scale)
    return JpegEncoder(jpeg_quality, scale)
