"""What the OR view sends the browser, made from the graph's messages (no ROS import here).

Messages are read by duck typing (the rosidl-generated classes, or any object with the same
fields), so every conversion is tested in memory:

* :func:`session_json` - the case (SessionContext): patient, study, procedure, OR and the
  start of the performed step, as ISO time for "time since start";
* :func:`waveform_json` - a WaveformChunk in physical units: ``(value + baseline) *
  sensitivity * correction`` (PS3.3 C.10.9.1.4.3), with each channel's UCUM unit and the
  time of the chunk's first sample (host clock, the session clock of the drivers);
* :func:`pose_json` - a PoseSample as millimetres in the tracker's frame;
* :func:`message_dict` - any message (RecorderStatus) as plain JSON values;
* :class:`FrameEncoder` - the newest video frame of each stream as JPEG, with its capture
  time, in a thread of its own; frames that arrive while one is encoded replace each other
  (a slow browser sees fewer frames, never older ones). An encoded stream (``VideoPacket``,
  H.264 access units) cannot skip: every access unit is decoded in that thread
  (:class:`~dicom_or_core.iod.packet_decoder.PacketDecoder`, from a key frame on), and only
  the newest picture of each batch is converted and sent as JPEG.
"""

from __future__ import annotations

import array
import datetime as dt
import json
import logging
import re
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from dicom_or_core.iod.packet_decoder import PacketDecodeError, PacketDecoder
from dicom_or_core.model.errors import DicomOrError
from dicom_or_core.model.pixels import frame_pixels

FRAME_HEADER = struct.Struct("<I")   # length of the JSON header that precedes the JPEG
# Access units queued for one stream before the encoder thread gives up on them (4 s at
# 30 fps): the queue is dropped and decoding resumes at the next key frame.
MAX_QUEUED_PACKETS = 120
DECODER_IDLE_S = 10.0   # a stream's decoder is freed after this long without access units
ERROR_LOG_PERIOD_S = 10.0
_log = logging.getLogger("dicom_or_view.live")


def time_ns(stamp: Any) -> int:
    """builtin_interfaces/Time -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def person_name(value: str) -> str:
    """A PN (Family^Given^Middle^Prefix^Suffix) as "Family, Given Middle" for display."""
    parts = [p.strip() for p in value.split("=")[0].split("^")]
    family, given = parts[0], " ".join(p for p in parts[1:3] if p)
    return f"{family}, {given}" if family and given else family or given


def dicom_datetime(date: str, time_: str) -> str:
    """DA + TM -> ISO 8601 local time ("" when the date is missing or malformed)."""
    if not re.fullmatch(r"\d{8}", date.strip()):
        return ""
    try:
        day = dt.datetime.strptime(date.strip(), "%Y%m%d")
    except ValueError:
        return ""
    digits = time_.strip().split(".")[0]
    hh, mm, ss = digits[0:2] or "0", digits[2:4] or "0", digits[4:6] or "0"
    try:
        return day.replace(hour=int(hh), minute=int(mm), second=int(ss)).isoformat()
    except ValueError:
        return day.isoformat()


def session_json(msg: Any) -> dict[str, Any]:
    """The case the OR works on, for the Session panel."""
    patient, study = msg.patient, msg.study
    request = msg.requests[0] if len(msg.requests) else None
    procedure = ""
    if request is not None:
        procedure = request.requested_procedure_description or \
            request.scheduled_procedure_step_description
    procedure = procedure or msg.performed_procedure_step_description or \
        study.study_description
    start = dicom_datetime(msg.performed_procedure_step_start_date,
                           msg.performed_procedure_step_start_time) or \
        dicom_datetime(study.study_date, study.study_time)
    return {
        "patient_name": person_name(patient.patient_name), "patient_id": patient.patient_id,
        "birth_date": patient.birth_date, "sex": patient.sex,
        "study_instance_uid": study.study_instance_uid,
        "accession_number": study.accession_number,
        "study_description": study.study_description, "procedure": procedure,
        "operating_room": msg.operating_room, "start": start,
        "performed_procedure_step_id": msg.performed_procedure_step_id,
    }


def message_dict(msg: Any) -> Any:
    """A rosidl message (nested messages, arrays, Time) as JSON values."""
    fields = getattr(msg, "get_fields_and_field_types", None)
    if fields is not None:
        if set(fields()) == {"sec", "nanosec"}:
            return time_ns(msg) / 1e9
        return {name: message_dict(getattr(msg, name)) for name in fields()}
    if isinstance(msg, (list, tuple, array.array)):
        return [message_dict(item) for item in msg]
    if isinstance(msg, np.ndarray):
        return msg.tolist()
    if isinstance(msg, float) and not np.isfinite(msg):
        return None
    return msg


@dataclass(frozen=True)
class Channel:
    """What the browser needs to draw one channel in its units."""

    label: str
    unit: str
    scale: float      # physical units per digital value: sensitivity * correction
    baseline: float   # digital values added before scaling


def channels_of(descriptor: Any) -> list[Channel]:
    """The channels of a waveform stream's descriptor."""
    return [Channel(c.label, c.unit_ucum,
                    float(c.sensitivity) * (float(c.sensitivity_correction) or 1.0),
                    float(c.baseline)) for c in descriptor.channels]


