"""Bags the tests and benchmarks write themselves, with ``rosbags`` (what a user's rosbag2
would hold): plain sensor_msgs / geometry_msgs / std_msgs topics and the project's own
messages with their latched descriptors."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer

from dicom_or_core.bags.reader import make_typestore
from dicom_or_core.bags.to_mcap import make_message
from dicom_or_core.model import context as ctx

ROOT = Path(__file__).resolve().parents[3]
MSG_DIRS = [ROOT / "msg"]
STORE = make_typestore(MSG_DIRS)
STORAGE = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}

# One message to write: (topic, type, log time ns, fields)
Message = tuple[str, str, int, dict[str, Any]]


def time_fields(ns: int) -> dict[str, int]:
    """builtin_interfaces/Time fields."""
    return {"sec": ns // 1_000_000_000, "nanosec": ns % 1_000_000_000}


def write_bag(path: Path, messages: Iterable[Message], storage: str = "mcap") -> Path:
    """A rosbag2 directory at ``path`` holding ``messages`` (written in the given order)."""
    with Writer(path, version=9, storage_plugin=STORAGE[storage]) as writer:
        connections: dict[str, Any] = {}
        for topic, msgtype, log_ns, values in messages:
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, msgtype, typestore=STORE)
            writer.write(connections[topic], log_ns,
                         STORE.serialize_cdr(make_message(STORE, msgtype, values), msgtype))
    return path


def image(topic: str, ns: int, pixels: np.ndarray, encoding: str = "rgb8",
          frame_id: str = "camera") -> Message:
    """A sensor_msgs/Image stamped ``ns``."""
    rows, columns = pixels.shape[:2]
    return (topic, "sensor_msgs/msg/Image", ns, {
        "header": {"stamp": time_fields(ns), "frame_id": frame_id}, "height": rows,
        "width": columns, "encoding": encoding, "step": pixels.strides[0],
        "data": np.ascontiguousarray(pixels).reshape(-1)})


def compressed(topic: str, ns: int, jpeg: bytes, frame_id: str = "camera") -> Message:
    """A sensor_msgs/CompressedImage (JPEG) stamped ``ns``."""
    return (topic, "sensor_msgs/msg/CompressedImage", ns, {
        "header": {"stamp": time_fields(ns), "frame_id": frame_id}, "format": "jpeg",
        "data": np.frombuffer(jpeg, np.uint8)})


def jpeg(pixels_bgr: np.ndarray, quality: int = 90) -> bytes:
    """A BGR frame as JPEG bytes."""
    ok, data = cv2.imencode(".jpg", pixels_bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return data.tobytes()


def pose_stamped(topic: str, ns: int, position: tuple[float, float, float],
                 quaternion_xyzw: tuple[float, float, float, float],
                 frame_id: str = "tracker") -> Message:
    """A geometry_msgs/PoseStamped stamped ``ns``."""
    return (topic, "geometry_msgs/msg/PoseStamped", ns, {
        "header": {"stamp": time_fields(ns), "frame_id": frame_id},
        "pose": {"position": dict(zip("xyz", position, strict=True)),
                 "orientation": dict(zip("xyzw", quaternion_xyzw, strict=True))}})


def float_array(topic: str, ns: int, values: np.ndarray) -> Message:
    """A std_msgs/Float32MultiArray of (samples, channels) interleaved values."""
    return (topic, "std_msgs/msg/Float32MultiArray", ns, {
        "layout": {"dim": [{"label": "samples", "size": values.shape[0],
                            "stride": values.size},
                           {"label": "channels", "size": values.shape[1],
                            "stride": values.shape[1]}]},
        "data": np.asarray(values, np.float32).reshape(-1)})


def moving_pattern(rows: int, columns: int, count: int, period: int = 30
                   ) -> Iterator[np.ndarray]:
    """``count`` RGB frames of a cheap moving pattern (a gradient and a bar scrolling),
    repeating every ``period`` frames."""
    y, x = np.mgrid[0:rows, 0:columns]
    base = np.stack([(x * 255 // max(columns - 1, 1)), (y * 255 // max(rows - 1, 1)),
                     ((x + y) % 256)], axis=-1).astype(np.uint8)
    base[rows // 3: rows // 3 + rows // 10, :, :] = (230, 40, 40)
    step = max(1, columns // period)
    for i in range(count):
        yield np.roll(base, (i % period) * step, axis=1)


# -- the project's own messages --------------------------------------------------------


def descriptor_message(d: ctx.StreamDescriptor, ns: int) -> Message:
    """A descriptor latched on ``<topic>/descriptor``."""
    return (d.topic + "/descriptor", "dicom_or_msgs/msg/StreamDescriptor", ns,
            {**ctx.to_dict(d), "header": {"stamp": time_fields(ns)}})


def session_message(session: ctx.SessionContext, ns: int) -> Message:
    """The session context on /or/session_context."""
    return ("/or/session_context", "dicom_or_msgs/msg/SessionContext", ns,
            ctx.to_dict(session))


def _context(d: ctx.StreamDescriptor, ns: int, sequence: int) -> dict[str, Any]:
    return {"header": {"stamp": time_fields(ns), "frame_id": d.tf_frame_id},
            "series_instance_uid": d.series_instance_uid, "sequence": sequence,
            "acquisition_time": time_fields(ns)}


def image_frame(d: ctx.StreamDescriptor, ns: int, sequence: int, pixels: np.ndarray
                ) -> Message:
    """A dicom_or_msgs/ImageFrame of the stream ``d``."""
    _, _, _, img = image(d.topic, ns, pixels, d.pixel_encoding)
    return (d.topic, "dicom_or_msgs/msg/ImageFrame", ns,
            {"context": _context(d, ns, sequence), "image": img})


def video_packet(d: ctx.StreamDescriptor, ns: int, sequence: int, data: bytes,
                 key_frame: bool, pts: int) -> Message:
    """A dicom_or_msgs/VideoPacket (one H.264 access unit) of the stream ``d``."""
    return (d.topic, "dicom_or_msgs/msg/VideoPacket", ns, {
        "context": _context(d, ns, sequence), "format": d.video_codec,
        "key_frame": key_frame, "pts": pts, "data": np.frombuffer(data, np.uint8)})


def waveform_chunk(d: ctx.StreamDescriptor, ns: int, sequence: int, first_index: int,
                   samples: np.ndarray) -> Message:
    """A dicom_or_msgs/WaveformChunk of (n, channels) int16 samples."""
    return (d.topic, "dicom_or_msgs/msg/WaveformChunk", ns, {
        "context": _context(d, ns, sequence), "first_sample_time": time_fields(ns),
        "sample_period": 1.0 / d.sampling_frequency_hz, "first_sample_index": first_index,
        "channel_count": samples.shape[1], "samples": samples.astype(np.int16).reshape(-1)})


def pose_sample(d: ctx.StreamDescriptor, ns: int, sequence: int, tool_id: str,
                position: tuple[float, float, float],
                quaternion_xyzw: tuple[float, float, float, float]) -> Message:
    """A dicom_or_msgs/PoseSample (visible)."""
    return (d.topic, "dicom_or_msgs/msg/PoseSample", ns, {
        "context": _context(d, ns, sequence), "tool_id": tool_id, "visible": True,
        "tracking_quality": 1.0,
        "pose": {"position": dict(zip("xyz", position, strict=True)),
                 "orientation": dict(zip("xyzw", quaternion_xyzw, strict=True))}})
