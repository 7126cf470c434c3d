"""The ROS side every driver shares: session context, stream descriptor, stamping, health.

A *stream* is one sample topic = one DICOM Series. :class:`StreamPublisher`

* follows the session (:class:`SessionFollower` on ``/or/session_context``): nothing is
  published until a context arrives (``require_session_context``, default true), or a local
  ad-hoc session is made with a warning;
* starts a Series when the driver starts and whenever the session's StudyInstanceUID
  changes: new SeriesInstanceUID and Frame of Reference UID, SeriesNumber + 1, SeriesDate /
  SeriesTime now (PS3.3 C.7.3.1, C.7.4.1), and publishes the validated
  ``StreamDescriptor`` latched on ``<topic>/descriptor``; a session update that keeps the
  study (e.g. a corrected patient name) republishes the descriptor in the same Series;
* stamps every sample's ``SampleContext`` atomically with its publication (series UID,
  sequence from 0 per Series, acquisition time), so a sample can never carry the sequence
  of one Series and the UID of another;
* keeps a ``DeviceStatus`` per stream on ``/or/device_status``: STARTING until the first
  sample, LIVE, STALE when the publisher misses its offered QoS deadline or loses
  liveliness, SOURCE_LOST when the driver says so, STOPPED on shutdown; one message per
  change and one every ``status_period_s`` with the measured rate.

Time base: acquisition times (``SampleContext.acquisition_time``) are the host's system
clock (``time.time_ns``), the session clock the Synchronization Module declares (PS3.3
C.7.4.2, Time Source HOST CLOCK). Header stamps are the node's clock
(``node.get_clock()``), so ``use_sim_time`` holds for ROS tools: without simulation it is
the same system clock; with it, a capture is stamped at the simulated time it happened
(:func:`capture_stamp`).

Health: each stream is an entry of the node's ``/diagnostics`` (:mod:`dicom_or_ros.diagnostics`)
named after its topic: its state as a level (STALE stays STALE, SOURCE_LOST is ERROR),
measured rate, samples published, samples DDS refused.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from builtin_interfaces.msg import Time
from rclpy._rclpy_pybind11 import RCLError
from rclpy.clock import Clock
from rclpy.event_handler import PublisherEventCallbacks
from rclpy.node import Node
from rclpy.publisher import Publisher

from dicom_or_core.model import context as ctx
from dicom_or_core.model.errors import DicomOrError
from dicom_or_core.model.uid import new_stream_uuid, new_uid
from dicom_or_drivers.pacing import RateMeter
from dicom_or_msgs.msg import DeviceStatus, SessionContext, StreamDescriptor
from dicom_or_ros.convert import from_msg, ns_to_time, to_msg
from dicom_or_ros.diagnostics import Health, diagnostics_for, level_of_state
from dicom_or_ros.graph import DEVICE_STATUS_TOPIC, SESSION_CONTEXT_TOPIC, descriptor_topic
from dicom_or_ros.params import load_parameters
from dicom_or_ros.qos import named_qos, overridable

STARTING = DeviceStatus.STATE_STARTING
LIVE = DeviceStatus.STATE_LIVE
STALE = DeviceStatus.STATE_STALE
SOURCE_LOST = DeviceStatus.STATE_SOURCE_LOST
STOPPED = DeviceStatus.STATE_STOPPED
STATE_NAMES = {STARTING: "STARTING", LIVE: "LIVE", STALE: "STALE",
               SOURCE_LOST: "SOURCE_LOST", STOPPED: "STOPPED"}


def _time(ns: int) -> Time:
    return ns_to_time(ns)


def capture_stamp(clock: Clock | None, acquisition_ns: int) -> Time:
    """A header stamp for a capture at ``acquisition_ns`` (host clock) on the node's clock:
    the host time itself unless simulated time is active, then the simulated time the
    capture happened at (now on the node's clock, less the capture's age)."""
    if clock is None or not getattr(clock, "ros_time_is_active", False):
        return _time(acquisition_ns)
    return _time(max(0, clock.now().nanoseconds - (time.time_ns() - acquisition_ns)))


class DriverParameters:
    """Parameters every driver declares: session policy, equipment, status period.

    The equipment parameters fill the General Equipment Module (PS3.3 C.7.5.1) of every
    instance recorded from the driver's streams, so they are validated against their VRs
    at start (e.g. ``equipment.station_name`` is SH, at most 16 characters).
    """

    def __init__(self, node: Node, manufacturer: str, model_name: str) -> None:
        # The table: driver_parameters.yaml; the equipment defaults name the driver's source.
        p = load_parameters(node, "dicom_or_drivers", "driver_parameters.yaml", defaults={
            "equipment.manufacturer": manufacturer, "equipment.model_name": model_name})
        self.require_session_context = p.require_session_context
        self.status_period_s = p.status_period_s
        self.body_part_examined = p.body_part_examined
        self.equipment = ctx.Equipment(**asdict(p.equipment)).validate("equipment")


class SessionFollower:
    """Tracks the session context for every stream of one node."""

    def __init__(self, node: Node, require: bool) -> None:
        self._node = node
        self._listeners: list[Callable[[ctx.SessionContext], None]] = []
        self.session: ctx.SessionContext | None = None
        self.ad_hoc = False
        self._subscription = node.create_subscription(
            SessionContext, SESSION_CONTEXT_TOPIC, self._on_msg, named_qos("descriptor"))
        if not require:
            node.get_logger().warning(
                "require_session_context is false: streams start in a local ad-hoc session "
                "(new Study Instance UID, no patient) until a context arrives on "
                f"{SESSION_CONTEXT_TOPIC}; recordings will need reconciliation")
            self.ad_hoc = True
            self._set(self._ad_hoc_session())

    @staticmethod
    def _ad_hoc_session() -> ctx.SessionContext:
        date, tm = ctx.now_da_tm()
        study = ctx.Study(study_instance_uid=new_uid(), study_date=date, study_time=tm,
                          study_description="Ad-hoc OR session")
        return ctx.SessionContext(study=study,
                                  synchronization_frame_of_reference_uid=new_uid())

    def add_listener(self, listener: Callable[[ctx.SessionContext], None]) -> None:
        """Call ``listener`` with every new session context, and at once with the current one."""
        self._listeners.append(listener)
        if self.session is not None:
            listener(self.session)

    def _on_msg(self, msg: SessionContext) -> None:
        try:
            session = from_msg(ctx.SessionContext, msg).validate("session")
        except DicomOrError as exc:
            # A bad context must not reach the archive: keep the current one, say why.
            self._node.get_logger().error(f"ignoring invalid session context: {exc}")
            return
        if self.ad_hoc:
            self._node.get_logger().info("session context received; leaving the ad-hoc "
                                         "session")
            self.ad_hoc = False
        self._set(session)

    def _set(self, session: ctx.SessionContext) -> None:
        self.session = session
        for listener in self._listeners:
            listener(session)


class StatusReporter:
    """The node's publisher on ``/or/device_status`` (latched, profile "status")."""

    def __init__(self, node: Node) -> None:
        self.publisher = node.create_publisher(DeviceStatus, DEVICE_STATUS_TOPIC,
                                               named_qos("status"))


