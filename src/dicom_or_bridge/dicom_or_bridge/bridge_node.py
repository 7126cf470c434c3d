"""``dicom_bridge``: the DICOM SCP that answers from the live ROS graph.

Wiring only: every ``discovery_period_s`` the node lists the graph's stream topics
(:func:`dicom_or_ros.graph.discover_streams`), subscribes to each one's latched descriptor,
follows ``/or/device_status``, and hands the set of live streams to the ROS-free
:class:`~dicom_or_core.qr.model.ModelStore`; the pynetdicom server
(:class:`~dicom_or_bridge.scp.BridgeScp`) answers C-FIND / C-GET / C-MOVE from the store's
snapshot in its own threads. A stream is listed once its sample topic has a publisher *and*
its descriptor arrived; it goes when the publisher goes (next discovery tick). STALE and
SOURCE_LOST streams stay listed, marked (see :mod:`dicom_or_core.qr.model`).

Beside the SCP, the DICOMweb service (:class:`~dicom_or_bridge.dicomweb_server.DicomWebServer`,
QIDO-RS / WADO-RS, PS3.18) answers from the same store on ``dicomweb_port`` with the same
host and TLS; its base URL is logged and published latched on ``~/dicomweb_url``.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pydicom.config
from pydicom.dataset import Dataset
from rclpy.node import Node
from rclpy.qos import QoSProfile
from rclpy.subscription import Subscription
from std_msgs.msg import String, UInt16

from dicom_or_bridge.dicomweb_server import DicomWebConfig, DicomWebServer
from dicom_or_bridge.scp import BridgeScp, ScpConfig, parse_destination, tls_context
from dicom_or_bridge.snapshot import snapshot_dataset
from dicom_or_core.iod.packet_decoder import PacketDecodeError, PacketDecoder
from dicom_or_core.model.context import KIND_VIDEO, StreamDescriptor
from dicom_or_core.model.errors import DicomOrError
from dicom_or_core.model.stream import StreamState
from dicom_or_core.qr.model import ArchiveIndex, LiveStream, ModelStore
from dicom_or_msgs.msg import DeviceStatus, ImageFrame, VideoPacket
from dicom_or_msgs.msg import StreamDescriptor as StreamDescriptorMsg
from dicom_or_ros.convert import from_msg
from dicom_or_ros.diagnostics import NODE_ENTRY, OK, WARN, Health, diagnostics_for
from dicom_or_ros.graph import (
    DEVICE_STATUS_TOPIC,
    descriptor_topic,
    discover_streams,
    is_encoded_video,
)
from dicom_or_ros.image import image_to_array
from dicom_or_ros.logging_bridge import LastProblem
from dicom_or_ros.params import load_parameters
from dicom_or_ros.qos import adapt_request_to_offers, named_qos, overridable
from dicom_or_ros.runtime import run_node

PROBLEM_WINDOW_S = 60.0  # a logged problem keeps the bridge's health at WARN this long


class DicomBridgeNode(Node):
    """See the module docstring."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("dicom_bridge", **kwargs)
        # Wildcards and ranges in identifiers are not valid *stored* values; pydicom would
        # warn about every one of them (a process-wide setting: this node owns the process).
        pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
        # Every parameter, its type, default and rule: bridge_parameters.yaml.
        p = self.params = load_parameters(self, "dicom_or_bridge", "bridge_parameters.yaml")
        self._discovery_period = p.discovery_period_s
        self._snapshot_timeout = p.snapshot_timeout_s
        archive_dir, rescan, move = p.archive_dir, p.archive_rescan_s, p.move_destinations
        destinations = {}
        for entry in move:
            ae, host, port = parse_destination(entry)
            destinations[ae] = (host, port)
        config = ScpConfig(move_destinations=destinations, **{
            f.name: getattr(p, f.name) for f in dataclasses.fields(ScpConfig)
            if f.name != "move_destinations"})
        self.store = ModelStore(ArchiveIndex(Path(archive_dir)),
                                domain_id=int(self.context.get_domain_id()),
                                retrieve_ae_title=config.ae_title, archive_rescan_s=rescan)
        self._stream_descriptors: dict[str, StreamDescriptor] = {}
        self._stream_states: dict[str, tuple[int, float]] = {}   # stream_uuid -> (state, rate)
        self._descriptor_subs: dict[str, Subscription] = {}
        self._live_topics: set[str] = set()
        self.create_subscription(DeviceStatus, DEVICE_STATUS_TOPIC, self._on_status,
                                 named_qos("status"))
        # The SCP logs through the standard library (dicom_or_bridge.scp / .server); run_node
        # routes that to this node's logger and /rosout (dicom_or_ros.logging_bridge).
        self.scp = BridgeScp(self.store, config,
                             snapshot=self._snapshot if self._snapshot_timeout > 0 else None)
        try:
            port = self.scp.start()
        except OSError as exc:
            raise DicomOrError("port", f"cannot listen on {config.host}:{config.port}: "
                               f"{exc.strerror}") from None
        self.port = port
        self.get_logger().info(f"listening on port {port} as AE {config.ae_title} "
                               f"({'TLS' if config.tls_cert else 'plain TCP'}), archive "
                               f"{archive_dir}")
        self._port_pub = self.create_publisher(UInt16, "~/port", named_qos("descriptor"),
                                               qos_overriding_options=overridable())
        self._port_pub.publish(UInt16(data=port))
        self.dicomweb = self._start_dicomweb(config)
        self.create_timer(self._discovery_period, self._discover)
        self._problems = LastProblem("dicom_or_bridge")
        diagnostics_for(self).add(NODE_ENTRY, self._health,
                                  hardware_id=f"{config.ae_title}@{config.host}:{port}")

    def _start_dicomweb(self, config: ScpConfig) -> DicomWebServer | None:
        """Start the DICOMweb service on ``dicomweb_port`` (-1: none) with the SCP's host,
        TLS and match limit; log its base URL and publish it latched on ~/dicomweb_url."""
        p = self.params
        if p.dicomweb_port < 0:
            self.get_logger().info("DICOMweb service disabled (dicomweb_port -1)")
            return None
        web = DicomWebServer(self.store, DicomWebConfig(
            host=config.host, port=p.dicomweb_port, prefix=p.dicomweb_prefix.rstrip("/"),
            token=p.dicomweb_token, max_concurrent_requests=p.dicomweb_max_concurrent_requests,
            max_matches=config.max_matches, tls=tls_context(config)),
            render=self._snapshot if self._snapshot_timeout > 0 else None)
        try:
            web.start()
        except OSError as exc:
            self.scp.stop()
            raise DicomOrError("dicomweb_port", f"cannot listen on {config.host}:"
                               f"{p.dicomweb_port}: {exc.strerror or exc}") from None
        self.get_logger().info(f"DICOMweb (QIDO-RS, WADO-RS) at {web.base_url}"
                               f"{' (bearer token required)' if p.dicomweb_token else ''}")
        publisher = self.create_publisher(String, "~/dicomweb_url", named_qos("descriptor"),
                                          qos_overriding_options=overridable())
        publisher.publish(String(data=web.base_url))
        return web

    # --- graph ---------------------------------------------------------------------

    def _discover(self) -> None:
        live = {s.topic for s in discover_streams(self)}
        for topic in live - set(self._descriptor_subs):
            self._descriptor_subs[topic] = self.create_subscription(
                StreamDescriptorMsg, descriptor_topic(topic),
                lambda msg, t=topic: self._on_descriptor(t, msg), named_qos("descriptor"))
        for topic in set(self._descriptor_subs) - live:
            self.destroy_subscription(self._descriptor_subs.pop(topic))
            self._stream_descriptors.pop(topic, None)
        self._live_topics = live
        self._publish_streams()

    def _on_descriptor(self, topic: str, msg: StreamDescriptorMsg) -> None:
        descriptor = from_msg(StreamDescriptor, msg)
        try:
            descriptor.validate()
        except DicomOrError as exc:
            self.get_logger().warning(f"ignoring invalid descriptor on "
                                      f"{descriptor_topic(topic)}: {exc}")
            return
        self._stream_descriptors[topic] = descriptor
        self._publish_streams()

    def _on_status(self, msg: DeviceStatus) -> None:
        self._stream_states[msg.stream_uuid] = (int(msg.state), float(msg.measured_rate_hz))
        self._publish_streams()

    def _publish_streams(self) -> None:
        streams = []
        for topic, descriptor in self._stream_descriptors.items():
            if topic not in self._live_topics:
                continue
            state, rate = self._stream_states.get(descriptor.stream_uuid, (1, 0.0))
            streams.append(LiveStream(descriptor, state, rate))
        self.store.set_streams(streams)

    def _snapshot(self, series_uid: str) -> Dataset | None:
        """Called from a pynetdicom thread: subscribe to the live video stream of
        ``series_uid`` just long enough to get one picture and return it as a DICOM image.
        No frame subscription exists otherwise (1080p frames are not free).

        A raw stream (``ImageFrame``) gives its next frame. An encoded stream
        (``VideoPacket``, descriptor ``video_codec`` h264) can only be decoded from a key
        frame: the access units are collected from the next key frame on and decoded, so
        the answer takes up to one key-frame interval (one second, the drivers' GOP) plus
        the decoding; both are bounded by ``snapshot_timeout_s`` (None after it)."""
        # The store's copy: this runs in a pynetdicom thread, the executor owns the dicts.
        descriptor = next((s.descriptor for s in self.store.streams()
                           if s.descriptor.series_instance_uid == series_uid
                           and s.descriptor.kind == KIND_VIDEO), None)
        if descriptor is None:
            return None
        if is_encoded_video(descriptor.message_type):
            picture = self._decoded_picture(descriptor)
            if picture is None:
                return None
            pixels, acquired_ns = picture
            return snapshot_dataset(descriptor, pixels, "rgb8", acquired_ns)
        got: list[ImageFrame] = []
        arrived = threading.Event()

        def on_frame(msg: ImageFrame) -> None:
            if not got:
                got.append(msg)
                arrived.set()

        sub = self.create_subscription(ImageFrame, descriptor.topic, on_frame,
                                       adapt_request_to_offers(
                                           self, descriptor.topic,
                                           named_qos(descriptor.qos_profile or "video")))
        try:
            if not arrived.wait(self._snapshot_timeout):
                return None
        finally:
            self.destroy_subscription(sub)
        image = got[0].image
        pixels = image_to_array(image)
        return snapshot_dataset(descriptor, pixels, image.encoding,
                                _acquired_ns(got[0].context.acquisition_time))

    def _decoded_picture(self, descriptor: StreamDescriptor) -> tuple[np.ndarray, int | None] \
            | None:
        """The first picture decoded from an encoded stream's access units, collected from
        the next key frame on, as RGB with its acquisition time; None when none decoded
        within ``snapshot_timeout_s`` (no key frame came, or only undecodable ones)."""
        collected: list[VideoPacket] = []
        arrived = threading.Condition()
        started = [False]

        def on_packet(msg: VideoPacket) -> None:
            with arrived:
                if started[0] or msg.key_frame:   # decoding can only begin at a key frame
                    started[0] = True
                    collected.append(msg)
                    arrived.notify()

        sub = self.create_subscription(VideoPacket, descriptor.topic, on_packet,
                                       adapt_request_to_offers(self, descriptor.topic,
                                                               _packet_qos(descriptor)))
        decoder = PacketDecoder(getattr(descriptor, "video_codec", "") or "h264")
        deadline = time.monotonic() + self._snapshot_timeout
        try:
            while True:
                with arrived:
                    while not collected:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0 or not arrived.wait(remaining):
                            return None
                    batch = list(collected)
                    collected.clear()
                for msg in batch:
                    try:
                        pictures = decoder.decode(msg.data, msg.key_frame,
                                                  msg.context.sequence, msg.pts, msg.format)
                    except PacketDecodeError as exc:   # the next key frame may decode
                        self.get_logger().warning(f"snapshot of {descriptor.topic}: {exc}")
                        continue
                    if pictures:
                        return pictures[-1].to_ndarray("rgb8"), \
                            _acquired_ns(msg.context.acquisition_time)
        finally:
            self.destroy_subscription(sub)

    def _health(self) -> Health:
        """The SCP's load and the streams it lists; WARN for a minute after the SCP or the
        archive logged a problem (a rejected or aborted association, an unreadable file)."""
        streams = self.store.streams()
        archive = self.store.archive
        values: dict[str, object] = {"port": self.port, "live_streams": len(streams)}
        for state in StreamState:
            values[f"streams_{state.name.lower()}"] = sum(1 for s in streams
                                                          if s.state == state)
        values["archive_instances"] = len(archive.indexed()) if archive is not None else 0
        values.update(self.scp.connection_counts())
        if self.dicomweb is not None:
            values["dicomweb_url"] = self.dicomweb.base_url
            values.update(self.dicomweb.counts)
        values["problems"] = self._problems.count
        values["last_error"] = self._problems.text
        age = self._problems.age_s()
        level = WARN if age is not None and age < PROBLEM_WINDOW_S else OK
        message = f"serving {len(streams)} live stream(s), {values['archive_instances']} " \
                  "archived instance(s)"
        if level == WARN:
            message += f"; {self._problems.text}"
        return Health(level, message, values)

    def close(self) -> None:
        """Stop the SCP and the DICOMweb service first (aborting their connections), then the
        store and its archive index."""
        self._problems.close()
        self.scp.stop()
        if self.dicomweb is not None:
            self.dicomweb.stop()
        self.store.close()   # its archive-index thread; after the SCP, whose handlers read it


def _acquired_ns(stamp: Any) -> int | None:
    """A sample context's acquisition time in nanoseconds; None when it is unset."""
    return stamp.sec * 1_000_000_000 + stamp.nanosec if stamp.sec else None


def _packet_qos(descriptor: StreamDescriptor) -> QoSProfile:
    """The profile an encoded stream's access units are subscribed from (history and depth;
    reliability and durability are adapted to the publishers): the descriptor's, or
    ``video_recording`` (a second of depth) where this host's QoS file lacks it. Every
    access unit matters: a lost one stops decoding until the next key frame."""
    try:
        return named_qos(descriptor.qos_profile or "video_compressed")
    except DicomOrError:
        return named_qos("video_recording")


def main(args: list[str] | None = None) -> None:
    """Run ``dicom_bridge`` until Ctrl-C / SIGTERM; a bad parameter: one error line, exit 1."""
    sys.exit(run_node(DicomBridgeNode, args))
