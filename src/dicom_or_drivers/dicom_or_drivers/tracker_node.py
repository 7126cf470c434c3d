"""Optical tracker driver node (``tracker_driver``, run as ``tracker`` in ``/or``).

Publishes every tool's pose as dicom_or_msgs/PoseSample on ``~/poses`` (one stream, one
Series, Modality SR: the recorder archives it as Comprehensive 3D SR), and for rviz2 a
``geometry_msgs/PoseStamped`` per tool on ``~/<tool>/measured_cp`` (the CRTK name for a
measured Cartesian position) plus a ``visualization_msgs/MarkerArray`` on ``~/markers``.
Every pose is in the fixed frame ``tracker`` (parameter ``frame_id``): the camera frame of
the tracker, x right, y down, z along the viewing axis, metres.

Sources (:mod:`dicom_or_drivers.tracker_sources`, picked by ``source``): a simulated tracker
(N tools, 20 Hz .. 1 kHz) or an OpenIGTLink client (PLUS Server, 3D Slicer) republishing
TRANSFORM messages; an unreachable or closed server is SOURCE_LOST and reconnected with
exponential backoff.
"""

from __future__ import annotations

import re
import sys
import threading
from typing import Any

from geometry_msgs.msg import PoseStamped
from rclpy._rclpy_pybind11 import RCLError
from rclpy.node import Node
from visualization_msgs.msg import Marker, MarkerArray

from dicom_or_core.model.context import KIND_POSE
from dicom_or_core.model.errors import DicomOrError
from dicom_or_core.sim.tracker import ToolPose
from dicom_or_drivers.pacing import Backoff
from dicom_or_drivers.stream import (
    SOURCE_LOST,
    DriverParameters,
    SampleStamp,
    SessionFollower,
    StatusReporter,
    StreamConfig,
    StreamPublisher,
)
from dicom_or_drivers.tracker_sources import SourceLost, make_tracker_source
from dicom_or_msgs.msg import PoseSample
from dicom_or_ros.params import load_parameters
from dicom_or_ros.qos import named_qos, overridable
from dicom_or_ros.runtime import run_node


def topic_token(tool_id: str) -> str:
    """A tool id as a ROS topic name token (OpenIGTLink device names may hold '-' or '.')."""
    token = re.sub(r"[^A-Za-z0-9_]", "_", tool_id)
    return token if token[:1].isalpha() else f"tool_{token}"


class TrackerDriver(Node):
    """Simulated optical tracker or OpenIGTLink TRANSFORM client."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("tracker", **kwargs)
        # Every parameter, its type, default and rule: tracker_parameters.yaml; the source
        # it names: tracker_sources.
        p = self.params = load_parameters(self, "dicom_or_drivers", "tracker_parameters.yaml")
        self.rate_hz, self.frame_id, marker_rate = p.rate_hz, p.frame_id, p.marker_rate_hz
        self.source = make_tracker_source(p)
        self.tools = self.source.tools
        self.backoff = Backoff(p.reconnect_initial_s, p.reconnect_max_s)
        tool_ids = [name for name, _ in self.tools]
        tokens = [topic_token(name) for name in tool_ids]
        if len(set(tokens)) != len(tokens):
            raise DicomOrError("tools", "tool names collide as topic names", tool_ids)
        params = DriverParameters(self, "dicom_or", self.source.model_name)
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
        self._delivered = 0
        self._thread = threading.Thread(target=self._run, name="tracker_source", daemon=True)
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

    # --- device loop --------------------------------------------------------------------

    def _deliver(self, poses: list[ToolPose], acquisition_ns: int) -> None:
        for pose in poses:
            self._publish_pose(pose, acquisition_ns)
        self.backoff.reset()  # only a delivered pose proves the source
        self._delivered += 1
        if self._marker_every and self._delivered % self._marker_every == 0:
            self._publish_markers(acquisition_ns)

    def _run(self) -> None:
        """Run the source until close(); a lost source is SOURCE_LOST and run again after
        the backoff, and the loop survives anything but shutdown."""
        log = self.get_logger()
        while not self._stop.is_set():
            try:
                self.source.run(self._deliver, self._stop, lambda: self.stream.active)
            except SourceLost as exc:
                delay = self.backoff.next_delay()
                self.stream.set_state(SOURCE_LOST, f"{exc}; reconnecting in {delay:.1f} s")
                self._stop.wait(delay)
            except Exception as exc:  # noqa: BLE001 - the device loop must survive anything
                if self._stop.is_set() or not self.context.ok():
                    return  # shutting down: publishers are gone
                delay = self.backoff.next_delay()
                log.error(f"tracker source failed: {exc!r}; restarting in {delay:.1f} s")
                self.stream.set_state(SOURCE_LOST, f"source error: {exc}; restarting in "
                                      f"{delay:.1f} s")
                self._stop.wait(delay)

    def close(self) -> None:
        """Stop the device loop, publish STOPPED."""
        self._stop.set()
        self._thread.join(timeout=5.0)
        self.stream.close()


def main(args: list[str] | None = None) -> None:
    """Run the ``tracker`` driver until Ctrl-C / SIGTERM; a bad parameter: one error line,
    exit 1."""
    sys.exit(run_node(TrackerDriver, args))