@dataclass
class StreamConfig:
    """What a driver states about one of its streams (the static, non-session part)."""

    topic: str                      # node-relative, e.g. "~/frames"
    msg_type: type
    kind: int
    modality: str
    qos_profile: str
    nominal_rate_hz: float
    series_description: str = ""
    tf_frame_id: str = ""
    position_reference_indicator: str = ""
    rows: int = 0
    columns: int = 0
    pixel_encoding: str = ""
    video_codec: str = ""           # "" raw ImageFrames, "h264" VideoPackets
    sampling_frequency_hz: float = 0.0
    channels: list[ctx.WaveformChannel] = field(default_factory=list)
    tool_ids: list[str] = field(default_factory=list)
    # Messages per second when it differs from nominal_rate_hz (waveform chunks carry many
    # samples): the QoS deadline is a multiple of the *message* period.
    message_rate_hz: float | None = None

    @property
    def publish_rate_hz(self) -> float:
        """Messages per second: what the QoS deadline and the measured rate are judged against."""
        return self.message_rate_hz or self.nominal_rate_hz


@dataclass(frozen=True)
class SampleStamp:
    """The context of one sample, handed to the driver's message builder."""

    series_instance_uid: str
    sequence: int
    acquisition_ns: int
    frame_id: str
    series_start_ns: int
    clock: Clock | None = field(default=None, compare=False)  # the node's: header stamps

    def fill(self, context_msg: Any, publish_ns: int | None = None) -> Any:
        """Fill a ``dicom_or_msgs/SampleContext`` message; ``header.stamp`` is the
        publication time on the node's clock (``publish_ns`` overrides)."""
        if publish_ns is not None:
            context_msg.header.stamp = _time(publish_ns)
        elif self.clock is not None:
            context_msg.header.stamp = self.clock.now().to_msg()
        else:
            context_msg.header.stamp = _time(time.time_ns())
        context_msg.header.frame_id = self.frame_id
        context_msg.series_instance_uid = self.series_instance_uid
        context_msg.sequence = self.sequence
        context_msg.acquisition_time = _time(self.acquisition_ns)
        return context_msg

    def capture_stamp(self) -> Time:
        """The capture's header stamp on the node's clock (see :func:`capture_stamp`)."""
        return capture_stamp(self.clock, self.acquisition_ns)


