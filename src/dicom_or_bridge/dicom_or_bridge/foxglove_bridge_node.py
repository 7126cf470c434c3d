"""``dicom_or_foxglove`` (node ``foxglove_bridge``): the OR graph in Foxglove / Lichtblick.

A Foxglove WebSocket server (foxglove-sdk; ``ws://<host>:<port>``, 8765 by default) with
one channel per ROS topic and a few derived ones. Wiring only; schemas and encoders are
:mod:`dicom_or_bridge.foxglove_io`.

* **Raw channels.** Every ``discovery_period_s`` the node lists the graph's streams
  (:func:`dicom_or_ros.graph.discover_streams`), their latched descriptors, the session
  context, the device status and any other topic of a ``dicom_or_msgs`` type (the
  recorder's status) (or the ``topics`` given), and subscribes to each with a
  profile adapted to its publishers (:func:`dicom_or_ros.qos.adapt_request_to_offers`, as
  rosbag2 records). Messages are taken serialized (``raw=True``) and forwarded as they came:
  channel encoding ``cdr``, schema encoding ``ros2msg`` with the complete definition (the
  type's .msg and every type it uses, as rosbag2 and foxglove_bridge give it), schema name
  the ROS type (``dicom_or_msgs/msg/PoseSample``). Log time: the node's clock at receipt.
* **Latched context.** Topics whose publishers are all TRANSIENT_LOCAL (descriptors, the
  session context, the device status) keep their last ``depth`` messages; when a viewer
  subscribes to one they are sent again, so a viewer that connects late sees the case and the
  streams. (The SDK logs to a channel's every subscriber: one already subscribed gets the
  same latched message twice, which a latched topic allows.)
* **Tool frames.** Each pose stream's tools also as ``foxglove.FrameTransforms`` on
  ``<topic>/transforms``: parent the tracker frame (``context.header.frame_id``), child the
  ``tool_id``, translation in metres (PoseSample's unit, Foxglove's), timestamp the
  acquisition time. A tool the tracker does not see is not sent (its pose is stale).
* **Video.** Raw ``ImageFrame`` channels only with ``raw_images`` (a 1080p frame is 6 MB:
  a viewer that subscribes to it would be flooded, and the SDK buffers up to 1024 messages
  per slow viewer). Each video stream also as ``foxglove.CompressedImage`` (JPEG, on
  ``<topic>/compressed``) or ``foxglove.CompressedVideo`` (H.264, on ``<topic>/h264``),
  scaled by ``video_scale``, at most ``video_max_rate_hz``, encoded on a worker thread (the
  newest frame wins; the executor never waits on an encoder) and only while a viewer is
  subscribed. An H.264 subscriber gets a keyframe first.
* **Encoded video.** A stream encoded at the camera (``VideoPacket``, descriptor
  ``video_codec`` h264) has its raw CDR channel like every project message (an access unit
  is small), and its access units go to ``<topic>/h264`` as ``foxglove.CompressedVideo``
  unchanged (format ``h264``, Annex B, one access unit per message, SPS + PPS in each key
  frame: what that schema asks for), never decoded or re-encoded. Every access unit is
  sent, in order; when a viewer subscribes, the channel pauses until the next key frame
  (at most a second), so the new viewer's decoder starts at one (the SDK sends a channel's
  messages to all its viewers alike).

Health: a ``/diagnostics`` entry ``foxglove`` (URL, viewers, channels, rates sent).
"""

from __future__ import annotations

import importlib
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import foxglove
from foxglove.channels import (
    CompressedImageChannel,
    CompressedVideoChannel,
    FrameTransformsChannel,
)
from foxglove.messages import (
    CompressedImage,
    CompressedVideo,
    FrameTransform,
    FrameTransforms,
    Quaternion,
    Timestamp,
    Vector3,
)
from foxglove.websocket import ChannelView, Client, ServerListener
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy
from rclpy.serialization import deserialize_message
from rclpy.subscription import Subscription
from std_msgs.msg import String

