"""Replay node (``dicom_or_replay``): a DICOM recording back onto ROS 2 topics, as live.

The recorded study (:mod:`dicom_or_core.replay`) gives back each Series' stream descriptor and
its samples; this node publishes them the way the drivers do, so every subscriber (the
bridge, a recorder, an algorithm) sees the streams it would see live:

* the recorded SessionContext, latched on ``/or/session_context`` (``publish_session_context``);
* per stream, the recorded descriptor (same Study, Series, Synchronization Frame of Reference
  UIDs, equipment, channels) latched on ``<topic>/descriptor``, its samples (ImageFrame,
  WaveformChunk, PoseSample) on ``<topic>`` with the driver's named QoS profile (overridable
  per topic, ``qos_overrides.<topic>.publisher.*``), and a DeviceStatus on
  ``/or/device_status`` plus a ``/diagnostics`` entry (:class:`dicom_or_drivers.stream.
  StreamPublisher`);
* every sample at its recorded time on one clock for all streams (``rate``, ``loop``,
  ``start_offset_s``), with its recorded acquisition time; sequence numbers count from 0.

At the end of the recording (no loop) each stream reports SOURCE_LOST "end of the recording",
as a video driver at the end of its file; the node stays up (descriptors stay latched) until
Ctrl-C.
"""

from __future__ import annotations

import array
import sys
import threading
import time
from dataclasses import replace
from typing import Any

from rclpy.node import Node

from dicom_or_core.model import context as ctx
from dicom_or_core.model.errors import DicomOrError
from dicom_or_core.replay.pull import pull_study
from dicom_or_core.replay.schedule import ReplayOptions, play
from dicom_or_core.replay.sources import (
    PoseSample as RecordedPose,
)
from dicom_or_core.replay.sources import (
    RecordedSeries,
    Sample,
    VideoSample,
    WaveformSample,
    load_study,
    remap_topics,
)
from dicom_or_drivers.stream import (
    SOURCE_LOST,
    DriverParameters,
    SampleStamp,
    SessionFollower,
    StatusReporter,
    StreamConfig,
    StreamPublisher,
)
from dicom_or_msgs.msg import ImageFrame, PoseSample, WaveformChunk
from dicom_or_msgs.msg import SessionContext as SessionContextMsg
from dicom_or_ros.convert import ns_to_time, to_msg
from dicom_or_ros.graph import SESSION_CONTEXT_TOPIC
from dicom_or_ros.image import fill_image
from dicom_or_ros.params import load_parameters
from dicom_or_ros.qos import named_qos
from dicom_or_ros.runtime import run_node

MESSAGE_CLASSES: dict[int, type] = {ctx.KIND_VIDEO: ImageFrame, ctx.KIND_POSE: PoseSample,
                                    ctx.KIND_WAVEFORM: WaveformChunk}


def parse_remaps(entries: list[str]) -> dict[str, str]:
    """``FROM=TO`` entries as a dict; DicomOrError naming ``topic_remap`` otherwise."""
    remaps = {}
    for entry in entries:
        source, sep, target = entry.partition("=")
        if not sep or not source.startswith("/"):
            raise DicomOrError("topic_remap", "entries are FROM=TO with fully qualified "
                               "topics", entry)
        remaps[source.strip()] = target.strip()
    return remaps


class _RecordedSession(SessionFollower):
    """The session of the recording, fixed: the streams follow no live session context
    (a replayed Series keeps its recorded Study whatever a live session_context says)."""

    def __init__(self, node: Node, session: ctx.SessionContext) -> None:
        self._node = node
        self._listeners = []
        self.session = session
        self.ad_hoc = False


class _StreamParameters(DriverParameters):
    """What a StreamPublisher takes from the driver parameters, from the recording."""

    def __init__(self, descriptor: ctx.StreamDescriptor, status_period_s: float) -> None:
        self.require_session_context = True
        self.status_period_s = status_period_s
        self.body_part_examined = descriptor.body_part_examined
        self.equipment = descriptor.equipment


