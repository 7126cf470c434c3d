"""Recorder node (``recorder``): stream topics -> DICOM instances -> PACS.

Finds streams with :func:`dicom_or_ros.graph.discover_streams` (every period), follows
those that pass the filters (``kinds``, ``topics``, ``series_instance_uids``), waits for each
stream's latched descriptor and records its samples through a
:class:`~dicom_or_recorder.segments.StreamRecorder` into the durable spool under
``recordings_dir``. A background :class:`~dicom_or_core.scu.storage.StorageSender` stores
finished instances to the PACS by C-STORE or STOW-RS (``pacs_*`` parameters;
``pacs_protocol``; ``pacs_port`` 0 / empty ``pacs_stow_url`` = local only). With
``mcap_output`` the followed topics are also kept, as received, in a rosbag2 MCAP bag per run
(:class:`~dicom_or_core.bags.recording.BagRecorder`).

Interfaces:

* ``~/control`` (dicom_or_msgs/srv/RecordControl): START / STOP / SNAPSHOT for listed Series
  or, with an empty list, every followed stream (START/STOP with an empty list also decide
  for streams found later). STOP and SNAPSHOT return the finalised SOP Instance UIDs.
* ``~/status`` (dicom_or_msgs/RecorderStatus, profile "status", every ``status_period_s``):
  per stream what is recording, frames / samples / acknowledged messages, lost messages from
  sequence gaps, bytes journaled, instances; the spool's instance states and the PACS queue
  (:mod:`dicom_or_recorder.status`).
* ``/diagnostics``: a ``node`` entry (PACS backlog and store state, disk free, recovery;
  WARN when the disk is low, the PACS is unreachable or the backlog does not shrink) and
  one entry per followed stream (received, lost, encoder queue depth, segments, last
  error; STALE when a recording stream went silent, ERROR when it cannot be recorded).

Every stream is subscribed with what its publishers offer
(:func:`dicom_or_ros.qos.adapt_request_to_offers`, as rosbag2 records): RELIABLE when every
publisher is reliable (a driver switched to RELIABLE for lossless capture), else
BEST_EFFORT (drivers publish video best effort, profile "video"). Lost frames are counted
from sequence gaps and kept as gaps in the frame timing.
Video frames are not encoded in the subscription callback: it hands them to the stream's
:class:`~dicom_or_recorder.video_queue.VideoEncoderQueue` (``video_queue_frames`` deep),
whose worker thread encodes and journals them; a full queue drops the frame, counted as
``dropped_backpressure``, its time kept as a gap.
Stopping never waits on work that could have been done while recording: segments are
closed continuously (``max_segment_s`` / ``max_segment_bytes``) and a video's stream is
muxed as it is encoded, so a STOP request answers at once (the instances it closes are
reported as ``finalising`` in the status until final) and SIGINT / SIGTERM ->
:meth:`RecorderNode.close` finalises at most the last open segment of each stream, within
``shutdown_timeout_s``. Journals an earlier run left behind (a crash, a kill) are
finalised by a recovery thread beside new recording, which starts at once.
"""

from __future__ import annotations

import re
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from ament_index_python.packages import get_package_share_directory
from rclpy._rclpy_pybind11 import RCLError
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.serialization import serialize_message

from dicom_or_core.archive.spool import COMMITTED, FINAL, STORED, Journal, Spool
from dicom_or_core.bags.recording import BagRecorder
from dicom_or_core.model import context as ctx
from dicom_or_core.model.errors import DicomOrError
from dicom_or_core.scu.mpps import MppsPeer
from dicom_or_core.scu.storage import PacsConfig, StorageSender
from dicom_or_msgs.msg import (
    ImageFrame,
    PoseSample,
    RecorderStatus,
    StreamDescriptor,
    VideoPacket,
    WaveformChunk,
)
from dicom_or_msgs.srv import RecordControl
from dicom_or_recorder.segments import (
    PassthroughVideoRecorder,
    PoseRecorder,
    RecorderOptions,
    StreamRecorder,
    VideoRecorder,
    WaveformRecorder,
    finalise_journal,
    recorder_for,
)
from dicom_or_recorder.status import status_message
from dicom_or_recorder.video_queue import VideoEncoderQueue
from dicom_or_recorder.workflow import Workflow, detach
from dicom_or_ros.convert import from_msg, time_to_ns
from dicom_or_ros.diagnostics import (
    ERROR,
    NODE_ENTRY,
    OK,
    STALE,
    WARN,
    Health,
    diagnostics_for,
    worst,
)
from dicom_or_ros.graph import (
    IMAGE_FRAME_TYPE,
    POSE_SAMPLE_TYPE,
    VIDEO_PACKET_TYPE,
    WAVEFORM_CHUNK_TYPE,
    StreamTopic,
    discover_streams,
)
from dicom_or_ros.image import image_to_array
from dicom_or_ros.params import load_parameters
from dicom_or_ros.qos import adapt_request_to_offers, named_qos, overridable
from dicom_or_ros.runtime import run_node