class StreamPublisher:
    """One stream: sample publisher, latched descriptor, Series life cycle, health."""

    def __init__(self, node: Node, config: StreamConfig, params: DriverParameters,
                 session: SessionFollower, status: StatusReporter) -> None:
        self._node = node
        self.config = config
        self._params = params
        self._status = status
        self._lock = threading.RLock()
        self.stream_uuid = new_stream_uuid()
        self.publisher: Publisher[Any] = node.create_publisher(
            config.msg_type, config.topic, named_qos(config.qos_profile, config.publish_rate_hz),
            event_callbacks=PublisherEventCallbacks(deadline=self._on_deadline_missed,
                                                    liveliness=self._on_liveliness_lost),
            qos_overriding_options=overridable())
        self.topic = self.publisher.topic_name
        self._descriptor_publisher = node.create_publisher(
            StreamDescriptor, descriptor_topic(self.topic), named_qos("descriptor"))
        self.descriptor: ctx.StreamDescriptor | None = None
        self.series_number = 0
        self.sequence = 0
        self.samples_published = 0
        self.publish_failures = 0  # samples DDS would not take (counted, never fatal)
        # The driver's own counters, shown in the stream's /diagnostics entry (e.g. frames
        # the H.264 encoder could not take, frame ticks the source missed).
        self.counters: dict[str, int] = {}
        self.state = STARTING
        self.message = "waiting for the session context" \
            if session.session is None else "starting"
        self._series_start_ns = 0
        self._meter = RateMeter()
        self._rate = 0.0
        self._closed = False
        self._publish_status()
        session.add_listener(self._on_session)
        self._timer = node.create_timer(params.status_period_s, self._periodic_status)
        equipment = params.equipment
        diagnostics_for(node).add(self.topic, self.health, hardware_id=" ".join(
            v for v in (equipment.manufacturer, equipment.model_name,
                        equipment.device_serial_number) if v) or self.topic)

    # --- Series life cycle -------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Whether a Series is running (samples are being published)."""
        return self.descriptor is not None

    def _on_session(self, session: ctx.SessionContext) -> None:
        with self._lock:
            current = self.descriptor
            if current is not None and current.session.study.study_instance_uid == \
                    session.study.study_instance_uid:
                if current.session != session:
                    self._publish_descriptor(replace(current, session=session))
                return
            self._start_series(session)

    def _start_series(self, session: ctx.SessionContext) -> None:
        config = self.config
        date, tm = ctx.now_da_tm()
        descriptor = ctx.StreamDescriptor(
            session=session, stream_uuid=self.stream_uuid, kind=config.kind,
            topic=self.topic, message_type=_type_name(config.msg_type),
            qos_profile=config.qos_profile, nominal_rate_hz=float(config.nominal_rate_hz),
            series_instance_uid=new_uid(), series_number=self.series_number + 1,
            modality=config.modality, series_description=config.series_description,
            series_date=date, series_time=tm,
            body_part_examined=self._params.body_part_examined,
            frame_of_reference_uid=new_uid(),
            position_reference_indicator=config.position_reference_indicator,
            tf_frame_id=config.tf_frame_id, equipment=self._params.equipment,
            rows=config.rows, columns=config.columns, pixel_encoding=config.pixel_encoding,
            video_codec=config.video_codec,
            sampling_frequency_hz=float(config.sampling_frequency_hz),
            channels=list(config.channels), tool_ids=list(config.tool_ids))
        try:
            descriptor.validate("descriptor")
        except DicomOrError as exc:
            self._node.get_logger().error(f"{self.topic}: cannot start a Series: {exc}")
            return
        self._begin_series(descriptor, f"{self.topic}: Series {descriptor.series_number} "
                           f"{descriptor.series_instance_uid} of Study "
                           f"{session.study.study_instance_uid} ({config.modality})",
                           "Series started, waiting for the first sample")

    def _begin_series(self, descriptor: ctx.StreamDescriptor, log_line: str,
                      starting_message: str) -> None:
        """A validated ``descriptor`` becomes the stream's Series: its number, sequence 0,
        the latched descriptor published, and a STARTING stream says so."""
        self.series_number = descriptor.series_number
        self.sequence = 0
        self._series_start_ns = time.time_ns()
        self._publish_descriptor(descriptor)
        self._node.get_logger().info(log_line)
        if self.state == STARTING:
            self.message = starting_message
            self._publish_status()

    def _publish_descriptor(self, descriptor: ctx.StreamDescriptor) -> None:
        self.descriptor = descriptor
        msg = to_msg(descriptor)
        msg.header.stamp = self._node.get_clock().now().to_msg()
        msg.header.frame_id = self.config.tf_frame_id
        self._descriptor_publisher.publish(msg)

    # --- samples -----------------------------------------------------------------------

    def publish(self, build: Callable[[SampleStamp], Any],
                acquisition_ns: int | None = None) -> Any | None:
        """Build and publish one sample in the current Series; None when no Series runs.

        ``build(stamp)`` returns the message (it fills ``msg.context`` with
        ``stamp.fill(msg.context)``); it runs under the stream's lock so the stamp and the
        publication are atomic with respect to a Series change.
        """
        with self._lock:
            if self.descriptor is None or self._closed:
                return None
            stamp = SampleStamp(self.descriptor.series_instance_uid, self.sequence,
                                acquisition_ns if acquisition_ns is not None
                                else time.time_ns(), self.config.tf_frame_id,
                                self._series_start_ns, self._node.get_clock())
            msg = build(stamp)
            if not self._safe_publish(self.publisher, msg):
                if not self._closed:
                    # Taken but not delivered: its sequence number is used, so every
                    # receiver counts it as a lost message instead of never knowing.
                    self.sequence += 1
                return None
            self.sequence += 1
            self.samples_published += 1
            self._meter.add()
            if self.state != LIVE:
                self._set_state_locked(LIVE, "samples flowing")
            return msg

    # --- health --------------------------------------------------------------------------

    def set_state(self, state: int, message: str) -> None:
        """Report a source state change (SOURCE_LOST from the driver's device loop)."""
        with self._lock:
            if state != self.state or message != self.message:
                self._set_state_locked(state, message)

    def _set_state_locked(self, state: int, message: str) -> None:
        changed = state != self.state
        self.state, self.message = state, message
        if changed and state in (STALE, SOURCE_LOST):
            self._node.get_logger().warning(f"{self.topic}: {STATE_NAMES[state]}: {message}")
        elif changed:
            self._node.get_logger().info(f"{self.topic}: {STATE_NAMES[state]}: {message}")
        self._publish_status()

    def _on_deadline_missed(self, info: Any) -> None:
        with self._lock:
            if self.state == LIVE:
                period_ms = 1000.0 / self.config.publish_rate_hz
                self._set_state_locked(
                    STALE, f"offered deadline missed (nominal period {period_ms:.1f} ms, "
                    f"{info.total_count} misses in total)")

    def _on_liveliness_lost(self, info: Any) -> None:
        with self._lock:
            if self.state in (LIVE, STARTING):
                self._set_state_locked(STALE, "liveliness lost")

    def capture_stamp(self, acquisition_ns: int) -> Time:
        """A header stamp on the node's clock for a capture at ``acquisition_ns``."""
        return capture_stamp(self._node.get_clock(), acquisition_ns)

    def health(self) -> Health:
        """The stream's ``/diagnostics`` entry: its state as the level."""
        with self._lock:
            values = {"state": STATE_NAMES.get(self.state, str(self.state)),
                      "rate_hz": round(self._rate, 2),
                      "nominal_rate_hz": self.config.publish_rate_hz,
                      "published": self.samples_published,
                      "dropped": self.publish_failures,
                      "series_instance_uid": self.descriptor.series_instance_uid
                      if self.descriptor else "",
                      "stream_uuid": self.stream_uuid, **self.counters}
            return Health(level_of_state(self.state),
                          f"{STATE_NAMES.get(self.state, self.state)}: {self.message}", values)

    def _periodic_status(self) -> None:
        with self._lock:
            self._rate = self._meter.take()
            if not self._closed:
                self._publish_status()

    def _publish_status(self) -> None:
        msg = DeviceStatus()
        msg.header.stamp = self._node.get_clock().now().to_msg()
        msg.stream_uuid = self.stream_uuid
        msg.series_instance_uid = self.descriptor.series_instance_uid \
            if self.descriptor else ""
        msg.topic = self.topic
        msg.state = self.state
        msg.measured_rate_hz = float(self._rate)
        msg.samples_published = self.samples_published
        msg.message = self.message
        self._safe_publish(self._status.publisher, msg)

    def _safe_publish(self, publisher: Any, msg: Any) -> bool:
        """Publish unless the context is gone (rclpy's signal handler shuts the context
        down before the node's close() runs, and a device thread may be mid-sample then).
        A sample DDS refuses while the context is up ("cannot publish data": a RELIABLE
        writer whose history stayed full of unacknowledged samples past its blocking time,
        on a starved machine) is dropped and counted; the device goes on. It once ended a
        tracker's simulation for good, an hour of poses lost to one overloaded second."""
        try:
            publisher.publish(msg)
            return True
        except RCLError as exc:
            if not self._node.context.ok():
                self._closed = True
                return False
            self.publish_failures += 1
            self._node.get_logger().warning(
                f"{self.topic}: sample dropped, DDS refused it ({self.publish_failures} so "
                f"far): {exc}".splitlines()[0], throttle_duration_sec=5.0)
            return False
        except Exception:
            if self._node.context.ok():
                raise
            self._closed = True
            return False

    def close(self) -> None:
        """Publish STOPPED; later samples are refused."""
        with self._lock:
            if self._closed:
                return
            self._rate = 0.0
            if self._node.context.ok():
                self._set_state_locked(STOPPED, "driver shut down")
            else:  # after Ctrl-C the context is gone: nothing can be sent any more
                self.state, self.message = STOPPED, "driver shut down"
            self._closed = True


def _type_name(msg_type: type) -> str:
    module = msg_type.__module__.split(".")[0]
    return f"{module}/msg/{msg_type.__name__}"