class ReplayStream(StreamPublisher):
    """A StreamPublisher whose Series is the recorded one: the recorded descriptor is
    published (with this node's stream UUID and topic) instead of a new Series."""

    def __init__(self, node: Node, series: RecordedSeries, session: _RecordedSession,
                 status: StatusReporter, status_period_s: float, chunk_ms: float) -> None:
        d = series.descriptor
        self.recorded = d
        # Waveform chunks: the QoS deadline is judged per message, not per sample.
        chunks_hz = 1000.0 / chunk_ms if d.kind == ctx.KIND_WAVEFORM else None
        config = StreamConfig(
            topic=d.topic, msg_type=MESSAGE_CLASSES[d.kind], kind=d.kind, modality=d.modality,
            qos_profile=d.qos_profile, nominal_rate_hz=d.nominal_rate_hz,
            series_description=d.series_description, tf_frame_id=d.tf_frame_id,
            position_reference_indicator=d.position_reference_indicator, rows=d.rows,
            columns=d.columns, pixel_encoding=d.pixel_encoding,
            sampling_frequency_hz=d.sampling_frequency_hz, channels=list(d.channels),
            tool_ids=list(d.tool_ids), message_rate_hz=chunks_hz)
        super().__init__(node, config, _StreamParameters(d, status_period_s), session, status)

    def _start_series(self, session: ctx.SessionContext) -> None:
        descriptor = replace(self.recorded, stream_uuid=self.stream_uuid, topic=self.topic)
        try:
            descriptor.validate("descriptor")
        except DicomOrError as exc:
            self._node.get_logger().error(f"{self.topic}: recorded Series is not replayable: "
                                          f"{exc}")
            return
        self._begin_series(descriptor, f"{self.topic}: replaying Series "
                           f"{descriptor.series_number} {descriptor.series_instance_uid} "
                           f"({descriptor.modality}) of Study "
                           f"{session.study.study_instance_uid}", "replay starting")


