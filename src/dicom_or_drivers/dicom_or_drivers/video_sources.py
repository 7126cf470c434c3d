"""Video sources of the endoscope driver, ROS-free: synthetic pattern, file, camera, URL.

``source`` parameter forms:

* ``pattern``: :class:`dicom_or_core.sim.video.PatternSource` (frame number and capture
  time in the pixels);
* a file path, or ``file:<path>``: OpenCV ``VideoCapture`` (FFmpeg backend), optional loop;
* ``/dev/videoN`` or ``camera:N``: a V4L2 camera;
* ``rtsp://``, ``http://``, ``https://``, ``udp://``, ``rtp://``: a network stream through
  OpenCV's FFmpeg backend.

Every source delivers frames already converted to the driver's size and pixel format, so
the node only stamps and publishes. A source that cannot deliver raises
:class:`SourceLost` (the node reports SOURCE_LOST and reconnects with backoff); a source
that can never work (a missing file) raises :class:`DicomOrError` at configuration time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from dicom_or_core.model.errors import DicomOrError
from dicom_or_core.sim.video import PatternSource, encode_band

URL_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "udp://", "rtp://", "tcp://")


class SourceLost(RuntimeError):
    """The device stopped delivering frames (unplugged, stream down, end of file)."""


@dataclass(frozen=True)
class SourceSpec:
    """A parsed ``source`` parameter."""

    kind: str           # pattern | file | camera | url
    location: str = ""  # path, device path / index, or URL


def parse_source(value: str) -> SourceSpec:
    """Parse and check the ``source`` parameter (a missing file is a configuration error)."""
    value = value.strip()
    if value in ("", "pattern"):
        return SourceSpec("pattern")
    if value.startswith(URL_SCHEMES):
        return SourceSpec("url", value)
    if value.startswith("camera:"):
        index = value.partition(":")[2]
        if not index.isdigit():
            raise DicomOrError("source", "camera:N needs a device index", value)
        return SourceSpec("camera", index)
    if value.startswith("/dev/video"):
        return SourceSpec("camera", value)
    path = Path(value.partition(":")[2] if value.startswith("file:") else value).expanduser()
    if not path.is_file():
        raise DicomOrError("source", "no such video file (or use pattern, camera:N, "
                           "/dev/videoN or a URL)", value)
    return SourceSpec("file", str(path))


def convert(frame: np.ndarray, width: int, height: int, encoding: str) -> np.ndarray:
    """An OpenCV BGR (or grey) frame resized to ``width`` x ``height`` in ``encoding``."""
    if frame.shape[1] != width or frame.shape[0] != height:
        frame = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
    grey = frame.ndim == 2 or frame.shape[2] == 1
    if encoding == "mono8":
        return frame if grey else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    if grey:
        frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if encoding == "rgb8":
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    return frame


class VideoSource:
    """Interface: ``open()``, ``read(sequence, time_ns) -> ndarray``, ``close()``."""

    stamps_pixels = False

    def open(self) -> None:  # pragma: no cover - trivial
        """Acquire the device or file; SourceLost when it cannot be opened."""
        pass

    def read(self, sequence: int, time_ns: int) -> np.ndarray:
        """The next frame (rows x columns [x 3] uint8); SourceLost when the source is gone."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the device or file; safe to call twice."""
        pass


class Pattern(VideoSource):
    """The synthetic pattern: never lost, pixel-stamped with the stream's own sequence."""

    stamps_pixels = True

    def __init__(self, width: int, height: int, encoding: str) -> None:
        self._pattern = PatternSource(width, height, encoding)

    def read(self, sequence: int, time_ns: int) -> np.ndarray:
        """The pattern frame of ``sequence``, its time and number drawn into the pixels."""
        return self._pattern.frame(sequence, time_ns)


class CaptureSource(VideoSource):
    """OpenCV VideoCapture on a file, camera or URL.

    ``stamp_pixels`` overlays the code band on captured frames too (benchmarks on real
    sources). A file that ends loops (``loop``) or is lost; a camera or URL that stops
    delivering is lost (and reopened by the node's backoff loop).
    """

    def __init__(self, spec: SourceSpec, width: int, height: int, encoding: str,
                 fps: float, loop: bool = True, stamp_pixels: bool = False,
                 open_timeout_s: float = 5.0) -> None:
        self.spec, self.width, self.height, self.encoding = spec, width, height, encoding
        self.fps, self.loop, self.stamps_pixels = fps, loop, stamp_pixels
        self.open_timeout_s = open_timeout_s
        self._capture: cv2.VideoCapture | None = None
        self.ended = False

    def _target(self) -> str | int:
        if self.spec.kind == "camera" and self.spec.location.isdigit():
            return int(self.spec.location)
        return self.spec.location

    def open(self) -> None:
        """(Re)open the capture; SourceLost for a missing file or a device that will not open."""
        self.close()
        if self.spec.kind == "file" and not Path(self.spec.location).is_file():
            raise SourceLost(f"video file {self.spec.location} disappeared")
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.open_timeout_s * 1000),
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.open_timeout_s * 1000)]
        backend = cv2.CAP_V4L2 if self.spec.kind == "camera" else cv2.CAP_FFMPEG
        capture = cv2.VideoCapture(self._target(), backend, params)
        if not capture.isOpened():
            capture.release()
            raise SourceLost(f"cannot open {self.spec.kind} {self.spec.location}")
        if self.spec.kind == "camera":
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
            capture.set(cv2.CAP_PROP_FPS, self.fps)
        self._capture = capture
        self.ended = False

    def read(self, sequence: int, time_ns: int) -> np.ndarray:
        """The next captured frame converted to the stream's geometry and encoding."""
        if self._capture is None:
            raise SourceLost(f"{self.spec.kind} {self.spec.location} is not open")
        try:
            ok, frame = self._capture.read()
            if not ok and self.spec.kind == "file" and self.loop:
                self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, frame = self._capture.read()
        except cv2.error as exc:  # a backend error is a lost source, not a crash
            raise SourceLost(f"{self.spec.kind} {self.spec.location}: {exc}") from None
        if not ok or frame is None:
            if self.spec.kind == "file":
                self.ended = True
                raise SourceLost(f"end of video file {self.spec.location} (loop is off)")
            raise SourceLost(f"{self.spec.kind} {self.spec.location} stopped delivering "
                             "frames")
        frame = np.ascontiguousarray(convert(frame, self.width, self.height, self.encoding))
        if self.stamps_pixels:
            encode_band(frame, sequence, time_ns)
        return frame

    def close(self) -> None:
        """Release the capture; safe to call twice."""
        if self._capture is not None:
            self._capture.release()
            self._capture = None


def make_source(spec: SourceSpec, width: int, height: int, encoding: str, fps: float,
                loop: bool, stamp_pixels: bool) -> VideoSource:
    """The source ``spec`` names: the synthetic pattern, or an OpenCV capture."""
    if spec.kind == "pattern":
        return Pattern(width, height, encoding)
    return CaptureSource(spec, width, height, encoding, fps, loop, stamp_pixels)