from dicom_or_bridge.foxglove_io import (
    H264Encoder,
    JpegEncoder,
    RateCap,
    installed_msg_text,
    make_encoder,
    ros2msg_definition,
)
from dicom_or_core.model.errors import DicomOrError
from dicom_or_msgs.msg import ImageFrame, PoseSample, VideoPacket
from dicom_or_ros.diagnostics import OK, WARN, Health, diagnostics_for
from dicom_or_ros.graph import (
    DEVICE_STATUS_TOPIC,
    IMAGE_FRAME_TYPE,
    POSE_SAMPLE_TYPE,
    SESSION_CONTEXT_TOPIC,
    VIDEO_PACKET_TYPE,
    discover_streams,
)
from dicom_or_ros.image import image_to_array
from dicom_or_ros.params import load_parameters
from dicom_or_ros.qos import adapt_request_to_offers, named_qos
from dicom_or_ros.runtime import run_node

DIAGNOSTICS_ENTRY = "foxglove"
# The QoS profile (config/qos_profiles.yaml) a type's subscription starts from; the adapted
# profile keeps its history and depth. Other types: "status".
_BASE_PROFILE = {
    IMAGE_FRAME_TYPE: "video", POSE_SAMPLE_TYPE: "pose",
    VIDEO_PACKET_TYPE: "video_compressed",
    "dicom_or_msgs/msg/WaveformChunk": "waveform",
    "dicom_or_msgs/msg/StreamDescriptor": "descriptor",
    "dicom_or_msgs/msg/SessionContext": "descriptor",
}
_PROJECT_TYPES = "dicom_or_msgs/msg/"
_VIDEO_SUFFIX = {"jpeg": "/compressed", "h264": "/h264"}


def message_class(type_name: str) -> Any:
    """The Python class of ``pkg/msg/Type`` (generated by rosidl)."""
    package, _, name = type_name.split("/")
    try:
        return getattr(importlib.import_module(f"{package}.msg"), name)
    except (ImportError, AttributeError) as exc:
        raise DicomOrError("topics", f"message type {type_name} is not installed: {exc}") \
            from None


def ros_time(stamp: Any) -> Timestamp:
    """A builtin_interfaces/Time as a Foxglove timestamp."""
    return Timestamp(int(stamp.sec), int(stamp.nanosec))


def pose_transforms(msg: PoseSample) -> FrameTransforms | None:
    """One PoseSample as FrameTransforms (tool in the tracker frame, metres); None when the
    tool is not visible."""
    if not msg.visible:
        return None
    p, q = msg.pose.position, msg.pose.orientation
    return FrameTransforms(transforms=[FrameTransform(
        timestamp=ros_time(msg.context.acquisition_time),
        parent_frame_id=msg.context.header.frame_id, child_frame_id=msg.tool_id,
        translation=Vector3(x=p.x, y=p.y, z=p.z),
        rotation=Quaternion(x=q.x, y=q.y, z=q.z, w=q.w))])


@dataclass
class _Video:
    """A video stream's compressed channel and its pending frame."""

    channel: CompressedImageChannel | CompressedVideoChannel
    encoder: JpegEncoder | H264Encoder
    cap: RateCap
    pending: bytes | None = None
    keyframe: bool = True


@dataclass
class _Packets:
    """An encoded stream's CompressedVideo channel; ``wait_key``: skip access units until
    the next key frame (a viewer just subscribed)."""

    channel: CompressedVideoChannel
    wait_key: bool = True


@dataclass
class _Forward:
    """One forwarded topic: its raw channel, subscription and derived channel."""

    topic: str
    type_name: str
    channel: foxglove.Channel | None  # None: raw frames not sent (raw_images false)
    subscription: Subscription | None = None
    recent: deque[tuple[bytes, int]] | None = None   # latched topics: the last messages
    transforms: FrameTransformsChannel | None = None
    video: _Video | None = None
    packets: _Packets | None = None
    count: int = 0


@dataclass
class _Counters:
    forwarded: int = 0
    transforms: int = 0
    frames: int = 0
    errors: int = 0
    last_error: str = ""
    clients: dict[int, set[int]] = field(default_factory=dict)