class ReplayNode(Node):
    """Publishes a recorded study's streams with their recorded timing and context."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("replay", **kwargs)
        # Every parameter, its type, default and rule: replay_parameters.yaml.
        p = self.params = load_parameters(self, "dicom_or_drivers", "replay_parameters.yaml")
        remaps = parse_remaps(list(p.topic_remap))
        if p.pacs_port:
            self._pull()
        self.study = load_study(p.input, p.study_instance_uid, p.topic_prefix)
        remap_topics(self.study, remaps)
        for series in self.study.series:
            if series.kind == ctx.KIND_VIDEO:
                series.descriptor = replace(series.descriptor, qos_profile=p.video_qos_profile)
        self.options = ReplayOptions(rate=p.rate, loop=p.loop, start_offset_s=p.start_offset_s,
                                     waveform_chunk_ms=float(p.waveform_chunk_ms)
                                     ).validate(self.study)
        for skipped in self.study.skipped:
            self.get_logger().info(f"not replayed: {skipped}")
        session = self.study.session
        if p.publish_session_context:
            self._session_pub = self.create_publisher(
                SessionContextMsg, SESSION_CONTEXT_TOPIC, named_qos("descriptor"))
            msg = to_msg(session)
            msg.header.stamp = self.get_clock().now().to_msg()
            self._session_pub.publish(msg)
        self.status = StatusReporter(self)
        follower = _RecordedSession(self, session)
        self.streams = [ReplayStream(self, series, follower, self.status, p.status_period_s,
                                     self.options.waveform_chunk_ms)
                        for series in self.study.series]
        length = (self.study.end_ns - self.study.start_ns) / 1e9
        self.get_logger().info(
            f"replaying Study {session.study.study_instance_uid} from {p.input}: "
            f"{len(self.streams)} streams, {length:.1f} s, rate {p.rate:g}"
            f"{', loop' if p.loop else ''}, from {p.start_offset_s:g} s")
        self.finished = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="replay", daemon=True)
        self._thread.start()

    def _pull(self) -> None:
        """C-GET the study from the PACS into ``input`` (PS3.4 C.4.3)."""
        p = self.params
        if not p.input:
            raise DicomOrError("input", "is required: the folder the pulled study goes to")
        if not p.study_instance_uid:
            raise DicomOrError("study_instance_uid", "is required to pull a study from a "
                               "PACS (pacs_port > 0)")
        self.get_logger().info(f"pulling Study {p.study_instance_uid} from "
                               f"{p.pacs_ae_title}@{p.pacs_host}:{p.pacs_port} into {p.input}")
        result = pull_study(p.pacs_host, p.pacs_port, p.pacs_ae_title, p.study_instance_uid,
                            p.input, p.calling_ae_title, p.pacs_timeout_s)
        self.get_logger().info(f"pulled {len(result.files)} instances")
        if result.failed:
            self.get_logger().warning(f"{result.failed} instances of the study were not "
                                      f"sent (C-GET status 0x{result.status:04X}): SOP "
                                      "Classes that are no recorded stream")

    # --- replay loop ---------------------------------------------------------------------

    def _wait_for_subscribers(self) -> None:
        wanted, timeout = self.params.wait_for_subscribers, self.params.wait_timeout_s
        if wanted <= 0:
            return
        deadline = time.monotonic() + timeout
        while not self._stop.is_set():
            missing = [s.topic for s in self.streams
                       if s.publisher.get_subscription_count() < wanted]
            if not missing:
                return
            if time.monotonic() >= deadline:
                self.get_logger().warning(f"starting without {wanted} subscriber(s) on "
                                          f"{', '.join(missing)} after {timeout:g} s")
                return
            self._stop.wait(0.05)

    def _run(self) -> None:
        try:
            self._wait_for_subscribers()
            result = play(self.study, self.options, self._emit, self._stop)
        except Exception as exc:  # noqa: BLE001 - a broken file ends the replay, not the node
            if self.context.ok():
                self.get_logger().error(f"replay failed: {exc}")
                for stream in self.streams:
                    stream.set_state(SOURCE_LOST, f"replay failed: {exc}")
            self.finished.set()
            return
        if not result.stopped and self.context.ok():
            counts = ", ".join(f"{s.topic} {n}" for s, n in zip(self.streams, result.published,
                                                                strict=True))
            self.get_logger().info(f"end of the recording: {counts} samples; latest "
                                   f"{result.max_late_s * 1000:.1f} ms behind schedule")
            for stream in self.streams:
                stream.set_state(SOURCE_LOST, "end of the recording (loop is off)")
        self.finished.set()

    def _emit(self, index: int, sample: Sample) -> None:
        stream = self.streams[index]
        if isinstance(sample, VideoSample):
            stream.publish(lambda stamp: self._frame(stream, sample, stamp),
                           sample.acquisition_ns)
        elif isinstance(sample, WaveformSample):
            stream.publish(lambda stamp: self._chunk(sample, stamp), sample.acquisition_ns)
        elif isinstance(sample, RecordedPose):
            stream.publish(lambda stamp: self._pose(sample, stamp), sample.acquisition_ns)

    @staticmethod
    def _frame(stream: ReplayStream, sample: VideoSample, stamp: SampleStamp) -> ImageFrame:
        frame = ImageFrame()
        image = fill_image(frame.image, sample.image, "rgb8")
        image.header.stamp = stamp.capture_stamp()
        image.header.frame_id = stream.config.tf_frame_id
        stamp.fill(frame.context)
        return frame

    @staticmethod
    def _chunk(sample: WaveformSample, stamp: SampleStamp) -> WaveformChunk:
        msg = WaveformChunk()
        stamp.fill(msg.context)
        msg.first_sample_time = ns_to_time(sample.acquisition_ns)
        msg.sample_period = 1.0 / sample.sampling_frequency_hz
        msg.first_sample_index = sample.first_sample_index
        msg.channel_count = sample.samples.shape[1]
        msg.samples = array.array("h", sample.samples.tobytes())  # interleaved by channel
        return msg

    @staticmethod
    def _pose(sample: RecordedPose, stamp: SampleStamp) -> PoseSample:
        msg = PoseSample()
        stamp.fill(msg.context)
        msg.tool_id = sample.tool_id
        p, q = msg.pose.position, msg.pose.orientation
        p.x, p.y, p.z = sample.position
        q.x, q.y, q.z, q.w = sample.orientation
        msg.visible = True          # occluded poses are not recorded
        msg.tracking_quality = 1.0  # nor is the quality
        return msg

    def close(self) -> None:
        """Stop the replay, publish STOPPED on every stream."""
        self._stop.set()
        self._thread.join(timeout=5.0)
        for stream in self.streams:
            stream.close()


def main(args: list[str] | None = None) -> None:
    """Run ``dicom_or_replay`` until Ctrl-C / SIGTERM; a bad parameter or an input with
    nothing to replay: one error line, exit 1."""
    sys.exit(run_node(ReplayNode, args))
