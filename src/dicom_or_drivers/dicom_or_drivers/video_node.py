"""Endoscope video driver node (``video_driver``, run as ``endoscope`` in ``/or``).

Publishes ``~/frames`` (dicom_or_msgs/ImageFrame, profile "video", Modality ES), the plain
``~/image_raw`` (sensor_msgs/Image, for rviz2) and optionally ``~/image_raw/compressed``
(JPEG sensor_msgs/CompressedImage), with the stream descriptor latched on
``~/frames/descriptor``. Frames are paced on an absolute monotonic schedule; a source that
stops delivering is reported SOURCE_LOST and reopened with exponential backoff.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import cv2
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image

from dicom_or_core.model.context import KIND_VIDEO
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
from dicom_or_msgs.msg import ImageFrame
from dicom_or_ros.image import fill_image
from dicom_or_ros.params import load_parameters
from dicom_or_ros.qos import named_qos, overridable
from dicom_or_ros.runtime import run_node


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
        self.stream = StreamPublisher(self, StreamConfig(
            topic="~/frames", msg_type=ImageFrame, kind=KIND_VIDEO, modality=modality,
            qos_profile="video", nominal_rate_hz=self.fps, series_description=description,
            tf_frame_id=self.frame_id, rows=self.height, columns=self.width,
            pixel_encoding=self.encoding), params, self.session, self.status)
        self.raw_publisher = self.create_publisher(
            Image, "~/image_raw", named_qos("video", self.fps),
            qos_overriding_options=overridable()) if self.publish_raw else None
        self.compressed_publisher = self.create_publisher(
            CompressedImage, "~/image_raw/compressed", named_qos("video", self.fps),
            qos_overriding_options=overridable()) if self.publish_compressed else None
        self.frames_skipped = 0
        self._stop = threading.Event()
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
        frame = self.stream.publish(self._build, time.time_ns())
        if frame is None:
            return False
        if self.raw_publisher is not None:
            self.raw_publisher.publish(frame.image)
        if self.compressed_publisher is not None:
            pixels = self._last_pixels
            if self.encoding == "rgb8":
                pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
            ok, jpeg = cv2.imencode(".jpg", pixels,
                                    [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
            if ok:
                msg = CompressedImage()
                msg.header = frame.image.header
                msg.format = f"{self.encoding}; jpeg compressed " \
                    f"{'mono8' if self.encoding == 'mono8' else 'bgr8'}"
                msg.data = jpeg.tobytes()
                self.compressed_publisher.publish(msg)
        return True

    def close(self) -> None:
        """Stop the device loop, publish STOPPED."""
        self._stop.set()
        self._thread.join(timeout=5.0)
        self.stream.close()


def main(args: list[str] | None = None) -> None:
    """Run the ``endoscope`` driver until Ctrl-C / SIGTERM; a bad parameter: one error line,
    exit 1."""
    sys.exit(run_node(VideoDriver, args))
