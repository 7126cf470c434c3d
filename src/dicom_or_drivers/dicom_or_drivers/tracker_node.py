"""Optical tracker driver node (``tracker_driver``, run as ``tracker`` in ``/or``).

Publishes every tool's pose as dicom_or_msgs/PoseSample on ``~/poses`` (one stream, one
Series, Modality SR: the recorder archives it as Comprehensive 3D SR), and for rviz2 a
``geometry_msgs/PoseStamped`` per tool on ``~/<tool>/measured_cp`` (the CRTK name for a
measured Cartesian position) plus a ``visualization_msgs/MarkerArray`` on ``~/markers``.
Every pose is in the fixed frame ``tracker`` (parameter ``frame_id``): the camera frame of
the tracker, x right, y down, z along the viewing axis, metres.

Sources: a simulated tracker (N tools, 20 Hz .. 1 kHz) or an OpenIGTLink client
(PLUS Server, 3D Slicer) republishing TRANSFORM messages; an unreachable or closed server is
SOURCE_LOST and reconnected with exponential backoff.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from typing import Any

from geometry_msgs.msg import PoseStamped
from rclpy._rclpy_pybind11 import RCLError
from rclpy.node import Node
from rclpy.parameter import Parameter
from visualization_msgs.msg import Marker, MarkerArray

from dicom_or_core.model.context import KIND_POSE
from dicom_or_core.model.errors import DicomOrError
from dicom_or_core.sim.tracker import (
    ToolPose,
    TrackerSimulator,
    default_tools,
    parse_tools,
)
from dicom_or_drivers.igtl import IgtlClient, IgtlConnectionError, matrix_to_quaternion
from dicom_or_drivers.pacing import Backoff, Pacer
from dicom_or_drivers.stream import (
    SOURCE_LOST,
    DriverParameters,
    SampleStamp,
    SessionFollower,
    StatusReporter,
    StreamConfig,
    StreamPublisher,
)
from dicom_or_msgs.msg import PoseSample
from dicom_or_ros.params import declare
from dicom_or_ros.qos import named_qos, overridable
from dicom_or_ros.runtime import run_node


def topic_token(tool_id: str) -> str:
    """A tool id as a ROS topic name token (OpenIGTLink device names may hold '-' or '.')."""
    token = re.sub(r"[^A-Za-z0-9_]", "_", tool_id)
    return token if token[:1].isalpha() else f"tool_{token}"


class TrackerDriver(Node):
    """Simulated optical tracker or OpenIGTLink TRANSFORM client."""

    def __init__(self, **kwargs) -> None:
        super().__init__("tracker", **kwargs)
        self.source = declare(self, "source", "simulator", "simulator | igtl",
                              check=lambda v: v in ("simulator", "igtl"),
                              rule="must be simulator or igtl")
        self.rate_hz = declare(self, "rate_hz", 60.0,
                               "Poses per second per tool (simulator) or expected rate "
                               "(igtl, for the deadline)",
                               check=lambda v: 20.0 <= v <= 1000.0, rule="must be 20..1000 Hz")
        self.frame_id = declare(self, "frame_id", "tracker",
                                "Fixed tf frame every pose is expressed in")
        marker_rate = declare(self, "marker_rate_hz", 30.0, "MarkerArray rate for rviz2",
                              check=lambda v: 0.0 <= v <= 1000.0, rule="must be 0..1000")
        if self.source == "simulator":
            specs = declare(self, "tools", [], "Tools as name:kind (kind instrument, "
                            "reference or occluded); empty: tool_count default tools",
                            param_type=Parameter.Type.STRING_ARRAY)
            count = declare(self, "tool_count", 2, "Number of default tools (pointer, "
                            "patient_reference, drill (occluded), probe...)",
                            check=lambda v: 1 <= v <= 64, rule="must be 1..64")
            self.tools = parse_tools(specs) if specs else default_tools(count)
            self.simulator = TrackerSimulator(
                self.tools, declare(self, "seed", 0, "Random seed of the simulation"))
        else:
            self.igtl_host = declare(self, "igtl.host", "127.0.0.1", "OpenIGTLink server host")
            self.igtl_port = declare(self, "igtl.port", 18944, "OpenIGTLink server port",
                                     check=lambda v: 1 <= v <= 65535, rule="must be 1..65535")
            names = declare(self, "igtl.device_names", [],
                            "TRANSFORM device names to republish (the stream's tool ids)",
                            param_type=Parameter.Type.STRING_ARRAY)
            if not names:
                raise DicomOrError("igtl.device_names", "needs at least one device name (the "
                                   "stream descriptor lists its tools)")
            self.tools = [(name, "igtl") for name in names]
            self.unit_scale = declare(self, "igtl.unit_scale", 0.001,
                                      "Metres per unit of the TRANSFORM translation "
                                      "(PLUS / Slicer send millimetres)",
                                      check=lambda v: v > 0, rule="must be > 0")
            self.backoff = Backoff(
                declare(self, "reconnect_initial_s", 0.5, "First reconnect delay",
                        check=lambda v: v > 0, rule="must be > 0"),
                declare(self, "reconnect_max_s", 10.0, "Longest reconnect delay",
                        check=lambda v: v > 0, rule="must be > 0"))
        tool_ids = [name for name, _ in self.tools]
        tokens = [topic_token(name) for name in tool_ids]
        if len(set(tokens)) != len(tokens):
            raise DicomOrError("tools", "tool names collide as topic names", tool_ids)
        params = DriverParameters(self, "dicom_or", "Simulated optical tracker"
                                  if self.source == "simulator" else "OpenIGTLink tracker")
        self.session = SessionFollower(self, params.require_session_context)
        self.status = StatusReporter(self)
        self.stream = StreamPublisher(self, StreamConfig(
            topic="~/poses", msg_type=PoseSample, kind=KIND_POSE, modality="SR",
            qos_profile="pose", nominal_rate_hz=self.rate_hz,
            series_description="Tracked tool poses", tf_frame_id=self.frame_id,
            tool_ids=tool_ids),
            params, self.session, self.status)
        self.pose_publishers = {
            name: self.create_publisher(PoseStamped, f"~/{token}/measured_cp",
                                        named_qos("pose", self.rate_hz),
                                        qos_overriding_options=overridable())
            for name, token in zip(tool_ids, tokens, strict=True)}
        self.marker_publisher = self.create_publisher(
            MarkerArray, "~/markers", named_qos("pose", max(marker_rate, 1.0)))
        self._marker_every = max(1, round(self.rate_hz / marker_rate)) if marker_rate else 0
        self._last: dict[str, ToolPose] = {}
        self._stop = threading.Event()
        target = self._run_simulator if self.source == "simulator" else self._run_igtl
        self._thread = threading.Thread(target=target, name="tracker_source", daemon=True)
        self._thread.start()

    # --- publishing ------------------------------------------------------------------------

    def _publish_pose(self, pose: ToolPose, acquisition_ns: int) -> None:
        def build(stamp: SampleStamp) -> PoseSample:
            msg = PoseSample()
            stamp.fill(msg.context)
            msg.tool_id = pose.tool_id
            p, q = msg.pose.position, msg.pose.orientation
            p.x, p.y, p.z = pose.position
            q.x, q.y, q.z, q.w = pose.orientation
            msg.visible = pose.visible
            msg.tracking_quality = float(pose.quality)
            return msg

        sample = self.stream.publish(build, acquisition_ns)
        if sample is None:
            return
        self._last[pose.tool_id] = pose
        if pose.visible:  # CRTK: measured_cp is only published while measured
            stamped = PoseStamped()
            stamped.header.stamp = self.stream.capture_stamp(acquisition_ns)
            stamped.header.frame_id = self.frame_id
            stamped.pose = sample.pose
            self._publish_view(self.pose_publishers[pose.tool_id], stamped)

    def _publish_markers(self, acquisition_ns: int) -> None:
        markers = MarkerArray()
        for index, (name, kind) in enumerate(self.tools):
            pose = self._last.get(name)
            if pose is None:
                continue
            marker = Marker()
            marker.header.stamp = self.stream.capture_stamp(acquisition_ns)
            marker.header.frame_id = self.frame_id
            marker.ns, marker.id, marker.action = "tools", index, Marker.ADD
            p, q = marker.pose.position, marker.pose.orientation
            p.x, p.y, p.z = pose.position
            q.x, q.y, q.z, q.w = pose.orientation
            if kind == "reference":
                marker.type = Marker.CUBE
                marker.scale.x = marker.scale.y = marker.scale.z = 0.04
            else:  # an instrument: 15 cm arrow along the tool's x axis
                marker.type = Marker.ARROW
                marker.scale.x, marker.scale.y, marker.scale.z = 0.15, 0.006, 0.006
            colour = (0.1, 0.8, 0.2) if pose.visible else (0.5, 0.5, 0.5)
            marker.color.r, marker.color.g, marker.color.b = colour
            marker.color.a = 1.0 if pose.visible else 0.4
            marker.text = name
            markers.markers.append(marker)
        if markers.markers:
            self._publish_view(self.marker_publisher, markers)

    def _publish_view(self, publisher: Any, msg: Any) -> None:
        """The rviz2 views (measured_cp, markers): a sample DDS refuses on a starved machine
        is dropped, never the end of the device loop (the recorded stream goes on)."""
        try:
            publisher.publish(msg)
        except RCLError as exc:
            if self.context.ok():
                self.get_logger().warning(f"view sample dropped: {exc}".splitlines()[0],
                                          throttle_duration_sec=5.0)

    # --- sources -----------------------------------------------------------------------------

    def _run_simulator(self) -> None:
        try:
            self._simulate()
        except Exception as exc:
            if self.context.ok():  # else: shutting down, publishers are gone
                self.get_logger().error(f"tracker simulation failed: {exc!r}")
                self.stream.set_state(SOURCE_LOST, f"simulation failed: {exc}")

    def _simulate(self) -> None:
        # A tracker delivers every tick: catch up after a stall of up to 50 ms rather than
        # leaving holes in the pose timeline (longer stalls are skipped, not burst).
        pacer = Pacer(self.rate_hz, self._stop, max_late_ticks=max(1, int(self.rate_hz / 20)))
        start = pacer.start
        while (tick := pacer.wait()) is not None:
            if not self.stream.active:
                continue
            acquisition_ns = time.time_ns()
            t = pacer.deadline(tick) - start
            for pose in self.simulator.poses(t):
                self._publish_pose(pose, acquisition_ns)
            if self._marker_every and tick % self._marker_every == 0:
                self._publish_markers(acquisition_ns)

    def _run_igtl(self) -> None:
        log = self.get_logger()
        count = 0

        def on_transform(transform) -> None:
            nonlocal count
            if not self.stream.active:
                return
            now = time.time_ns()
            # The sender's time stamp is the acquisition time when its clock agrees with
            # ours (same host or NTP); otherwise the reception time is the better estimate.
            sent = int(transform.timestamp_s * 1e9)
            acquisition_ns = sent if abs(sent - now) < 1_000_000_000 else now
            matrix = transform.matrix
            position = tuple(float(v) * self.unit_scale for v in matrix[:3, 3])
            # OpenIGTLink TRANSFORM has no visibility or error field: a received transform
            # is a valid measurement.
            pose = ToolPose(transform.device_name, position,
                            matrix_to_quaternion(matrix[:3, :3]), True, 1.0)
            self._publish_pose(pose, acquisition_ns)
            count += 1
            if self._marker_every and count % self._marker_every == 0:
                self._publish_markers(acquisition_ns)

        device_names = [name for name, _ in self.tools]
        while not self._stop.is_set():
            client = IgtlClient(self.igtl_host, self.igtl_port, device_names)
            try:
                client.connect()
                log.info(f"connected to OpenIGTLink server {self.igtl_host}:{self.igtl_port}")
                self.backoff.reset()
                client.run(on_transform, self._stop)
            except IgtlConnectionError as exc:
                if self._stop.is_set():
                    break
                delay = self.backoff.next_delay()
                self.stream.set_state(SOURCE_LOST, f"{exc}; reconnecting in {delay:.1f} s")
                self._stop.wait(delay)
            except Exception as exc:  # the client loop must survive anything but shutdown
                if self._stop.is_set() or not self.context.ok():
                    break
                delay = self.backoff.next_delay()
                log.error(f"OpenIGTLink client failed: {exc!r}; reconnecting in {delay:.1f} s")
                self.stream.set_state(SOURCE_LOST, f"client error: {exc}")
                self._stop.wait(delay)
            finally:
                client.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
        self.stream.close()


def main(args: list[str] | None = None) -> None:
    sys.exit(run_node(TrackerDriver, args))

