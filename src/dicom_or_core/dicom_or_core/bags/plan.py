"""Which topics of a bag become which DICOM streams, and their messages as samples.

Two kinds of topics are converted:

* **the project's own streams** (``dicom_or_msgs/msg/ImageFrame``, ``VideoPacket``,
  ``WaveformChunk``, ``PoseSample``): their descriptor is the one latched on
  ``<topic>/descriptor`` in the same bag (a new descriptor with a new Series mid-bag starts
  a new Series, as live); samples go to the Series their ``context.series_instance_uid``
  names, with their own acquisition times and sequence numbers (H.264 access units
  unchanged, as the recorder stores them);
* **plain topics**: ``sensor_msgs/msg/Image`` and ``CompressedImage`` (video),
  ``geometry_msgs/msg/PoseStamped`` (one tracked tool per topic) and waveform arrays
  (``std_msgs/msg/Float32MultiArray`` / ``Float64MultiArray`` in physical units,
  ``Int16MultiArray`` as digital values) described by the user's *stream YAML*; the time is
  the header stamp (the bag's log time when there is no header or the stamp is not a
  wall-clock time), the sequence the message's index on the topic.

The stream YAML maps a topic to descriptor fields (``modality``, ``series_description``,
``equipment``, ...) and, for waveforms, ``sampling_frequency_hz`` and ``channels`` (the
:class:`~dicom_or_core.model.context.WaveformChannel` fields: label, source code, UCUM unit,
sensitivity, baseline, filters). See docs/convert.md.

The patient and study come, in this order, from the caller (arguments or a worklist item),
the bag's own ``/or/session_context``, or a new study. A caller's study replaces the study
of the project's descriptors too; their Series then get new UIDs derived from the old ones
and the new study, so one Series UID never spans two studies.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from dicom_or_core.iod.common import ns_to_da_tm
from dicom_or_core.model import context as ctx
from dicom_or_core.model import vr
from dicom_or_core.model.errors import DicomOrError
from dicom_or_core.model.pixels import frame_pixels
from dicom_or_core.model.uid import new_stream_uuid, new_uid

SESSION_CONTEXT_TOPIC = "/or/session_context"
DESCRIPTOR_SUFFIX = "/descriptor"
IMAGE_FRAME = "dicom_or_msgs/msg/ImageFrame"
VIDEO_PACKET = "dicom_or_msgs/msg/VideoPacket"
WAVEFORM_CHUNK = "dicom_or_msgs/msg/WaveformChunk"
POSE_SAMPLE = "dicom_or_msgs/msg/PoseSample"
STREAM_DESCRIPTOR = "dicom_or_msgs/msg/StreamDescriptor"
SESSION_CONTEXT = "dicom_or_msgs/msg/SessionContext"
PROJECT_KINDS = {IMAGE_FRAME: ctx.KIND_VIDEO, VIDEO_PACKET: ctx.KIND_VIDEO,
                 WAVEFORM_CHUNK: ctx.KIND_WAVEFORM, POSE_SAMPLE: ctx.KIND_POSE}
PLAIN_KINDS = {
    "sensor_msgs/msg/Image": ctx.KIND_VIDEO,
    "sensor_msgs/msg/CompressedImage": ctx.KIND_VIDEO,
    "geometry_msgs/msg/PoseStamped": ctx.KIND_POSE,
    "std_msgs/msg/Float32MultiArray": ctx.KIND_WAVEFORM,
    "std_msgs/msg/Float64MultiArray": ctx.KIND_WAVEFORM,
    "std_msgs/msg/Int16MultiArray": ctx.KIND_WAVEFORM,
}
# Other camera (XC), SR for the pose document, hemodynamic (HD): overridable per topic.
DEFAULT_MODALITY: dict[int, str] = {ctx.KIND_VIDEO: "XC", ctx.KIND_POSE: "SR",
                                    ctx.KIND_WAVEFORM: "HD"}
EARLIEST_NS = 946_684_800 * 10**9   # 2000-01-01: an older stamp is not a wall-clock time
_INT16 = (-32768, 32767)


@dataclass
class Sample:
    """One sample for a stream recorder: ``args`` are its ``feed()`` arguments."""

    series_key: str
    args: tuple[Any, ...]


def load_stream_specs(path: str | Path | None) -> dict[str, dict[str, Any]]:
    """The stream YAML: ``{topic: {descriptor fields, ...}}`` (empty without a path)."""
    if path is None:
        return {}
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise DicomOrError("streams", f"cannot be read: {exc}", str(path)) from None
    if not isinstance(data, dict) or not all(
            isinstance(k, str) and k.startswith("/") and isinstance(v, dict)
            for k, v in data.items()):
        raise DicomOrError("streams", "must map fully qualified topic names to mappings",
                           str(path))
    return data


def from_message(cls: type, msg: Any) -> Any:
    """A decoded message (``rosbags`` dataclass) as the context dataclass ``cls``: the
    fields ``cls`` has, by name (the ROS-free twin of ``dicom_or_ros.convert.from_msg``;
    message constants and the header are not context)."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        value = getattr(msg, f.name)
        nested = ctx.NESTED_FIELDS.get((cls, f.name))
        if nested is not None and isinstance(value, (list, tuple)):
            value = [from_message(nested, v) for v in value]
        elif nested is not None:
            value = from_message(nested, value)
        elif isinstance(value, np.ndarray):
            value = value.tolist()
        elif isinstance(value, (list, tuple)):
            value = list(value)
        elif isinstance(value, np.generic):
            value = value.item()
        kwargs[f.name] = value
    return cls(**kwargs)


