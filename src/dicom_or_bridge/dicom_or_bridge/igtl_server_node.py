"""``dicom_or_igtl_server`` (node ``igtl_server``): the OR graph's tools and video for 3D Slicer.

Wiring only; the OpenIGTLink protocol and sockets are :mod:`dicom_or_bridge.igtl_server`.
Every ``discovery_period_s`` the node lists the graph's streams
(:func:`dicom_or_ros.graph.discover_streams`) and subscribes to each pose and video stream
(or the ``topics`` given) with a profile adapted to its publishers
(:func:`dicom_or_ros.qos.adapt_request_to_offers`, as the recorder and rosbag2 do); waveform
streams are not served (OpenIGTLink has no standard waveform message).

* Each tool of a ``PoseSample`` stream is a TRANSFORM whose device name is the tracker's
  ``tool_id`` (``pointer``, ``patient_reference``, or the PLUS device name an igtl tracker
  republishes): the tool in the tracker's frame, rotation and translation in millimetres
  (PoseSample positions are metres), timestamped with the pose's acquisition time. A tool
  the tracker does not see is not sent unless ``send_occluded``.
* Each ``ImageFrame`` stream is an IMAGE (uint8 RGB or grey; BGR is reordered) named after
  its topic (``/or/endoscope/frames`` -> ``endoscope``), one slice, 1 mm pixels (scaled
  with ``image_scale``), timestamped with the frame's acquisition time; encoded off the
  executor and only when a client is due for a frame (``image_max_rate_hz``). A stream
  encoded at the camera (``VideoPacket``) is not served (one log line says so).

Health: a ``/diagnostics`` entry ``igtl_server`` (clients, rates sent, drops, refusals).
"""

from __future__ import annotations

import re
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from rclpy._rclpy_pybind11 import RCLError
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.subscription import Subscription

from dicom_or_bridge.igtl_server import IgtlImage, IgtlServer, igtl_device_name, pose_matrix_mm
from dicom_or_core.model.errors import DicomOrError
from dicom_or_msgs.msg import ImageFrame, PoseSample
from dicom_or_ros.convert import time_to_ns
from dicom_or_ros.diagnostics import OK, WARN, Health, diagnostics_for
from dicom_or_ros.graph import (
    IMAGE_FRAME_TYPE,
    POSE_SAMPLE_TYPE,
    discover_streams,
    is_encoded_video,
)
from dicom_or_ros.image import image_to_array
from dicom_or_ros.params import load_parameters
from dicom_or_ros.qos import adapt_request_to_offers, named_qos
from dicom_or_ros.runtime import run_node

DIAGNOSTICS_ENTRY = "igtl_server"
# The stream's message type -> (message class, QoS profile of config/qos_profiles.yaml).
_SERVED = {POSE_SAMPLE_TYPE: (PoseSample, "pose"), IMAGE_FRAME_TYPE: (ImageFrame, "video")}
# Topic names that say "the frames" rather than whose: the device is the segment before.
_GENERIC_SEGMENTS = {"frames", "image", "image_raw", "image_rect", "video"}
# Samples taken per wake-up of a stream's thread before it checks for shutdown again.
MAX_TAKEN_PER_WAKE = 1000


@dataclass
class _Stream:
    """One served stream: its subscription on a helper node spun by a thread of its own."""

    node: Node
    subscription: Subscription
    executor: SingleThreadedExecutor
    thread: threading.Thread | None = None


def image_device_name(topic: str) -> str:
    """The IMAGE device name of a video stream: its topic's last telling segment
    (``/or/endoscope/frames`` -> ``endoscope``), fitted to the header's 20 bytes."""
    segments = [s for s in topic.split("/") if s]
    while len(segments) > 1 and segments[-1] in _GENERIC_SEGMENTS:
        segments.pop()
    return igtl_device_name(segments[-1] if segments else topic)