class _Listener(ServerListener):
    """The server's callbacks (on the SDK's threads): who is subscribed to what."""

    def __init__(self, bridge: FoxgloveBridge) -> None:
        self.bridge = bridge

    def on_subscribe(self, client: Client, channel: ChannelView) -> None:
        """A viewer subscribed: replay the latched messages, ask for a keyframe."""
        self.bridge.subscribed(client.id, channel.id)

    def on_unsubscribe(self, client: Client, channel: ChannelView) -> None:
        """A viewer unsubscribed or went away."""
        self.bridge.unsubscribed(client.id, channel.id)


class FoxgloveBridge(Node):
    """Serves the OR graph's topics to Foxglove / Lichtblick; see the module docstring."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("foxglove_bridge", **kwargs)
        # Every parameter, its type, default and rule: foxglove_parameters.yaml.
        self.params = p = load_parameters(self, "dicom_or_bridge", "foxglove_parameters.yaml")
        self._lock = threading.Condition()
        self._forwards: dict[str, _Forward] = {}
        self._by_channel: dict[int, _Forward] = {}
        self._skipped: set[str] = set()
        self._counters = _Counters()
        self._last_rates = (time.monotonic(), 0, 0, 0, 0)
        self._fox_context = foxglove.Context()
        try:
            self.server = foxglove.start_server(
                name=p.server_name, host=p.host, port=p.port, context=self._fox_context,
                server_listener=_Listener(self))
        except Exception as exc:  # the SDK raises RuntimeError for a busy / bad address
            raise DicomOrError("port", f"cannot listen on {p.host}:{p.port}: {exc}") from None
        self.url = f"ws://{p.host}:{self.server.port}"
        url_pub = self.create_publisher(String, "~/url", named_qos("descriptor"))
        url_pub.publish(String(data=self.url))
        self.get_logger().info(f"Foxglove WebSocket server on {self.url}")
        diagnostics_for(self).add(DIAGNOSTICS_ENTRY, self._health, hardware_id=self.url)
        self._running = True
        self._worker = threading.Thread(target=self._encode_loop, name="foxglove_video",
                                        daemon=True)
        self._worker.start()
        self._discover()
        self._timer = self.create_timer(p.discovery_period_s, self._discover)

    # --- discovery --------------------------------------------------------------------------

    def _wanted(self, types: dict[str, list[str]]) -> list[str]:
        """The ``topics`` given, or: the streams and their descriptors, the session context,
        the device status, and any other topic of the project's interfaces (the recorder's
        status, ...)."""
        if self.params.topics:
            return list(self.params.topics)
        names = [SESSION_CONTEXT_TOPIC, DEVICE_STATUS_TOPIC]
        for stream in discover_streams(self):
            names += [stream.topic, stream.descriptor_topic]
        names += sorted(t for t, kinds in types.items()
                        if any(k.startswith(_PROJECT_TYPES) for k in kinds))
        return names

    def _discover(self) -> None:
        types = dict(self.get_topic_names_and_types())
        for topic in self._wanted(types):
            if topic in self._forwards or topic in self._skipped or not types.get(topic) \
                    or self.count_publishers(topic) == 0:
                continue
            try:
                self._forward(topic, types[topic][0])
            except DicomOrError as exc:
                self._skipped.add(topic)  # said once, not every period
                self.get_logger().warning(f"{topic}: not forwarded: {exc}")

    def _forward(self, topic: str, type_name: str) -> None:
        schema = foxglove.Schema(name=type_name, encoding="ros2msg", data=ros2msg_definition(
            type_name, installed_msg_text).encode())
        msg_type = message_class(type_name)
        try:
            base = named_qos(_BASE_PROFILE.get(type_name, "status"))
        except DicomOrError:   # a profile this host's QoS file lacks: a second deep
            base = named_qos("video_recording")
        qos = adapt_request_to_offers(self, topic, base)
        raw = type_name != IMAGE_FRAME_TYPE or self.params.raw_images
        if not raw and self.params.video_format == "none":
            raise DicomOrError("raw_images", "false with video_format none: nothing to send")
        forward = _Forward(topic, type_name, foxglove.Channel(
            topic, schema=schema, message_encoding="cdr", context=self._fox_context)
            if raw else None)
        if qos.durability == DurabilityPolicy.TRANSIENT_LOCAL:
            forward.recent = deque(maxlen=max(1, qos.depth))
        self._derive(forward)
        with self._lock:
            self._forwards[topic] = forward
            for channel in (forward.channel, forward.transforms,
                            forward.video.channel if forward.video else None,
                            forward.packets.channel if forward.packets else None):
                if channel is not None:
                    self._by_channel[channel.id()] = forward
        forward.subscription = self.create_subscription(
            msg_type, topic, lambda data, f=forward: self._on_message(f, data), qos, raw=True)
        self.get_logger().info(f"forwarding {topic} ({type_name}, "
                               f"{'latched' if forward.recent is not None else 'live'})")

    def _derive(self, forward: _Forward) -> None:
        """The derived channel of a pose or video stream, as the parameters ask."""
        p = self.params
        if forward.type_name == POSE_SAMPLE_TYPE and p.frame_transforms:
            forward.transforms = FrameTransformsChannel(f"{forward.topic}/transforms",
                                                        context=self._fox_context)
        elif forward.type_name == IMAGE_FRAME_TYPE and p.video_format != "none":
            name = forward.topic + _VIDEO_SUFFIX[p.video_format]
            channel: CompressedImageChannel | CompressedVideoChannel = (
                CompressedVideoChannel(name, context=self._fox_context)
                if p.video_format == "h264" else
                CompressedImageChannel(name, context=self._fox_context))
            forward.video = _Video(channel, make_encoder(
                p.video_format, p.video_max_rate_hz, p.video_scale, p.jpeg_quality,
                p.h264_bitrate_kbps), RateCap(p.video_max_rate_hz))
        elif forward.type_name == VIDEO_PACKET_TYPE and p.video_format != "none":
            # Already H.264: passed through whatever video_format names (no re-encoding).
            forward.packets = _Packets(CompressedVideoChannel(
                forward.topic + _VIDEO_SUFFIX["h264"], context=self._fox_context))

    # --- messages ---------------------------------------------------------------------------

    def _on_message(self, forward: _Forward, data: bytes) -> None:
        now = self.get_clock().now().nanoseconds
        if forward.channel is not None:
            forward.channel.log(data, log_time=now)
            forward.count += 1
            self._counters.forwarded += 1
        if forward.recent is not None:
            with self._lock:
                forward.recent.append((data, now))
        if forward.transforms is not None and forward.transforms.has_sinks():
            transforms = pose_transforms(deserialize_message(data, PoseSample))
            if transforms is not None:
                forward.transforms.log(transforms, log_time=now)
                self._counters.transforms += 1
        if forward.packets is not None and forward.packets.channel.has_sinks():
            self._pass_packet(forward.packets, data, now)
        video = forward.video
        if video is not None and video.channel.has_sinks() and video.cap.ready():
            with self._lock:
                video.pending = data  # the worker takes the newest; an older one is dropped
                self._lock.notify()

    def _pass_packet(self, packets: _Packets, data: bytes, now: int) -> None:
        """An access unit as foxglove.CompressedVideo, its bytes unchanged; skipped while a
        new viewer waits for a key frame."""
        try:
            msg = deserialize_message(data, VideoPacket)
        except Exception as exc:  # noqa: BLE001  (a malformed message must not stop the rest)
            self._counters.errors += 1
            self._counters.last_error = f"video packet: {exc}"
            return
        with self._lock:
            if packets.wait_key and not msg.key_frame:
                return
            packets.wait_key = False
        packets.channel.log(CompressedVideo(
            timestamp=ros_time(msg.context.acquisition_time),
            frame_id=msg.context.header.frame_id, data=bytes(msg.data), format=msg.format),
            log_time=now)
        self._counters.frames += 1

    def _take_pending(self) -> list[tuple[_Video, bytes, bool]]:
        """The pending frames (and whether each must be a keyframe), taken; under the lock."""
        jobs = []
        for forward in self._forwards.values():
            video = forward.video
            if video is not None and video.pending is not None:
                jobs.append((video, video.pending, video.keyframe))
                video.pending, video.keyframe = None, False
        return jobs

    def _encode_loop(self) -> None:
        """Worker: deserialize, encode and send the pending frame of each video stream."""
        while True:
            with self._lock:
                jobs = self._take_pending()
                while not jobs and self._running:
                    self._lock.wait(0.5)
                    jobs = self._take_pending()
                if not self._running:
                    return
            for video, data, keyframe in jobs:
                self._send_frame(video, data, keyframe)

    def _send_frame(self, video: _Video, data: bytes, keyframe: bool) -> None:
        try:
            msg = deserialize_message(data, ImageFrame)
            payload = video.encoder.encode(image_to_array(msg.image), msg.image.encoding,
                                           keyframe)
        except Exception as exc:  # noqa: BLE001  (the encoder's errors must not end the worker)
            # Counted and shown in /diagnostics: a bad frame must not stop the stream.
            self._counters.errors += 1
            self._counters.last_error = f"video: {exc}"
            return
        if not payload:
            return
        kind = CompressedVideo if isinstance(video.encoder, H264Encoder) else CompressedImage
        video.channel.log(kind(timestamp=ros_time(msg.context.acquisition_time),
                               frame_id=msg.context.header.frame_id, data=payload,
                               format=video.encoder.format),  # type: ignore[arg-type]
                          log_time=self.get_clock().now().nanoseconds)
        self._counters.frames += 1

    # --- viewers (called on the SDK's threads) ------------------------------------------------

    def subscribed(self, client_id: int, channel_id: int) -> None:
        """A viewer subscribed to ``channel_id``: the latched messages again, a keyframe."""
        with self._lock:
            self._counters.clients.setdefault(client_id, set()).add(channel_id)
            forward = self._by_channel.get(channel_id)
            if forward is None:
                return
            raw = forward.channel
            replay = list(forward.recent or ()) if raw is not None and \
                raw.id() == channel_id else []
            if forward.video is not None and forward.video.channel.id() == channel_id:
                forward.video.keyframe = True
            if forward.packets is not None and forward.packets.channel.id() == channel_id:
                forward.packets.wait_key = True
        for data, log_time in replay:
            raw.log(data, log_time=log_time)  # type: ignore[union-attr]

    def unsubscribed(self, client_id: int, channel_id: int) -> None:
        """A viewer unsubscribed from ``channel_id`` or disconnected."""
        with self._lock:
            channels = self._counters.clients.get(client_id, set())
            channels.discard(channel_id)
            if not channels:
                self._counters.clients.pop(client_id, None)

    # --- health -----------------------------------------------------------------------------

    def _health(self) -> Health:
        c = self._counters
        now = time.monotonic()
        then, forwarded, transforms, frames, errors = self._last_rates
        span = max(now - then, 1e-3)
        self._last_rates = (now, c.forwarded, c.transforms, c.frames, c.errors)
        viewers = len(c.clients)
        values = {
            "url": self.url, "viewers": viewers, "channels": len(self._by_channel),
            "messages_per_s": round((c.forwarded - forwarded) / span, 1),
            "transforms_per_s": round((c.transforms - transforms) / span, 1),
            "video_frames_per_s": round((c.frames - frames) / span, 1),
            "messages": c.forwarded, "encode_errors": c.errors, "last_error": c.last_error}
        level = WARN if c.errors > errors else OK  # frames failed to encode this period
        return Health(level, f"{self.url}: {viewers} viewer(s), {len(self._forwards)} topics",
                      values)

    def close(self) -> None:
        """Stop the worker and the server (viewers see the connection close)."""
        with self._lock:
            self._running = False
            self._lock.notify_all()
        self._worker.join(timeout=5.0)
        self.server.stop()


def main(args: list[str] | None = None) -> None:
    """Run ``foxglove_bridge`` until Ctrl-C / SIGTERM; bad parameters: one error line, exit 1."""
    sys.exit(run_node(FoxgloveBridge, args))