def stamp_ns(stamp: Any) -> int:
    """builtin_interfaces/Time as integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def new_session(first_ns: int) -> ctx.SessionContext:
    """A study for a bag that brings none: new UIDs, dated by the bag's first message."""
    da, tm = ns_to_da_tm(first_ns)
    return ctx.SessionContext(
        study=ctx.Study(study_instance_uid=new_uid(), study_date=da, study_time=tm,
                        study_description="Converted recording"),
        synchronization_frame_of_reference_uid=new_uid())


def with_session(descriptor: ctx.StreamDescriptor,
                 override: ctx.SessionContext | None) -> ctx.StreamDescriptor:
    """The descriptor in the caller's session: same stream, the caller's patient and study,
    and a Series UID derived from the old one and the new study (a new Series)."""
    if override is None or override.study.study_instance_uid == \
            descriptor.session.study.study_instance_uid:
        return descriptor
    return dataclasses.replace(
        descriptor, session=override,
        series_instance_uid=new_uid("dicom_or-convert", descriptor.series_instance_uid,
                                    override.study.study_instance_uid))


class TopicPlan:
    """How one topic's messages become samples of one or more Series."""

    def __init__(self, topic: str, msgtype: str, kind: int) -> None:
        self.topic = topic
        self.msgtype = msgtype
        self.kind = kind
        self.descriptors: dict[str, ctx.StreamDescriptor] = {}  # series key -> descriptor

    def sample(self, log_ns: int, msg: Any) -> Sample | None:
        """The sample of one message (None: nothing to record)."""
        raise NotImplementedError


class ProjectTopic(TopicPlan):
    """A stream of the project's own sample messages, described by its latched descriptor,
    or -- a bag without it -- by the stream YAML (``fallback``), e.g. a ``WaveformChunk``
    topic with a user-supplied channel description."""

    fallback: PlainTopic | None = None

    def add_descriptor(self, msg: Any, override: ctx.SessionContext | None) -> None:
        """A descriptor read from ``<topic>/descriptor``."""
        descriptor = from_message(ctx.StreamDescriptor, msg)
        descriptor.kind = int(descriptor.kind)
        key = descriptor.series_instance_uid
        self.descriptors[key] = with_session(descriptor.validate(), override)

    def sample(self, log_ns: int, msg: Any) -> Sample | None:
        """The recorder arguments the recorder node would pass for this message."""
        c = msg.context
        key = c.series_instance_uid
        if key not in self.descriptors:
            if self.fallback is None:
                return None  # no descriptor for this Series in the bag: counted by the caller
            self.descriptors[key] = self.fallback.describe(msg, key)
        acquired = stamp_ns(c.acquisition_time)
        if self.msgtype == VIDEO_PACKET:
            if self.descriptors[key].video_codec != msg.format:
                raise DicomOrError("video_packet.format", "must be the descriptor's "
                                   f"video_codec ({self.descriptors[key].video_codec!r})",
                                   msg.format)
            # The access unit's bytes, as the recorder node passes them (it parses the unit
            # itself: key frame, SPS, level).
            return Sample(key, (bytes(msg.data), acquired, int(c.sequence)))
        if self.kind == ctx.KIND_VIDEO:
            d = self.descriptors[key]
            image = msg.image
            if (image.encoding, image.width, image.height) != \
                    (d.pixel_encoding, d.columns, d.rows):
                raise DicomOrError("image", "encoding and size must match the descriptor",
                                   (image.encoding, image.width, image.height))
            pixels = frame_pixels(image.encoding, image.width, image.height, image.step,
                                  image.data)
            return Sample(key, (pixels, acquired, int(c.sequence)))
        if self.kind == ctx.KIND_WAVEFORM:
            n = int(msg.channel_count)
            samples = np.asarray(msg.samples, np.int16)
            if n == 0 or samples.size % n:
                raise DicomOrError("samples", "length is not a multiple of channel_count",
                                   (samples.size, n))
            return Sample(key, (samples.reshape(-1, n), stamp_ns(msg.first_sample_time),
                                int(msg.first_sample_index), int(c.sequence)))
        p, q = msg.pose.position, msg.pose.orientation
        return Sample(key, (msg.tool_id, acquired, (p.x, p.y, p.z), (q.x, q.y, q.z, q.w),
                            bool(msg.visible), int(c.sequence)))