def waveform_json(series_uid: str, chunk: Any, channels: list[Channel],
                  decimals: int = 3) -> dict[str, Any]:
    """A WaveformChunk as physical values per channel (samples are channel-interleaved)."""
    count = int(chunk.channel_count) or 1
    samples = np.asarray(chunk.samples, dtype=np.float64).reshape(-1, count)
    data = []
    for index in range(count):
        channel = channels[index] if index < len(channels) else Channel(str(index), "", 1, 0)
        values = (samples[:, index] + channel.baseline) * channel.scale
        data.append(np.round(values, decimals).tolist())
    return {"type": "wave", "series": series_uid,
            "t0_ms": time_ns(chunk.first_sample_time) / 1e6,
            "period_ms": float(chunk.sample_period) * 1e3,
            "first_index": int(chunk.first_sample_index),
            "sent_ms": wall_ms(), "data": data}


def pose_json(series_uid: str, frame: str, sample: Any) -> dict[str, Any]:
    """A PoseSample: position in millimetres (poses are in metres, REP 103)."""
    p = sample.pose.position
    return {"type": "pose", "series": series_uid, "frame": frame, "tool": sample.tool_id,
            "x": round(p.x * 1e3, 2), "y": round(p.y * 1e3, 2), "z": round(p.z * 1e3, 2),
            "visible": bool(sample.visible),
            "quality": round(float(sample.tracking_quality), 3),
            "t_ms": time_ns(sample.context.acquisition_time) / 1e6}


def wall_ms() -> float:
    """Host time in milliseconds since the epoch: the clock the browser's Date.now() reads
    on the same host, and the drivers' acquisition clock."""
    return dt.datetime.now(dt.UTC).timestamp() * 1e3


def frame_message(header: dict[str, Any], jpeg: bytes) -> bytes:
    """One binary WebSocket message: 4-byte length, JSON header, JPEG."""
    text = json.dumps(header).encode()
    return FRAME_HEADER.pack(len(text)) + text + jpeg


def encode_jpeg(pixels: np.ndarray, encoding: str, max_width: int, quality: int) -> bytes:
    """A frame (rgb8 / bgr8 / mono8 array) as JPEG, scaled down to ``max_width``."""
    if encoding == "rgb8":
        pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    if max_width and pixels.shape[1] > max_width:
        height = max(1, round(pixels.shape[0] * max_width / pixels.shape[1]))
        pixels = cv2.resize(pixels, (max_width, height), interpolation=cv2.INTER_AREA)
    ok, buffer = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buffer.tobytes()


@dataclass
class RawFrame:
    """A frame as it came off the topic (the message's buffer, not yet copied)."""

    series: str
    encoding: str
    width: int
    height: int
    step: int
    data: Any
    sequence: int
    capture_ns: int
    received_ms: float


@dataclass
class PacketFrame:
    """An encoded access unit as it came off the topic (a VideoPacket's fields)."""

    series: str
    fmt: str
    key_frame: bool
    data: Any
    sequence: int
    pts: int
    capture_ns: int
    received_ms: float


