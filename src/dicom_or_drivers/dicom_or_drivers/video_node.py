"""Endoscope video driver node (``video_driver``, run as ``endoscope`` in ``/or``).

Publishes ``~/frames`` (dicom_or_msgs/ImageFrame, profile "video", Modality ES), the plain
``~/image_raw`` (sensor_msgs/Image, for rviz2) and optionally ``~/image_raw/compressed``
(JPEG sensor_msgs/CompressedImage), with the stream descriptor latched on
``~/frames/descriptor``. Frames are paced on an absolute monotonic schedule; a source that
stops delivering is reported SOURCE_LOST and reopened with exponential backoff.

``video_transport: h264``: ``~/frames`` carries ``dicom_or_msgs/VideoPacket`` instead (profile
"video_compressed", descriptor ``video_codec`` "h264"): H.264 High Profile access units
encoded here, where the camera is, with :func:`dicom_or_core.iod.h264.live_encoder` (what the
recorder stores unchanged). Raw 1080p30 is 1.5 Gbit/s; encoded, a few Mbit/s. The encoder
runs in a thread of its own behind a 2-frame queue, so a slow encode never delays the
capture schedule; when it falls behind, captured frames are dropped *before* encoding
(counted as ``frames_dropped_encoder``), never an encoded packet (every later packet up to
the next key frame depends on it). A new Series starts a new encoder: its first packet is
an IDR with PTS 0.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from typing import Any

import cv2
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image

from dicom_or_core.iod.codec import PTS_HZ, EncodedPacket, PacketEncoder
from dicom_or_core.iod.h264 import live_encoder
from dicom_or_core.model.context import KIND_VIDEO
from dicom_or_core.model.errors import DicomOrError
from dicom_or_core.sim.video import layout
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
from dicom_or_drivers.video_sources import SourceLost, make_source, parse_source
from dicom_or_msgs.msg import ImageFrame, VideoPacket
from dicom_or_ros.image import fill_image
from dicom_or_ros.params import load_parameters
from dicom_or_ros.qos import named_qos, overridable
from dicom_or_ros.runtime import run_node

# Captured frames waiting for the h264 encoder: more would only add latency.
ENCODER_QUEUE_FRAMES = 2


class VideoDriver(Node):
    """Video frames from a synthetic pattern, a file, a camera or a URL."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("endoscope", **kwargs)
        # Every parameter, its type, default and rule: video_parameters.yaml.
        p = self.params = load_parameters(self, "dicom_or_drivers", "video_parameters.yaml")
        self.spec = parse_source(p.source)
        self.width, self.height, self.fps, self.encoding = p.width, p.height, p.fps, \
            p.pixel_format
        loop, stamp_pixels = p.loop, p.stamp_pixels
        self.publish_raw, self.publish_compressed = p.publish_image_raw, p.publish_compressed
        self.jpeg_quality, modality, description = p.jpeg_quality, p.modality, \
            p.series_description
        self.frame_id = p.frame_id
        self.backoff = Backoff(p.reconnect_initial_s, p.reconnect_max_s)
        if self.spec.kind == "pattern" or stamp_pixels:
            layout(self.width, self.height)  # the code band must fit: names width/height
        params = DriverParameters(self, "dicom_or", "Synthetic endoscope"
                                  if self.spec.kind == "pattern" else "Video capture")
        self.source = make_source(self.spec, self.width, self.height, self.encoding,
                                  self.fps, loop, stamp_pixels)
        self.session = SessionFollower(self, params.require_session_context)
        self.status = StatusReporter(self)
        self.h264 = p.video_transport == "h264"
        self.h264_preset, self.h264_crf = p.h264_preset, p.h264_crf
        if self.h264:  # refuse a geometry beyond H.264 Level 4.2 before anything starts
            live_encoder(self.height, self.width, self.fps, self.encoding, self.h264_crf,
                         self.h264_preset)
        self.stream = StreamPublisher(self, StreamConfig(
            topic="~/frames", msg_type=VideoPacket if self.h264 else ImageFrame,
            kind=KIND_VIDEO, modality=modality,
            qos_profile="video_compressed" if self.h264 else "video",
            nominal_rate_hz=self.fps, series_description=description,
            tf_frame_id=self.frame_id, rows=self.height, columns=self.width,
            pixel_encoding=self.encoding, video_codec="h264" if self.h264 else ""),
            params, self.session, self.status)
        self.raw_publisher = self.create_publisher(
            Image, "~/image_raw", named_qos("video", self.fps),
            qos_overriding_options=overridable()) if self.publish_raw else None
        self.compressed_publisher = self.create_publisher(
            CompressedImage, "~/image_raw/compressed", named_qos("video", self.fps),
            qos_overriding_options=overridable()) if self.publish_compressed else None
        self.frames_skipped = 0
        self._stop = threading.Event()
        # h264 transport: captured (pixels, acquisition ns) for the encoder thread.
        self.frames_captured = 0
        self.frames_dropped_encoder = 0
        self.stream.counters["frames_skipped"] = 0
        if self.h264:
            self.stream.counters["frames_dropped_encoder"] = 0
        self.packets_encoded = 0
        self.encode_errors = 0
        self._encode_queue: deque[tuple[Any, int]] = deque()
        self._encode_cond = threading.Condition()
        self._capture_done = False
        self._encoder_thread: threading.Thread | None = None
        if self.h264:
            self._encoder_thread = threading.Thread(target=self._encode_loop,
                                                    name="video_encoder", daemon=True)
            self._encoder_thread.start()
        self._thread = threading.Thread(target=self._run, name="video_source", daemon=True)
        self._thread.start()

    # --- device loop -----------------------------------------------------------------------

    def _run(self) -> None:
        log = self.get_logger()
        while not self._stop.is_set():
            try:
                self.source.open()
            except SourceLost as exc:
                delay = self.backoff.next_delay()
                self.stream.set_state(SOURCE_LOST, f"{exc}; retrying in {delay:.1f} s")
                self._stop.wait(delay)
                continue
            pacer = Pacer(self.fps, self._stop)
            skipped_before = self.frames_skipped
            try:
                while pacer.wait() is not None:
                    if self.stream.active and self._publish_frame():
                        self.backoff.reset()  # only a delivered frame proves the source
                    if skipped_before + pacer.skipped > self.frames_skipped:
                        self.frames_skipped = skipped_before + pacer.skipped
                        self.stream.counters["frames_skipped"] = self.frames_skipped
                        log.warning(f"{self.stream.topic}: {self.frames_skipped} frame ticks "
                                    f"skipped so far: the source cannot keep {self.fps:g} fps",
                                    throttle_duration_sec=5.0)
            except SourceLost as exc:
                self.source.close()
                if getattr(self.source, "ended", False):
                    self.stream.set_state(SOURCE_LOST, str(exc))
                    log.error(f"{exc}: no more frames until restart")
                    self._stop.wait()
                    return
                delay = self.backoff.next_delay()
                self.stream.set_state(SOURCE_LOST, f"{exc}; reconnecting in {delay:.1f} s")
                self._stop.wait(delay)
            except Exception as exc:  # noqa: BLE001 - the device loop must survive anything
                self.source.close()
                if not self.context.ok():
                    return  # shutting down: publishers are gone
                delay = self.backoff.next_delay()
                log.error(f"video source failed: {exc!r}; reopening in {delay:.1f} s")
                self.stream.set_state(SOURCE_LOST, f"source error: {exc}; reopening in "
                                      f"{delay:.1f} s")
                self._stop.wait(delay)
        self.source.close()

    def _build(self, stamp: SampleStamp) -> ImageFrame:
        pixels = self.source.read(stamp.sequence, stamp.acquisition_ns)
        frame = ImageFrame()
        image = fill_image(frame.image, pixels, self.encoding)
        image.header.stamp = stamp.capture_stamp()  # the capture, on the node's clock
        image.header.frame_id = self.frame_id
        stamp.fill(frame.context)  # header.stamp = publish time: after the copy above
        self._last_pixels = pixels
        return frame

    def _publish_frame(self) -> bool:
        """Read, stamp and publish one frame; False when no Series runs."""
        if self.h264:
            return self._capture_for_encoder()
        frame = self.stream.publish(self._build, time.time_ns())
        if frame is None:
            return False
        self._publish_side_outputs(frame.image, self._last_pixels)
        return True

    def _publish_side_outputs(self, image: Image, pixels: Any) -> None:
        """The plain ~/image_raw and JPEG ~/image_raw/compressed copies, when enabled."""
        if self.raw_publisher is not None:
            self.raw_publisher.publish(image)
        if self.compressed_publisher is not None:
            if self.encoding == "rgb8":
                pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
            ok, jpeg = cv2.imencode(".jpg", pixels,
                                    [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
            if ok:
                msg = CompressedImage()
                msg.header = image.header
                msg.format = f"{self.encoding}; jpeg compressed " \
                    f"{'mono8' if self.encoding == 'mono8' else 'bgr8'}"
                msg.data = jpeg.tobytes()
                self.compressed_publisher.publish(msg)

    # --- h264 transport ----------------------------------------------------------------

    def _capture_for_encoder(self) -> bool:
        """Capture one frame and queue it for the encoder thread (never waits for it): a
        full queue drops the frame before encoding, counted; its time stays a gap."""
        if not self.stream.active:
            return False
        acquisition_ns = time.time_ns()
        pixels = self.source.read(self.frames_captured, acquisition_ns)
        self.frames_captured += 1
        if self.raw_publisher is not None or self.compressed_publisher is not None:
            image = Image()
            fill_image(image, pixels, self.encoding)
            image.header.stamp = self.stream.capture_stamp(acquisition_ns)
            image.header.frame_id = self.frame_id
            self._publish_side_outputs(image, pixels)
        with self._encode_cond:
            if len(self._encode_queue) >= ENCODER_QUEUE_FRAMES:
                self.frames_dropped_encoder += 1
                self.stream.counters["frames_dropped_encoder"] = self.frames_dropped_encoder
                self.get_logger().warning(
                    f"{self.stream.topic}: the H.264 encoder cannot keep {self.fps:g} fps: "
                    f"{self.frames_dropped_encoder} frames dropped before encoding so far",
                    throttle_duration_sec=5.0)
            else:
                self._encode_queue.append((pixels, acquisition_ns))
                self._encode_cond.notify()
        return True

    def _encode_loop(self) -> None:
        """The encoder thread: encode queued frames in order, publish each access unit as
        one VideoPacket. A new Series (or an encoder failure) starts a new encoder, so every
        Series begins with an IDR at PTS 0."""
        log = self.get_logger()
        encoder: PacketEncoder | None = None
        series = ""
        first_ns = 0
        while True:
            with self._encode_cond:
                self._encode_cond.wait_for(lambda: self._encode_queue or self._capture_done)
                if not self._encode_queue:
                    return  # capture ended and everything queued is published
                pixels, acquisition_ns = self._encode_queue.popleft()
            descriptor = self.stream.descriptor
            if descriptor is None:
                continue  # no Series runs: nothing to publish into
            try:
                if encoder is None or descriptor.series_instance_uid != series:
                    encoder = live_encoder(self.height, self.width, self.fps, self.encoding,
                                           self.h264_crf, self.h264_preset)
                    series, first_ns = descriptor.series_instance_uid, acquisition_ns
                pts = round((acquisition_ns - first_ns) * PTS_HZ / 1e9)
                for packet in encoder.encode(pixels, pts):
                    self._publish_packet(packet, acquisition_ns)
            except (DicomOrError, ValueError, OSError) as exc:  # PyAV's errors are both
                self.encode_errors += 1
                encoder = None  # the next frame starts again at a key frame
                log.error(f"{self.stream.topic}: H.264 encoding failed: {exc}",
                          throttle_duration_sec=5.0)

    def _publish_packet(self, packet: EncodedPacket, acquisition_ns: int) -> None:
        """One access unit as a VideoPacket in the current Series (zero latency: the packet
        of the frame captured at ``acquisition_ns``)."""
        def build(stamp: Any) -> VideoPacket:
            msg = VideoPacket()
            msg.format = "h264"
            msg.key_frame = packet.keyframe
            msg.pts = packet.pts
            msg.data = packet.data
            stamp.fill(msg.context)
            return msg

        if self.stream.publish(build, acquisition_ns) is not None:
            self.packets_encoded += 1

    def close(self) -> None:
        """Stop the device loop (the encoder publishes what it holds), publish STOPPED."""
        self._stop.set()
        self._thread.join(timeout=5.0)
        if self._encoder_thread is not None:
            with self._encode_cond:
                self._capture_done = True
                self._encode_cond.notify_all()
            self._encoder_thread.join(timeout=5.0)
        self.stream.close()


def main(args: list[str] | None = None) -> None:
    """Run the ``endoscope`` driver until Ctrl-C / SIGTERM; a bad parameter: one error line,
    exit 1."""
    sys.exit(run_node(VideoDriver, args))