@dataclass
class PlainSpec:
    """What the stream YAML says about one plain topic."""

    fields: dict[str, Any] = field(default_factory=dict)   # descriptor fields
    tool_id: str = ""


class PlainTopic(TopicPlan):
    """A plain ROS topic: its descriptor is built here from the stream YAML and, for video,
    from the first frame's size and the topic's rate."""

    KEY = "plain"

    def __init__(self, topic: str, msgtype: str, kind: int, spec: dict[str, Any],
                 session: Callable[[], ctx.SessionContext], rate_hz: float,
                 series_number: int) -> None:
        super().__init__(topic, msgtype, kind)
        spec = dict(spec)
        self.tool_id = str(spec.pop("tool_id", "") or topic.rstrip("/").rsplit("/", 1)[-1])
        self.spec = spec
        self.session = session
        self.rate_hz = rate_hz
        self.series_number = series_number
        self.sequence = 0
        self.next_index = 0
        self.first_ns = 0
        if kind == ctx.KIND_WAVEFORM:
            if "channels" not in spec or "sampling_frequency_hz" not in spec:
                raise DicomOrError(f"streams.{topic}", "a waveform topic needs "
                                   "sampling_frequency_hz and channels in the stream YAML")
            self.scale = self._channel_scale()

    def _channel_scale(self) -> tuple[np.ndarray, np.ndarray]:
        """Per channel: physical units per digital value, and the baseline."""
        channels = [ctx.from_dict(ctx.WaveformChannel, c, f"streams.{self.topic}.channels.")
                    for c in self.spec["channels"]]
        return (np.array([c.sensitivity * c.sensitivity_correction for c in channels]),
                np.array([c.baseline for c in channels]))

    def describe(self, msg: Any, series_uid: str) -> ctx.StreamDescriptor:
        """The YAML's descriptor for a project sample message of Series ``series_uid``
        whose descriptor the bag does not hold (that Series UID kept when it is one)."""
        c = msg.context
        shape: tuple[int, ...] = ()
        if self.kind == ctx.KIND_VIDEO:
            shape = (int(msg.image.height), int(msg.image.width))
        tools = [msg.tool_id] if self.kind == ctx.KIND_POSE else []
        d = self._descriptor(stamp_ns(c.acquisition_time), c.header, shape,
                             str(getattr(getattr(msg, "image", None), "encoding", "")), tools)
        try:
            vr.check_ui("series_instance_uid", series_uid)
            vr.require("series_instance_uid", series_uid)
        except DicomOrError:
            return d
        return dataclasses.replace(d, series_instance_uid=series_uid)

    def _descriptor(self, stamp: int, header: Any, shape: tuple[int, ...] = (),
                    encoding: str = "", tool_ids: Sequence[str] = ()
                    ) -> ctx.StreamDescriptor:
        da, tm = ns_to_da_tm(stamp)
        values: dict[str, Any] = {
            "stream_uuid": new_stream_uuid(), "kind": self.kind, "topic": self.topic,
            "message_type": self.msgtype, "nominal_rate_hz": self.rate_hz,
            "series_instance_uid": new_uid(), "series_number": self.series_number,
            "modality": DEFAULT_MODALITY[self.kind], "series_date": da, "series_time": tm,
            "series_description": self.topic, "frame_of_reference_uid": new_uid(),
            "tf_frame_id": getattr(header, "frame_id", "") if header is not None else "",
        }
        if self.kind == ctx.KIND_VIDEO:
            values.update(rows=shape[0], columns=shape[1], pixel_encoding=encoding)
        elif self.kind == ctx.KIND_POSE:
            values["tool_ids"] = list(tool_ids) or [self.tool_id]
        values.update(self.spec)
        if self.kind == ctx.KIND_WAVEFORM:
            values["nominal_rate_hz"] = values["sampling_frequency_hz"]
        values["session"] = ctx.to_dict(self.session())
        descriptor = ctx.from_dict(ctx.StreamDescriptor, values, f"streams.{self.topic}.")
        return descriptor.validate(f"streams.{self.topic}")

    def _time(self, log_ns: int, msg: Any) -> tuple[int, Any]:
        header = getattr(msg, "header", None)
        stamp = stamp_ns(header.stamp) if header is not None else 0
        return (stamp if stamp >= EARLIEST_NS else log_ns), header

    def sample(self, log_ns: int, msg: Any) -> Sample | None:
        """A frame, a pose or a waveform chunk of a plain message."""
        stamp, header = self._time(log_ns, msg)
        sequence = self.sequence
        self.sequence += 1
        if self.kind == ctx.KIND_VIDEO:
            pixels, encoding = decode_image(self.msgtype, msg)
            if self.KEY not in self.descriptors:
                self.descriptors[self.KEY] = self._descriptor(stamp, header, pixels.shape,
                                                              encoding)
            return Sample(self.KEY, (pixels, stamp, sequence))
        if self.KEY not in self.descriptors:
            self.descriptors[self.KEY] = self._descriptor(stamp, header)
        if self.kind == ctx.KIND_POSE:
            p, q = msg.pose.position, msg.pose.orientation
            return Sample(self.KEY, (self.tool_id, stamp, (p.x, p.y, p.z),
                                     (q.x, q.y, q.z, q.w), True, sequence))
        return self._chunk(stamp, msg, sequence)

    def _chunk(self, stamp: int, msg: Any, sequence: int) -> Sample | None:
        """A waveform array: digital values, timed on the sampling clock from the first
        message (contiguous: sample k is at first time + k / fs)."""
        sensitivity, baseline = self.scale
        n = sensitivity.size
        values = np.asarray(msg.data, np.float64)
        if values.size == 0:
            return None
        if values.size % n:
            raise DicomOrError(f"{self.topic}.data", f"length is not a multiple of the "
                               f"{n} channels of the stream YAML", values.size)
        values = values.reshape(-1, n)
        if self.msgtype != "std_msgs/msg/Int16MultiArray":
            values = np.rint(values / sensitivity - baseline)
        digital = np.clip(values, *_INT16).astype(np.int16)
        if self.next_index == 0:
            self.first_ns = stamp
        fs = self.descriptors[self.KEY].sampling_frequency_hz
        first = self.first_ns + round(self.next_index * 1e9 / fs)
        sample = Sample(self.KEY, (digital, first, self.next_index, sequence))
        self.next_index += digital.shape[0]
        return sample