# Compressed video (descriptor video_codec "h264", VIDEO_PACKET_TYPE): H.264 access units,
# stored unchanged.
KIND_OF_TYPE = {IMAGE_FRAME_TYPE: "video", VIDEO_PACKET_TYPE: "video",
                POSE_SAMPLE_TYPE: "pose", WAVEFORM_CHUNK_TYPE: "waveform"}
MSG_OF_TYPE = {IMAGE_FRAME_TYPE: ImageFrame, VIDEO_PACKET_TYPE: VideoPacket,
               POSE_SAMPLE_TYPE: PoseSample, WAVEFORM_CHUNK_TYPE: WaveformChunk}
# The message type each video_codec is carried in (the descriptor says which to expect).
TYPE_OF_VIDEO_CODEC = {"": IMAGE_FRAME_TYPE, "h264": VIDEO_PACKET_TYPE}
# History and depth of the sample subscriptions (reliability and durability follow the
# publishers): video keeps "video_recording"'s 30 frames, so a reliable driver is not
# throttled by a 2-deep reader.
PROFILE_OF_KIND = {"video": "video_recording", "pose": "pose", "waveform": "waveform"}
# H.264 packets: the depth of the profile drivers publish them with (2 s at 60 fps).
PROFILE_OF_TYPE = {VIDEO_PACKET_TYPE: "video_compressed"}
# Samples taken per wake-up of a stream's thread before it checks for shutdown again.
MAX_TAKEN_PER_WAKE = 1000
# /diagnostics: a recording stream silent this long is STALE; a PACS backlog that has not
# shrunk for this long is WARN (instances are waiting, not just being sent).
SILENT_STALE_S = 5.0
BACKLOG_STUCK_S = 60.0


class _Followed:
    """One followed stream topic: its descriptor subscription, recorder and lock."""

    def __init__(self, topic: StreamTopic) -> None:
        self.topic = topic
        self.kind = KIND_OF_TYPE[topic.message_type]
        self.lock = threading.Lock()
        self.group = MutuallyExclusiveCallbackGroup()
        self.descriptor_sub = None
        self.sample_sub = None
        self.sample_node: Node | None = None
        self.sample_executor: SingleThreadedExecutor | None = None
        self.sample_thread: threading.Thread | None = None
        self.recorder: StreamRecorder | None = None
        self.video_queue: VideoEncoderQueue | None = None  # video: frames to the encoder
        self.recording = False
        self.foreign_samples = 0
        self.errors = 0
        self.refused_by: dict[str, int] = {}  # refused samples per reason (the field)
        self.last_sample = 0.0  # time.monotonic() of the last sample taken
        self.refused = ""       # why the stream's descriptor cannot be recorded