class FrameEncoder:
    """Encodes the newest frame of each stream to JPEG in its own thread and hands
    ``(series, message bytes)`` to ``deliver``; idle when ``wanted()`` is false (no browser).

    Raw frames (:meth:`offer`) replace each other; access units (:meth:`offer_packet`) are
    queued and all decoded, in order, and the newest decoded picture is sent."""

    def __init__(self, deliver: Callable[[str, bytes], None], wanted: Callable[[], bool],
                 max_width: int = 960, quality: int = 80) -> None:
        self._deliver, self._wanted = deliver, wanted
        self.max_width, self.quality = max_width, quality
        self._pending: dict[str, RawFrame] = {}
        self._packets: dict[str, list[PacketFrame]] = {}
        self._decoders: dict[str, tuple[PacketDecoder, float]] = {}  # + last use, monotonic
        self._logged: dict[str, float] = {}
        self._cond = threading.Condition()
        self._stop = False
        self.encoded = 0
        self.replaced = 0
        self.errors = 0
        self.dropped_packets = 0
        self._thread = threading.Thread(target=self._run, name="or_view_jpeg", daemon=True)
        self._thread.start()

    def offer(self, frame: RawFrame) -> None:
        """Called for every frame; cheap (no copy) and never blocks on encoding."""
        if not self._wanted():
            return
        with self._cond:
            if frame.series in self._pending:
                self.replaced += 1
            self._pending[frame.series] = frame
            self._cond.notify()

    def offer_packet(self, packet: PacketFrame) -> None:
        """Called for every access unit; cheap (queued, no copy). A queue that grew past
        MAX_QUEUED_PACKETS (the thread cannot keep up) is dropped: the decoder sees the
        sequence gap and resumes at the next key frame."""
        if not self._wanted():
            return
        with self._cond:
            queue = self._packets.setdefault(packet.series, [])
            if len(queue) >= MAX_QUEUED_PACKETS:
                self.dropped_packets += len(queue)
                queue.clear()
            queue.append(packet)
            self._cond.notify()

    def _run(self) -> None:
        while True:
            packets: list[PacketFrame] = []
            frame: RawFrame | None = None
            with self._cond:
                while not self._pending and not self._packets and not self._stop:
                    if not self._cond.wait(DECODER_IDLE_S):
                        self._free_idle_decoders()
                if self._stop:
                    return
                if self._packets:
                    series, packets = self._packets.popitem()
                else:
                    series, frame = self._pending.popitem()
            try:
                message = self.encode(frame) if frame is not None else \
                    self.decode_and_encode(series, packets)
                if message is not None:
                    self._deliver(series, message)
                    self.encoded += 1
            except Exception:   # a malformed frame: counted, the next one may be fine
                self.errors += 1
            self._free_idle_decoders()

    def decode_and_encode(self, series: str, packets: list[PacketFrame]) -> bytes | None:
        """Decode ``packets`` (one stream's, in order) and return the binary message of the
        newest picture they complete, None if none (waiting for a key frame). Only that
        picture is converted: decoding is needed for every access unit, conversion not."""
        decoder = self._decoder(series, packets[0].fmt)
        newest = None
        for packet in packets:
            try:
                pictures = decoder.decode(packet.data, packet.key_frame, packet.sequence,
                                          packet.pts, packet.fmt)
            except PacketDecodeError as exc:   # the decoder waits for the next key frame
                self.errors += 1
                self._log_error(series, exc)
                continue
            if pictures:
                newest = (pictures[-1], packet)
        if newest is None:
            return None
        picture, packet = newest
        jpeg = encode_jpeg(picture.to_ndarray("bgr8"), "bgr8", self.max_width, self.quality)
        header = {"series": series, "seq": packet.sequence,
                  "capture_ms": packet.capture_ns / 1e6, "received_ms": packet.received_ms,
                  "encoded_ms": wall_ms(), "width": picture.width, "height": picture.height}
        return frame_message(header, jpeg)

    def _decoder(self, series: str, fmt: str) -> PacketDecoder:
        entry = self._decoders.get(series)
        if entry is None or entry[0].codec != fmt:
            try:
                decoder = PacketDecoder(fmt)
            except DicomOrError as exc:   # a format this view cannot decode
                raise PacketDecodeError(str(exc), fmt) from None
        else:
            decoder = entry[0]
        self._decoders[series] = (decoder, time.monotonic())
        return decoder

    def _free_idle_decoders(self) -> None:
        """A stream nobody watches, or one that ended, keeps no decoder (its pictures)."""
        now = time.monotonic()
        for series, (_, used) in list(self._decoders.items()):
            if now - used > DECODER_IDLE_S:
                del self._decoders[series]

    def _log_error(self, series: str, exc: Exception) -> None:
        """One warning per stream per ERROR_LOG_PERIOD_S (the count is in ``errors``)."""
        now = time.monotonic()
        if now - self._logged.get(series, -ERROR_LOG_PERIOD_S) >= ERROR_LOG_PERIOD_S:
            self._logged[series] = now
            _log.warning("video %s: %s (resuming at the next key frame)", series, exc)

    def encode(self, frame: RawFrame) -> bytes:
        """The binary message of ``frame``: its header (capture time, sequence, times of
        reception and of encoding) and the JPEG."""
        pixels = frame_pixels(frame.encoding, frame.width, frame.height, frame.step,
                              frame.data)
        jpeg = encode_jpeg(pixels, frame.encoding, self.max_width, self.quality)
        header = {"series": frame.series, "seq": frame.sequence,
                  "capture_ms": frame.capture_ns / 1e6, "received_ms": frame.received_ms,
                  "encoded_ms": wall_ms(), "width": frame.width, "height": frame.height}
        return frame_message(header, jpeg)

    def close(self) -> None:
        """End the thread (a frame being encoded is finished first)."""
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(5.0)