def frame_image(msg: ImageFrame, scale: float) -> IgtlImage:
    """An ImageFrame as an IMAGE to send: RGB or grey, resized by ``scale`` (area
    averaging), the pixel spacing grown alike, the acquisition time as timestamp."""
    pixels = image_to_array(msg.image)
    if msg.image.encoding == "bgr8":
        pixels = pixels[..., ::-1]
    spacing = 1.0
    if scale < 1.0:
        rows, columns = pixels.shape[:2]
        size = (max(1, round(columns * scale)), max(1, round(rows * scale)))
        pixels = cv2.resize(np.ascontiguousarray(pixels), size, interpolation=cv2.INTER_AREA)
        spacing = columns / size[0]
    return IgtlImage(pixels, time_to_ns(msg.context.acquisition_time) / 1e9, spacing)


class IgtlServerNode(Node):
    """Serves the graph's pose and video streams over OpenIGTLink."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("igtl_server", **kwargs)
        # Every parameter, its type, default and rule: igtl_server_parameters.yaml.
        p = self.params = load_parameters(self, "dicom_or_bridge",
                                          "igtl_server_parameters.yaml")
        self.server = IgtlServer(p.host, p.port, max_clients=p.max_clients,
                                 image_max_rate_hz=p.image_max_rate_hz,
                                 transform_queue=p.transform_queue,
                                 client_timeout_s=p.client_timeout_s)
        try:
            self.server.start()
        except OSError as exc:
            raise DicomOrError("port", f"cannot listen on {p.host}:{p.port}: "
                               f"{exc.strerror or exc}") from None
        self._served: dict[str, _Stream] = {}
        self._closed = False
        self._renamed: set[str] = set()
        self._not_served: set[str] = set()
        self._counts = {"poses": 0, "occluded": 0, "frames": 0}
        self._last_stats = (time.monotonic(), 0, 0)
        self.get_logger().info(f"OpenIGTLink server on {p.host}:{self.server.port}")
        diagnostics_for(self).add(DIAGNOSTICS_ENTRY, self._health,
                                  hardware_id=f"openigtlink://{p.host}:{self.server.port}")
        self._discover()
        self._timer = self.create_timer(p.discovery_period_s, self._discover)

    # --- discovery --------------------------------------------------------------------------

    def _discover(self) -> None:
        for stream in discover_streams(self):
            served = _SERVED.get(stream.message_type)
            if is_encoded_video(stream.message_type) and stream.topic not in self._not_served:
                self._not_served.add(stream.topic)   # said once per topic
                self.get_logger().info(f"not serving {stream.topic}: encoded video "
                                       "(VideoPacket) is not sent as OpenIGTLink IMAGE")
            if served is None or stream.topic in self._served or \
                    (self.params.topics and stream.topic not in self.params.topics):
                continue
            msg_type, profile = served
            qos = adapt_request_to_offers(self, stream.topic, named_qos(profile))
            if msg_type is PoseSample:
                callback: Any = self._on_pose
                what = "tools as TRANSFORM"
            else:
                device = image_device_name(stream.topic)
                callback = lambda msg, d=device: self._on_frame(d, msg)  # noqa: E731
                what = f"IMAGE {device!r}"
            self._served[stream.topic] = self._follow(stream.topic, msg_type, callback, qos)
            self.get_logger().info(f"serving {stream.topic}: {what}")

    def _follow(self, topic: str, msg_type: Any, callback: Any, qos: Any) -> _Stream:
        """Subscribe ``topic`` on a helper node with an executor and a thread of its own,
        as the recorder does: per-stream order is kept, and the thread takes every sample
        already waiting straight from the subscription instead of one wait-set round trip
        per message (a 4-tool 1 kHz tracker is 4,000 messages/s)."""
        name = "igtl_server_" + re.sub(r"[^A-Za-z0-9_]", "_", topic).strip("_")
        # use_global_arguments=False: a launcher's __node:= remap would rename it too.
        node = Node(name, context=self.context, namespace=self.get_namespace(),
                    start_parameter_services=False, use_global_arguments=False)
        subscription = node.create_subscription(msg_type, topic, callback, qos)
        executor = SingleThreadedExecutor(context=self.context)
        executor.add_node(node)
        served = _Stream(node, subscription, executor)
        served.thread = threading.Thread(target=self._spin, args=(served, callback),
                                         name=name, daemon=True)
        served.thread.start()
        return served

    def _spin(self, served: _Stream, callback: Any) -> None:
        sub = served.subscription
        try:
            while not self._closed and self.context.ok():
                served.executor.spin_once(timeout_sec=0.1)
                for _ in range(MAX_TAKEN_PER_WAKE):
                    with sub.handle:
                        taken = sub.handle.take_message(sub.msg_type, sub.raw)
                    if taken is None:
                        break
                    callback(taken[0])
        except (ExternalShutdownException, RCLError):
            pass  # the context is shutting down

    # --- samples ----------------------------------------------------------------------------

    def _on_pose(self, msg: PoseSample) -> None:
        if not msg.visible and not self.params.send_occluded:
            self._counts["occluded"] += 1
            return
        p, q = msg.pose.position, msg.pose.orientation
        name = msg.tool_id
        if igtl_device_name(name) != name and name not in self._renamed:
            self._renamed.add(name)
            self.get_logger().warning(f"tool {name!r} is sent as {igtl_device_name(name)!r}: "
                                      "OpenIGTLink device names are 20 ASCII characters")
        self.server.publish_transform(name, pose_matrix_mm((p.x, p.y, p.z),
                                                           (q.x, q.y, q.z, q.w)),
                                      time_to_ns(msg.context.acquisition_time) / 1e9)
        self._counts["poses"] += 1

    def _on_frame(self, device: str, msg: ImageFrame) -> None:
        # Only a closure: the pixels are converted on the server's encoder thread, and
        # only if a client is due for this frame.
        scale = self.params.image_scale
        self.server.offer_image(device, lambda: frame_image(msg, scale))
        self._counts["frames"] += 1

    # --- health -----------------------------------------------------------------------------

    def _health(self) -> Health:
        stats = self.server.stats()
        now = time.monotonic()
        sent = sum(c.messages_sent for c in stats.clients)
        images = sum(c.images_sent for c in stats.clients)
        then, sent_before, images_before = self._last_stats
        elapsed = max(now - then, 1e-3)
        self._last_stats = (now, sent, images)
        values: dict[str, Any] = {
            "port": stats.port, "clients": len(stats.clients),
            "clients_refused": stats.refused, "clients_disconnected": stats.disconnected,
            "streams": len(self._served),
            "messages_sent_per_s": round(max(0, sent - sent_before) / elapsed, 1),
            "images_sent_per_s": round(max(0, images - images_before) / elapsed, 1),
            "transforms_published": stats.transforms_published,
            "poses_occluded": self._counts["occluded"], "frames_offered": self._counts["frames"],
            "images_encoded": stats.images_encoded,
            "transforms_dropped": stats.transforms_dropped,
            "images_dropped": stats.images_dropped,
        }
        for index, client in enumerate(stats.clients):
            values[f"client_{index}"] = (f"{client.address} sent {client.messages_sent} "
                                         f"dropped {client.transforms_dropped}+"
                                         f"{client.images_dropped}")
        level = WARN if stats.transforms_dropped else OK
        return Health(level, f"{len(stats.clients)} OpenIGTLink client(s) on port "
                             f"{stats.port}", values)

    def close(self) -> None:
        """Stop the streams' threads, close every connection and the listening socket."""
        self._closed = True
        for served in self._served.values():
            if served.thread is not None:
                served.thread.join(timeout=1.0)
            served.executor.shutdown(timeout_sec=1.0)
            try:
                served.node.destroy_node()
            except (RCLError, RuntimeError):
                pass
        self.server.close()


def main(args: list[str] | None = None) -> None:
    """Run the ``igtl_server`` node until Ctrl-C / SIGTERM; a bad parameter or a port that
    cannot be listened on: one error line, exit 1."""
    sys.exit(run_node(IgtlServerNode, args))