class RecorderNode(Node):
    """Records every followed stream into DICOM instances; see the module docstring."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("recorder", **kwargs)
        # Every parameter, its type, default and rule: recorder_parameters.yaml.
        p = self.params = load_parameters(self, "dicom_or_recorder",
                                          "recorder_parameters.yaml")
        self.recordings_dir, self.record_on_start = p.recordings_dir, p.record_on_start
        self.kinds, self.topics, self.series_filter = p.kinds, p.topics, p.series_instance_uids
        self.discovery_period_s = p.discovery_period_s
        self.video_queue_frames, self.video_queue_mib = p.video_queue_frames, p.video_queue_mib
        self.options = RecorderOptions(
            max_segment_s=p.max_segment_s, max_segment_bytes=p.max_segment_bytes,
            video_mode=p.video_mode, video_quality=p.video_quality,
            video_preset=p.video_preset, max_poses_per_instance=p.max_poses_per_instance,
            max_clock_skew_s=p.max_clock_skew_s).validate()
        fsync_interval_s = p.fsync_interval_s
        pacs = PacsConfig(
            ae_title=p.pacs_ae_title, host=p.pacs_host, port=p.pacs_port,
            calling_ae_title=p.calling_ae_title, storage_commitment=p.storage_commitment,
            commitment_port=p.commitment_port, commitment_timeout_s=p.commitment_timeout_s,
            initial_backoff_s=p.initial_backoff_s, max_backoff_s=p.max_backoff_s,
            batch_size=p.pacs_batch_size, protocol=p.pacs_protocol, stow_url=p.pacs_stow_url,
            token=p.pacs_token, tls_ca_file=p.pacs_tls_ca_file,
            tls_cert_file=p.pacs_tls_cert_file, tls_key_file=p.pacs_tls_key_file,
            max_request_bytes=p.pacs_stow_max_request_mib << 20).validate()
        mpps_peer = MppsPeer(p.mpps_ae_title, p.mpps_host, p.mpps_port, p.calling_ae_title,
                             p.mpps_timeout_s).validate()
        self.retention_days = p.retention_days
        status_period_s = p.status_period_s
        self.disk_warn_free_mib = p.disk_warn_free_mib
        self.shutdown_timeout_s = p.shutdown_timeout_s
        # The followed topics kept as a rosbag2 MCAP bag too (mcap_output, docs/convert.md).
        self.bag = BagRecorder(p.mcap_output, [Path(get_package_share_directory(
            "dicom_or_msgs")) / "msg"]) if p.mcap_output else None

        try:
            self.spool = Spool(self.recordings_dir, fsync_interval_s)
        except OSError as exc:
            raise DicomOrError("recordings_dir", f"cannot be used: {exc.strerror}",
                               self.recordings_dir) from None
        # Half-written files are settled now (fast); the journals an earlier run left are
        # listed now, before any segment of this run opens, and finalised beside recording.
        for problem in self.spool.problems:
            self.get_logger().error(problem)
        removed = self.spool.recover_files()
        if removed:
            self.get_logger().info(f"removed {removed} partial file(s) of an earlier run")
        leftovers = self.spool.journals()
        self.recovered: list[str] = []
        self.recovery = {"pending": len(leftovers), "finalised": 0, "discarded": 0,
                         "quarantined": 0}
        self.sender = StorageSender(self.spool, pacs)
        self.sender.start()
        # IHE Scheduled Workflow: the MPPS of worklist cases (workflow.py).
        self.workflow = Workflow(mpps_peer, self.spool,
                                 p.mpps_station_ae_title or p.calling_ae_title,
                                 p.pacs_ae_title if pacs.enabled else "", self._finalising)
        # Instances are built and written off the sample callbacks, so a segment boundary
        # (header, file copy, fsync) does not stall a stream; two workers so that streams
        # stopping together finalise in parallel on two cores.
        self._finaliser = ThreadPoolExecutor(max_workers=2, thread_name_prefix="finalise")
        self._recovery_thread = threading.Thread(
            target=self._recover, args=(leftovers,), name="recover", daemon=True)
        self._record_all = self.record_on_start
        self._series_override: dict[str, bool] = {}
        self._followed: dict[str, _Followed] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._control_group = MutuallyExclusiveCallbackGroup()
        self._status_pub = self.create_publisher(RecorderStatus, "~/status",
                                                 named_qos("status"),
                                                 qos_overriding_options=overridable())
        self._last_status: dict[str, Any] | None = None
        self._backlog = (0, time.monotonic())  # PACS queue, when it last shrank or was 0
        self._stream_errors: dict[str, int] = {}  # errors per topic at the last report
        diagnostics_for(self).add(NODE_ENTRY, self._node_health,
                                  hardware_id=str(self.spool.root))
        self.create_service(RecordControl, "~/control", self._on_control,
                            callback_group=self._control_group)
        self.create_timer(self.discovery_period_s, self._discover,
                          callback_group=self._control_group)
        self.create_timer(status_period_s, self._publish_status,
                          callback_group=self._control_group)
        self.get_logger().info(f"recording into {self.spool.root} ({pacs.describe()})")
        if leftovers:
            self.get_logger().info(f"finalising {len(leftovers)} segment(s) an earlier run "
                                   "left, beside recording")
            self._recovery_thread.start()

    # -- recovery ------------------------------------------------------------------------

    def _recover(self, leftovers: list[Journal]) -> None:
        """Finalise an earlier run's journals one by one; stops early on shutdown (the rest
        stay journals for the next start). Every loss and quarantine is logged by name."""
        log = self.get_logger()
        for journal in leftovers:
            if self._closed:
                return
            result = self.spool.finalise_leftover(journal, finalise_journal)
            self.recovery["pending"] -= 1
            name = journal.directory.name
            if result.finalised:
                self.recovery["finalised"] += 1
                self.recovered.append(result.sop_instance_uid)
                self.sender.wake()
            elif result.quarantined:
                self.recovery["quarantined"] += 1
                log.error(f"segment {name} could not be finalised and was moved to "
                          f"{self.spool.quarantine_dir}: {result.quarantined}")
            else:
                self.recovery["discarded"] += 1
            if result.damaged:
                log.warning(f"segment {name}: {result.damaged}; every other record is in "
                            f"instance {result.sop_instance_uid}")
        log.info(f"recovery done: {self.recovery['finalised']} segment(s) finalised, "
                 f"{self.recovery['discarded']} empty, {self.recovery['quarantined']} "
                 "quarantined")

    # -- discovery -----------------------------------------------------------------------

    def _wanted(self, topic: StreamTopic) -> bool:
        kind = KIND_OF_TYPE.get(topic.message_type)
        return (kind is not None and (not self.kinds or kind in self.kinds)
                and (not self.topics or topic.topic in self.topics))

    def _discover(self) -> None:
        if self._closed:
            return
        for topic in discover_streams(self):
            if topic.topic in self._followed or not self._wanted(topic):
                continue
            followed = _Followed(topic)
            followed.descriptor_sub = self.create_subscription(
                StreamDescriptor, topic.descriptor_topic,
                lambda msg, f=followed: self._on_descriptor(f, msg),
                named_qos("descriptor"), callback_group=followed.group)
            with self._lock:
                self._followed[topic.topic] = followed
            diagnostics_for(self).add(topic.topic, lambda t=topic.topic: self._stream_health(t),
                                      hardware_id=topic.topic)
            self.get_logger().info(f"following {topic.topic} ({followed.kind})")

    def _should_record(self, series_uid: str) -> bool:
        return self._series_override.get(series_uid, self._record_all)

    def _on_descriptor(self, followed: _Followed, msg: StreamDescriptor) -> None:
        self._keep(followed.topic.descriptor_topic, "dicom_or_msgs/msg/StreamDescriptor", msg)
        try:
            descriptor = from_msg(ctx.StreamDescriptor, msg).validate()
            if followed.kind == "video" and followed.topic.message_type != \
                    TYPE_OF_VIDEO_CODEC[descriptor.video_codec]:
                raise DicomOrError("descriptor.video_codec", f"says "
                                   f"{descriptor.video_codec or 'raw'} video, but the topic "
                                   f"carries {followed.topic.message_type}",
                                   descriptor.video_codec)
            if self.series_filter and descriptor.series_instance_uid not in \
                    self.series_filter:
                return
            with followed.lock:
                old = followed.recorder
                if old is not None and old.descriptor.series_instance_uid == \
                        descriptor.series_instance_uid:
                    return
                if old is not None:  # a new Series on the same topic (driver restarted)
                    if followed.video_queue is not None:
                        closing, followed.video_queue = followed.video_queue, None
                        closing.close()
                    else:
                        old.stop()
                recorder = recorder_for(descriptor, self.spool, self.options)
                recorder.finaliser = self._finaliser
                recorder.on_final = self.sender.wake
                if isinstance(recorder, PassthroughVideoRecorder):
                    # Packets are small (an IDR ~1 MB at most at Level 4.2) and each one
                    # dropped costs the rest of its second: room for 4 s of them.
                    capacity = max(self.video_queue_frames,
                                   round(4 * descriptor.nominal_rate_hz))
                    followed.video_queue = VideoEncoderQueue(
                        recorder, capacity,
                        on_error=lambda exc, f=followed: self._refused(f, exc))
                elif isinstance(recorder, VideoRecorder):
                    # Bounded in frames and in bytes, so memory does not grow with the
                    # frame size (a 4K frame is 24 MB) whatever the encoder's backlog.
                    frame_bytes = descriptor.rows * descriptor.columns * 3
                    capacity = max(1, min(self.video_queue_frames,
                                          (self.video_queue_mib << 20) // frame_bytes))
                    followed.video_queue = VideoEncoderQueue(
                        recorder, capacity,
                        on_error=lambda exc, f=followed: self._refused(f, exc))
                followed.recorder = recorder
                followed.recording = self._should_record(descriptor.series_instance_uid)
                if followed.recording:  # the case's MPPS before the first segment opens
                    recorder.descriptor = self.workflow.begin(recorder.descriptor)
                    self.workflow.started()
        except DicomOrError as exc:
            followed.errors += 1
            followed.refused = str(exc)
            self.get_logger().error(f"{followed.topic.topic}: not recordable: {exc}")
            return
        followed.refused = ""
        if followed.sample_sub is None:
            self._subscribe_samples(followed, descriptor)
        self.get_logger().info(f"{followed.topic.topic}: Series "
                               f"{descriptor.series_instance_uid} ({descriptor.modality})")

    # -- samples -------------------------------------------------------------------------

    def _subscribe_samples(self, followed: _Followed, descriptor: ctx.StreamDescriptor) -> None:
        """Subscribe a stream's samples on a node and single-threaded executor of its own,
        spun by a thread of its own: per-stream order is kept, streams run in parallel,
        and frames are taken as fast as they come. (Measured: 1080p30 BEST_EFFORT through
        the process's MultiThreadedExecutor lost 44 % of the frames with encoding and 87 %
        with an empty callback; a dedicated single-threaded executor lost none.)"""
        profile = PROFILE_OF_TYPE.get(followed.topic.message_type,
                                      PROFILE_OF_KIND[followed.kind])
        qos = adapt_request_to_offers(self, followed.topic.topic, named_qos(profile))
        name = "recorder_" + re.sub(r"[^A-Za-z0-9_]", "_", followed.topic.topic).strip("_")
        # use_global_arguments=False: the launcher's global ``__node:=recorder`` remap
        # would otherwise give every helper node the recorder's name (ROS 2 warns about
        # duplicate names, and /rosout cannot tell them apart).
        node = Node(name, context=self.context, namespace=self.get_namespace(),
                    start_parameter_services=False, use_global_arguments=False)
        followed.sample_sub = node.create_subscription(
            MSG_OF_TYPE[followed.topic.message_type], followed.topic.topic,
            lambda m, f=followed: self._on_sample(f, m), qos)
        executor = SingleThreadedExecutor(context=self.context)
        executor.add_node(node)
        followed.sample_node, followed.sample_executor = node, executor
        followed.sample_thread = threading.Thread(
            target=self._spin_samples, args=(followed, executor), name=name, daemon=True)
        followed.sample_thread.start()

    def _spin_samples(self, followed: _Followed, executor: SingleThreadedExecutor) -> None:
        """Wait for a stream's samples with its executor, then take every sample already
        waiting straight from the subscription, as rclpy's executor itself takes them, but
        without a wait-set round trip per message: that round trip, not the recording, is
        what limited a 4-tool 1 kHz tracker topic (4,000 messages/s) and made the writer's
        history overwrite poses the recorder had not taken yet."""
        sub = followed.sample_sub
        try:
            while not self._closed and self.context.ok():
                executor.spin_once(timeout_sec=0.1)
                for _ in range(MAX_TAKEN_PER_WAKE):
                    with sub.handle:
                        taken = sub.handle.take_message(sub.msg_type, sub.raw)
                    if taken is None:
                        break
                    self._on_sample(followed, taken[0])
        except (ExternalShutdownException, RCLError):
            pass  # the context is shutting down: close() finalises

    def _on_sample(self, followed: _Followed, msg: Any) -> None:
        followed.last_sample = time.monotonic()
        with followed.lock:
            recorder = followed.recorder
            if recorder is None or self._closed:
                return
            if msg.context.series_instance_uid != recorder.descriptor.series_instance_uid:
                followed.foreign_samples += 1  # before its descriptor, or a stale Series
                return
            if followed.recording:
                self._keep(followed.topic.topic, followed.topic.message_type, msg)
            try:
                if isinstance(recorder, VideoRecorder):
                    self._on_video(followed, recorder, msg)
                    return
                if not followed.recording:
                    return
                if isinstance(recorder, WaveformRecorder):
                    samples = np.frombuffer(msg.samples, dtype=np.int16) \
                        if len(msg.samples) else np.zeros(0, np.int16)
                    if msg.channel_count == 0 or samples.size % msg.channel_count:
                        raise DicomOrError("samples", "length is not a multiple of "
                                           "channel_count", (samples.size, msg.channel_count))
                    done = recorder.feed(samples.reshape(-1, msg.channel_count),
                                         time_to_ns(msg.first_sample_time),
                                         msg.first_sample_index, msg.context.sequence)
                else:
                    assert isinstance(recorder, PoseRecorder)
                    p, q = msg.pose.position, msg.pose.orientation
                    done = recorder.feed(msg.tool_id,
                                         time_to_ns(msg.context.acquisition_time),
                                         (p.x, p.y, p.z), (q.x, q.y, q.z, q.w), msg.visible,
                                         msg.context.sequence)
            except (DicomOrError, OSError, ValueError) as exc:
                followed.errors += 1
                self._refused(followed, exc)
                return
        if done:
            self.sender.wake()

    def _on_video(self, followed: _Followed, recorder: VideoRecorder, msg: Any) -> None:
        """Hand a video sample to its stream's worker thread (never waiting for it): a raw
        frame to be encoded, or an H.264 access unit to be journaled as received."""
        video_queue = followed.video_queue
        if video_queue is None:
            raise DicomOrError("frame", "the stream's encoder is closed")
        stamp = time_to_ns(msg.context.acquisition_time)
        sample: np.ndarray | bytes
        if isinstance(recorder, PassthroughVideoRecorder):
            sample = bytes(msg.data)
            recorder.remember(sample, stamp)  # SNAPSHOT decodes from the newest IDR
            if followed.recording:
                video_queue.offer(sample, stamp, msg.context.sequence)
            return
        # Only a reference to the frame is queued: the encoder thread encodes and journals
        # it, this callback never waits for it.
        d = recorder.descriptor
        sample = image_to_array(msg.image, d.pixel_encoding, d.columns, d.rows)
        if followed.recording:
            video_queue.offer(sample, stamp, msg.context.sequence)
        else:
            video_queue.note_latest(sample, stamp)

    def _keep(self, topic: str, msgtype: str, msg: Any) -> None:
        """Add a message as received to the ``mcap_output`` bag, when there is one; a
        failing write (a full disk) is logged, throttled, and never stops recording."""
        if self.bag is None:
            return
        try:
            self.bag.write(topic, msgtype, self.get_clock().now().nanoseconds,
                           bytes(serialize_message(msg)))
        except (DicomOrError, OSError, ValueError) as exc:
            self.get_logger().error(f"mcap_output: {topic}: {exc}",
                                    throttle_duration_sec=5.0)

    def _close_bag(self) -> None:
        """Complete the ``mcap_output`` bag (MCAP summary, metadata.yaml), if any."""
        if self.bag is not None:
            self.get_logger().info(f"bag {self.bag.close()}: {self.bag.messages} messages")

    def _refused(self, followed: _Followed, exc: Exception) -> None:
        """Count a refused sample by reason; log the first of each reason at once and then
        at most one line per stream every 5 s, each with the running counts, so a flood of
        bad samples is fully counted without flooding the log."""
        reason = exc.field if isinstance(exc, DicomOrError) else type(exc).__name__
        first = reason not in followed.refused_by
        followed.refused_by[reason] = followed.refused_by.get(reason, 0) + 1
        if followed.recorder is not None:
            followed.recorder.stats.last_error = str(exc)
        counts = ", ".join(f"{k} {v}" for k, v in sorted(followed.refused_by.items()))
        message = f"{followed.topic.topic}: sample refused: {exc} (refused so far: {counts})"
        if first:
            self.get_logger().warning(message)
        else:
            self.get_logger().warning(message, throttle_duration_sec=5.0)

    # -- control -------------------------------------------------------------------------

    def _select(self, series: list[str]) -> list[_Followed]:
        with self._lock:
            followed = list(self._followed.values())
        if not series:
            return followed
        return [f for f in followed if f.recorder is not None
                and f.recorder.descriptor.series_instance_uid in series]

    def _on_control(self, request: RecordControl.Request,
                    response: RecordControl.Response) -> RecordControl.Response:
        """The ``~/control`` service: START, STOP or SNAPSHOT the selected series (all when
        none is named). Never raises: a refusal is ``success: false`` with the reason."""
        series = list(request.series_instance_uids)
        targets = self._select(series)
        known = {f.recorder.descriptor.series_instance_uid for f in targets if f.recorder}
        unknown = sorted(set(series) - known)
        if unknown:
            response.success = False
            response.message = f"not followed: {', '.join(unknown)}"
            return response
        commands = {RecordControl.Request.START: self._start_streams,
                    RecordControl.Request.STOP: self._stop_streams,
                    RecordControl.Request.SNAPSHOT: self._snapshot_streams}
        uids: list[str] = []
        try:
            command = commands.get(request.command)
            if command is None:
                raise DicomOrError("command", "must be START (1), STOP (2) or SNAPSHOT (3)",
                                   request.command)
            response.message = command(targets, all_streams=not series, uids=uids)
        except (DicomOrError, OSError, ValueError) as exc:
            response.success = False
            response.message = str(exc)
            response.sop_instance_uids = uids
            return response
        if request.command == RecordControl.Request.STOP:
            self._stopped(targets, uids, request.discontinued)
        if uids:
            self.sender.wake()
        response.success = True
        response.sop_instance_uids = uids
        return response

    def _start_streams(self, targets: list[_Followed], *, all_streams: bool,
                       uids: list[str]) -> str:
        """Record ``targets`` from their next sample; with ``all_streams`` also the streams
        found later."""
        if all_streams:
            self._record_all = True
            self._series_override.clear()
        for f in targets:
            with f.lock:
                f.recording = True
                if f.recorder is not None:
                    f.recorder.stats.recording = True
                    f.recorder.descriptor = self.workflow.begin(f.recorder.descriptor)
                    self._series_override[f.recorder.descriptor.series_instance_uid] = True
        self.workflow.started()  # the MPPS of a case these streams opened: N-CREATE
        return f"recording {len(targets)} stream(s)"

    def _stop_streams(self, targets: list[_Followed], *, all_streams: bool,
                      uids: list[str]) -> str:
        """Stop ``targets`` without waiting; ``uids`` gets the instances being finalised."""
        if all_streams:
            self._record_all = False
            self._series_override.clear()
        for f in targets:
            uids += self._stop_stream(f)
        return f"stopped {len(targets)} stream(s), {len(uids)} instance(s) finalising " \
               "(see status)"

    def _stopped(self, targets: list[_Followed], uids: list[str], discontinued: bool) -> None:
        """After a STOP: the case's MPPS ends once none of its streams records (workflow.py);
        the stopped streams' later snapshots belong to no step."""
        with self._lock:
            followed = list(self._followed.values())
        recording = {f.recorder.descriptor.series_instance_uid for f in followed
                     if f.recording and f.recorder is not None}
        self.workflow.streams_stopped(recording, uids, discontinued)
        for f in targets:
            with f.lock:
                if f.recorder is not None and not f.recording:
                    f.recorder.descriptor = detach(f.recorder.descriptor)

    def _finalising(self, series: set[str]) -> bool:
        """Whether an instance of one of ``series`` is still being built."""
        with self._lock:
            followed = list(self._followed.values())
        return any(f.recorder is not None and f.recorder.stats.finalising > 0
                   and f.recorder.descriptor.series_instance_uid in series for f in followed)

    def _snapshot_streams(self, targets: list[_Followed], *, all_streams: bool,
                          uids: list[str]) -> str:
        """One still image of each selected video stream's current frame, into ``uids``."""
        videos = [f.video_queue for f in targets if f.video_queue is not None]
        if not videos:
            raise DicomOrError("series_instance_uids", "no video stream selected")
        for video_queue in videos:
            uids += video_queue.snapshot()
        return f"{len(uids)} snapshot(s)"

    def _stop_stream(self, f: _Followed) -> list[str]:
        """Stop recording one stream without waiting: its open segment is closed and handed
        to the finaliser (a video's queued frames are encoded first, by its worker). Returns
        the SOP Instance UID the segment's instance will have."""
        with f.lock:
            f.recording = False  # from here on the callback queues nothing
            if f.recorder is None:
                return []
            self._series_override[f.recorder.descriptor.series_instance_uid] = False
            if f.video_queue is None:
                return f.recorder.stop(wait=False)
            return f.video_queue.request_stop()

    # -- status --------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What a person wants to know, as a dict (published as JSON)."""
        streams = []
        with self._lock:
            followed = list(self._followed.values())
        for f in followed:
            errors = f.errors + (f.video_queue.errors if f.video_queue else 0)
            entry: dict[str, Any] = {"topic": f.topic.topic, "kind": f.kind,
                                     "recording": f.recording, "errors": errors,
                                     "refused_by": dict(f.refused_by),
                                     "foreign_samples": f.foreign_samples}
            # Seconds since the last sample: a silent device shows here (None: none yet).
            entry["silent_s"] = round(time.monotonic() - f.last_sample, 1) \
                if f.last_sample else None
            if f.recorder is not None:
                s = f.recorder.stats
                entry.update(series_instance_uid=s.series_instance_uid,
                             acknowledged=s.acknowledged, samples=s.samples,
                             lost_messages=s.lost_messages, out_of_order=s.out_of_order,
                             occluded=s.occluded, bytes_journaled=s.bytes_journaled,
                             instances=s.instances, finalising=s.finalising,
                             unwritten=f.recorder.unwritten,
                             last_error=s.last_error, **dict(s.extra))
            elif f.refused:
                entry["refused"] = f.refused
            else:
                entry["waiting_for"] = "descriptor"
            streams.append(entry)
        counts = self.spool.counts()
        sender = self.sender.stats
        return {
            "recordings_dir": str(self.spool.root),
            "disk": self._disk(),
            "streams": streams,
            "recovery": dict(self.recovery),
            "instances": counts,
            # Only with an MPPS destination (RecorderStatus.mpps.enabled).
            **({"mpps": self.workflow.status()} if self.workflow.enabled else {}),
            "pacs": {"enabled": self.sender.config.enabled,
                     "queue": counts[FINAL] + (counts[STORED] if
                                               self.sender.config.commitment else 0),
                     "reachable": sender.pacs_reachable, "stored": sender.stored,
                     "committed": sender.committed, "failed": sender.failed,
                     "retries": sender.retries, "bytes_sent": sender.bytes_sent,
                     "last_error": sender.last_error},
        }

    def _disk(self) -> dict[str, Any]:
        """Free space where the recordings go, and whether it is below the warning level."""
        try:
            usage = shutil.disk_usage(self.spool.root)
        except OSError as exc:
            return {"error": str(exc)}
        free_mib = usage.free / 2**20
        return {"free_mib": round(free_mib), "total_mib": round(usage.total / 2**20),
                "low": free_mib < self.disk_warn_free_mib}

    def _publish_status(self) -> None:
        if self._closed:
            return
        with self._lock:
            followed = list(self._followed.values())
        for f in followed:  # instances a full disk could not take: try again
            if f.recorder is not None and f.recorder.unwritten:
                f.recorder.retry_unwritten()
        if self.retention_days > 0:
            safe = (COMMITTED,) if self.sender.config.commitment else (STORED,)
            self.spool.apply_retention(self.retention_days * 86400.0, safe)
        status = self._last_status = self.status()
        if status["disk"].get("low"):
            self.get_logger().warning(
                f"only {status['disk']['free_mib']} MiB free under {self.spool.root} "
                f"(disk_warn_free_mib {self.disk_warn_free_mib}): recording stops when it "
                "is full", throttle_duration_sec=60.0)
        self._status_pub.publish(status_message(status, self.get_clock().now().to_msg()))

    # -- diagnostics ---------------------------------------------------------------------

    def _current_status(self) -> dict[str, Any]:
        """The status of the last report (the diagnostics run at the same period; the
        spool query and disk check are not repeated for them)."""
        return self._last_status if self._last_status is not None else self.status()

    def _node_health(self) -> Health:
        status = self._current_status()
        pacs, disk, counts = status["pacs"], status["disk"], status["instances"]
        values: dict[str, Any] = {"recordings_dir": status["recordings_dir"],
                                  "disk_free_mib": disk.get("free_mib"),
                                  "pacs_enabled": pacs["enabled"],
                                  "pacs_backlog": pacs["queue"],
                                  "pacs_reachable": pacs["reachable"],
                                  "pacs_stored": pacs["stored"],
                                  "pacs_committed": pacs["committed"],
                                  "pacs_failed": pacs["failed"],
                                  "pacs_retries": pacs["retries"],
                                  "instances_final": counts[FINAL],
                                  "recovery_pending": status["recovery"]["pending"],
                                  "streams": len(status["streams"]),
                                  "last_error": pacs["last_error"]}
        store = "local only" if not pacs["enabled"] else \
            {None: "not contacted yet", True: "reachable", False: "unreachable"}[
                pacs["reachable"]]
        values["store_state"] = store
        values.update(self.workflow.diagnostic_values())
        problems: list[tuple[int, str]] = [(WARN, text) for text in self.workflow.problems()]
        if "error" in disk:
            problems.append((ERROR, f"recordings folder: {disk['error']}"))
        elif disk.get("low"):
            problems.append((WARN, f"disk low: {disk['free_mib']} MiB free"))
        if pacs["enabled"]:
            queue, since = self._backlog
            now = time.monotonic()
            if pacs["queue"] == 0 or pacs["queue"] < queue:
                self._backlog = (pacs["queue"], now)
            elif pacs["queue"] > queue:
                self._backlog = (pacs["queue"], since)
            stuck_s = now - self._backlog[1]
            if pacs["reachable"] is False:
                problems.append((WARN, f"PACS unreachable, backlog {pacs['queue']}"))
            elif pacs["queue"] and stuck_s >= BACKLOG_STUCK_S:
                problems.append((WARN, f"PACS backlog {pacs['queue']} not shrinking for "
                                       f"{stuck_s:.0f} s"))
            if pacs["failed"]:
                problems.append((WARN, f"{pacs['failed']} instance(s) refused by the PACS"))
        if problems:
            return Health(worst(*(level for level, _ in problems)),
                          "; ".join(text for _, text in problems), values)
        return Health(OK, f"recording {sum(1 for s in status['streams'] if s['recording'])}"
                          f"/{len(status['streams'])} stream(s), PACS {store}", values)

    def _stream_health(self, topic: str) -> Health:
        entry = next((s for s in self._current_status()["streams"] if s["topic"] == topic),
                     None)
        if entry is None:
            return Health(OK, "following", {})
        # The same keys in every state (a stream still waiting for its descriptor counts 0),
        # so monitors and plots see one shape per entry.
        values = {k: entry.get(k, default) for k, default in (
            ("kind", ""), ("recording", False), ("series_instance_uid", ""),
            ("acknowledged", 0), ("samples", 0), ("lost_messages", 0), ("instances", 0),
            ("finalising", 0), ("errors", 0), ("silent_s", None), ("last_error", ""))}
        values["queue_depth"] = entry.get("queued", 0)
        values["dropped_backpressure"] = entry.get("dropped_backpressure", 0)
        errors = entry.get("errors", 0)
        new_errors = errors - self._stream_errors.get(topic, 0)
        self._stream_errors[topic] = errors
        if "refused" in entry:
            return Health(ERROR, f"not recordable: {entry['refused']}", values)
        if "waiting_for" in entry:
            return Health(OK, "waiting for the stream's descriptor", values)
        silent = entry.get("silent_s")
        if entry["recording"] and (silent is None or silent >= SILENT_STALE_S):
            return Health(STALE, "no sample yet" if silent is None
                          else f"no sample for {silent:.0f} s", values)
        if new_errors > 0:
            return Health(WARN, f"{new_errors} sample(s) refused: {entry.get('last_error')}",
                          values)
        return Health(OK, "recording" if entry["recording"] else "following, not recording",
                      values)

    # -- shutdown ------------------------------------------------------------------------

    def close(self) -> None:
        """Finalise the last open segment of every stream, stop the sender, close the index.

        Bounded: the sample threads end within their spin period, queued video frames are
        encoded for at most ``shutdown_timeout_s`` (the rest, never acknowledged, is
        dropped and counted), and the last segments finalise in parallel. The recovery
        thread stops after the journal it is on; what it has not reached stays a journal
        for the next start.
        """
        if self._closed:
            return
        self._closed = True
        started = time.monotonic()
        with self._lock:
            followed = list(self._followed.values())
        for f in followed:  # no sample is taken any more
            if f.sample_thread is not None:
                f.sample_thread.join(timeout=1.0)
            if f.sample_executor is not None:
                f.sample_executor.shutdown(timeout_sec=1.0)
            if f.sample_node is not None:
                try:
                    f.sample_node.destroy_node()
                except (RCLError, RuntimeError):
                    pass
        self._close_bag()  # no sample comes any more
        deadline = started + self.shutdown_timeout_s
        for f in followed:
            with f.lock:
                if f.recorder is None:
                    continue
                try:
                    if f.video_queue is not None:
                        f.video_queue.close(max(0.0, deadline - time.monotonic()))
                    else:
                        f.recorder.stop(wait=False)
                except (DicomOrError, OSError, ValueError) as exc:
                    # The journal stays: the next start finalises it.
                    self.get_logger().error(f"{f.topic.topic}: closing failed: {exc}")
        self._finaliser.shutdown(wait=True)
        if self._recovery_thread.is_alive():
            self._recovery_thread.join()
        self.workflow.close()  # a case still open ends DISCONTINUED (every segment is final)
        self.sender.stop(timeout_s=2.0)
        self.spool.close()
        self.get_logger().info(f"stopped in {time.monotonic() - started:.2f} s; every "
                               "recorded segment is final")


def main(args: list[str] | None = None) -> None:
    """Run the ``recorder`` until Ctrl-C / SIGTERM, then finalise the open segments; a bad
    parameter: one error line, exit 1."""
    sys.exit(run_node(RecorderNode, args))