def decode_image(msgtype: str, msg: Any) -> tuple[np.ndarray, str]:
    """A sensor_msgs Image or CompressedImage as (pixels, rgb8 | bgr8 | mono8)."""
    if msgtype.endswith("CompressedImage"):
        image = cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_UNCHANGED)
        if image is None or image.dtype != np.uint8:
            raise DicomOrError("image", "compressed image cannot be decoded as 8-bit",
                               msg.format)
        if image.ndim == 2:
            return image, "mono8"
        return np.ascontiguousarray(image[:, :, :3]), "bgr8"
    encoding = str(msg.encoding)
    alpha = {"rgba8": "rgb8", "bgra8": "bgr8"}
    if encoding in alpha:
        four = np.frombuffer(bytes(msg.data), np.uint8, count=msg.step * msg.height)
        rows = four.reshape(msg.height, msg.step)[:, :msg.width * 4]
        return np.ascontiguousarray(rows.reshape(msg.height, msg.width, 4)[:, :, :3]), \
            alpha[encoding]
    return frame_pixels(encoding, msg.width, msg.height, msg.step, msg.data), encoding


def estimate_rate(log_times: Sequence[int]) -> float:
    """Messages per second of a topic from the log times of its first messages (the
    median interval, so one stall does not count), at least 1, to two decimals."""
    steps = np.diff(np.asarray(log_times, np.int64))
    steps = steps[steps > 0]
    if steps.size == 0:
        return 1.0
    return max(1.0, round(1e9 / float(np.median(steps)), 2))


def today_session_check(session: ctx.SessionContext) -> ctx.SessionContext:
    """A caller's session, validated, with a study date of today when it has none."""
    if not session.study.study_date:
        da, tm = ctx.now_da_tm(_dt.datetime.now())
        session.study.study_date, session.study.study_time = da, tm
    if not session.synchronization_frame_of_reference_uid:
        session.synchronization_frame_of_reference_uid = new_uid()
    return session.validate("session")
