"""``dicom_or_view``: the OR in any browser, served by a node of the graph.

Wiring only (the web service is :mod:`dicom_or_view.server`, the conversions
:mod:`dicom_or_view.live`): the node follows

* the session context (``/or/session_context``, latched) -> Session panel;
* every stream the graph carries (:func:`dicom_or_ros.graph.discover_streams`, every
  ``discovery_period_s``): its latched descriptor, then its samples, subscribed with what
  its publishers offer (:func:`dicom_or_ros.qos.adapt_request_to_offers`, as the recorder
  and the bridge's snapshot do): video frames -> JPEG (subscribed only while a browser
  watches; the newest frame only), waveform chunks -> physical values, poses ->
  millimetres (at most ``pose_rate_hz`` per tool);
* the recorder's status (``recorder_status_topic``) -> Recorder panel, and its
  RecordControl service (``recorder_control_service``) behind the page's buttons;
* the bridge's DICOMweb URL (``dicomweb_url``, or latched on ``dicomweb_url_topic``), which
  the page's Live series and Recorded instances panels query through the view's proxy.

The page's URL is logged and published latched on ``~/url``.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import Future
from typing import Any

from rclpy.node import Node
from rclpy.subscription import Subscription
from std_msgs.msg import String

from dicom_or_core.model.context import KIND_POSE, KIND_VIDEO, KIND_WAVEFORM
from dicom_or_core.model.errors import DicomOrError
from dicom_or_msgs.msg import (
    ImageFrame,
    PoseSample,
    RecorderStatus,
    SessionContext,
    VideoPacket,
    WaveformChunk,
)
from dicom_or_msgs.msg import StreamDescriptor as StreamDescriptorMsg
from dicom_or_msgs.srv import RecordControl
from dicom_or_ros.diagnostics import NODE_ENTRY, OK, Health, diagnostics_for
from dicom_or_ros.graph import (
    SESSION_CONTEXT_TOPIC,
    descriptor_topic,
    discover_streams,
    is_encoded_video,
)
from dicom_or_ros.params import load_parameters
from dicom_or_ros.qos import adapt_request_to_offers, named_qos, overridable
from dicom_or_ros.runtime import run_node
from dicom_or_view import live
from dicom_or_view.server import ViewConfig, ViewServer, client_tls

_KINDS = {KIND_VIDEO: "video", KIND_POSE: "pose", KIND_WAVEFORM: "waveform"}
_MESSAGES: dict[int, Any] = {KIND_VIDEO: ImageFrame, KIND_POSE: PoseSample,
                             KIND_WAVEFORM: WaveformChunk}


class _Stream:
    """A followed stream: its descriptor and, once that arrived, its sample subscription."""

    def __init__(self, descriptor_sub: Subscription) -> None:
        self.descriptor_sub = descriptor_sub
        self.descriptor: Any = None
        self.samples: Subscription | None = None
        self.channels: list[live.Channel] = []
        self.last_pose: dict[str, float] = {}


class OrViewNode(Node):
    """See the module docstring."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("or_view", **kwargs)
        p = self.params = load_parameters(self, "dicom_or_view", "view_parameters.yaml")
        self._pose_period = 1.0 / p.pose_rate_hz
        self._streams: dict[str, _Stream] = {}
        self._control: Any = self.create_client(RecordControl, p.recorder_control_service)
        self.server = ViewServer(ViewConfig(
            host=p.host, port=p.port, token=p.access_token, dicomweb_token=p.dicomweb_token,
            dicomweb_tls=client_tls(p.dicomweb_ca, p.dicomweb_cert, p.dicomweb_key),
            max_clients=p.max_clients), control=self._record_control)
        try:
            self.server.start()
        except OSError as exc:
            raise DicomOrError("port", f"cannot listen on {p.host}:{p.port}: "
                               f"{exc.strerror or exc}") from None
        self.encoder = live.FrameEncoder(self.server.publish_frame, self.server.wants_video,
                                         max_width=p.video_max_width, quality=p.jpeg_quality)
        if p.dicomweb_url:
            self.server.set_dicomweb_url(p.dicomweb_url)
        else:
            self.create_subscription(String, p.dicomweb_url_topic, self._on_dicomweb_url,
                                     named_qos("descriptor"))
        self.create_subscription(SessionContext, SESSION_CONTEXT_TOPIC, self._on_session,
                                 named_qos("descriptor"))
        self.create_subscription(RecorderStatus, p.recorder_status_topic, self._on_recorder,
                                 named_qos("status"))
        self.get_logger().info(f"OR view at {self.server.url}"
                               f"{' (access token required)' if p.access_token else ''}")
        url_pub = self.create_publisher(String, "~/url", named_qos("descriptor"),
                                        qos_overriding_options=overridable())
        url_pub.publish(String(data=self.server.url))
        self.create_timer(p.discovery_period_s, self._discover)
        diagnostics_for(self).add(NODE_ENTRY, self._health,
                                  hardware_id=f"or_view@{p.host}:{self.server.port}")

    # --- context ------------------------------------------------------------------------

    def _on_dicomweb_url(self, msg: String) -> None:
        if msg.data != self.server.config.dicomweb_url:
            self.get_logger().info(f"the bridge's DICOMweb service: {msg.data}")
        self.server.set_dicomweb_url(msg.data)

    def _on_session(self, msg: SessionContext) -> None:
        self.server.publish("session", live.session_json(msg))

    def _on_recorder(self, msg: RecorderStatus) -> None:
        status = live.message_dict(msg)
        status["received_ms"] = live.wall_ms()
        self.server.publish("recorder", status)

    # --- streams ------------------------------------------------------------------------

    def _discover(self) -> None:
        topics = {s.topic for s in discover_streams(self)}
        for topic in topics - set(self._streams):
            self._streams[topic] = _Stream(self.create_subscription(
                StreamDescriptorMsg, descriptor_topic(topic),
                lambda msg, t=topic: self._on_descriptor(t, msg), named_qos("descriptor")))
        gone = set(self._streams) - topics
        for topic in gone:
            stream = self._streams.pop(topic)
            self.destroy_subscription(stream.descriptor_sub)
            if stream.samples is not None:
                self.destroy_subscription(stream.samples)
        if gone:
            self._publish_streams()
        self._follow_video()

    def _follow_video(self) -> None:
        """Video frames are subscribed only while a browser watches: a 1080p30 stream is
        180 MB/s of copies nobody would see."""
        watched = self.server.wants_video()
        for topic, stream in self._streams.items():
            if stream.descriptor is None or stream.descriptor.kind != KIND_VIDEO:
                continue
            if watched and stream.samples is None:
                self._subscribe(topic, stream)
            elif not watched and stream.samples is not None:
                self.destroy_subscription(stream.samples)
                stream.samples = None

    def _on_descriptor(self, topic: str, msg: StreamDescriptorMsg) -> None:
        stream = self._streams.get(topic)
        if stream is None or msg.kind not in _MESSAGES:
            return
        changed = stream.descriptor is None or \
            stream.descriptor.series_instance_uid != msg.series_instance_uid
        stream.descriptor = msg
        stream.channels = live.channels_of(msg)
        if stream.samples is None and (msg.kind != KIND_VIDEO or self.server.wants_video()):
            self._subscribe(topic, stream)
        if changed:
            self._publish_streams()

    def _subscribe(self, topic: str, stream: _Stream) -> None:
        """Subscribe to the stream's samples with what its publishers offer."""
        d = stream.descriptor
        callbacks = {KIND_VIDEO: self._on_frame, KIND_POSE: self._on_pose,
                     KIND_WAVEFORM: self._on_chunk}
        message, callback = _MESSAGES[d.kind], callbacks[d.kind]
        fallback = _KINDS[d.kind]
        if is_encoded_video(d.message_type):
            # Access units (H.264), decoded in the encoder thread; none may be lost
            # between key frames, so the fallback profile is a second deep.
            message, callback, fallback = VideoPacket, self._on_packet, "video_recording"
        try:
            base = named_qos(d.qos_profile or fallback, d.nominal_rate_hz)
        except DicomOrError:   # a profile this host's QoS file lacks: the kind's own
            base = named_qos(fallback, d.nominal_rate_hz)
        stream.samples = self.create_subscription(
            message, topic, lambda sample, s=stream, cb=callback: cb(s, sample),
            adapt_request_to_offers(self, topic, base))

    def _publish_streams(self) -> None:
        streams = []
        for topic, stream in sorted(self._streams.items()):
            d = stream.descriptor
            if d is None:
                continue
            streams.append({
                "topic": topic, "kind": _KINDS.get(d.kind, "?"),
                "series": d.series_instance_uid, "modality": d.modality,
                "description": d.series_description, "rate_hz": d.nominal_rate_hz,
                "rows": d.rows, "columns": d.columns, "frame": d.tf_frame_id,
                "tools": list(d.tool_ids),
                "channels": [{"label": c.label, "unit": c.unit} for c in stream.channels]})
        self.server.publish("streams", {"streams": streams})

    def _on_frame(self, stream: _Stream, msg: ImageFrame) -> None:
        image = msg.image
        self.encoder.offer(live.RawFrame(
            stream.descriptor.series_instance_uid, image.encoding, image.width, image.height,
            image.step, image.data, int(msg.context.sequence),
            live.time_ns(msg.context.acquisition_time), live.wall_ms()))

    def _on_packet(self, stream: _Stream, msg: VideoPacket) -> None:
        self.encoder.offer_packet(live.PacketFrame(
            stream.descriptor.series_instance_uid, msg.format, bool(msg.key_frame), msg.data,
            int(msg.context.sequence), int(msg.pts),
            live.time_ns(msg.context.acquisition_time), live.wall_ms()))

    def _on_chunk(self, stream: _Stream, msg: WaveformChunk) -> None:
        if self.server.has_clients():
            self.server.publish("wave", live.waveform_json(
                stream.descriptor.series_instance_uid, msg, stream.channels), keep=False)

    def _on_pose(self, stream: _Stream, msg: PoseSample) -> None:
        now = time.monotonic()
        last = stream.last_pose.get(msg.tool_id, 0.0)
        if not self.server.has_clients() or now - last < self._pose_period:
            return
        stream.last_pose[msg.tool_id] = now
        d = stream.descriptor
        self.server.publish("pose", live.pose_json(d.series_instance_uid, d.tf_frame_id, msg),
                            keep=False)

    # --- recorder control ---------------------------------------------------------------

    def _record_control(self, command: int, series: list[str]) -> Future[dict[str, Any]]:
        """Call RecordControl from the web thread; the answer arrives through this node's
        executor (the main thread spins)."""
        result: Future[dict[str, Any]] = Future()
        if not self._control.service_is_ready():
            result.set_exception(RuntimeError(
                f"no recorder answers {self.params.recorder_control_service}"))
            return result
        request = RecordControl.Request(command=command, series_instance_uids=series)

        def done(call: Any) -> None:
            try:
                answer = call.result()
                result.set_result({"success": bool(answer.success), "message": answer.message,
                                   "sop_instance_uids": list(answer.sop_instance_uids)})
            except Exception as exc:  # the call failed: the page shows why
                result.set_exception(RuntimeError(str(exc)))

        self._control.call_async(request).add_done_callback(done)
        return result

    def _health(self) -> Health:
        values: dict[str, object] = {"url": self.server.url, "streams": len(self._streams),
                                     "dicomweb_url": self.server.config.dicomweb_url,
                                     "frames_encoded": self.encoder.encoded,
                                     "frames_replaced": self.encoder.replaced,
                                     "encode_errors": self.encoder.errors}
        values.update(self.server.counts)
        return Health(OK, f"serving {self.server.url} for {len(self._streams)} stream(s)",
                      values)

    def close(self) -> None:
        """Stop the web service (closing every browser connection) and the encoder."""
        self.server.stop()
        self.encoder.close()


def main(args: list[str] | None = None) -> None:
    """Run ``dicom_or_view`` until Ctrl-C / SIGTERM; a bad parameter: one error line, exit 1."""
    sys.exit(run_node(OrViewNode, args))
