"""Test helpers: a publisher of example streams (descriptors + samples, as the drivers
publish them) and the recorder's console script. The drivers are developed in parallel, so
recorder tests publish the contract messages themselves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from rclpy.node import Node

from dicom_or_core.model import context as ctx
from dicom_or_msgs.msg import (
    ImageFrame,
    PoseSample,
    RecorderStatus,
    StreamDescriptor,
    WaveformChunk,
)
from dicom_or_recorder.status import status_dict
from dicom_or_ros.convert import ns_to_time, to_msg
from dicom_or_ros.graph import descriptor_topic
from dicom_or_ros.qos import named_qos

PACKAGE = "dicom_or_recorder"
_SAMPLE_TYPES = {ctx.KIND_VIDEO: ImageFrame, ctx.KIND_POSE: PoseSample,
                 ctx.KIND_WAVEFORM: WaveformChunk}
_PROFILES = {ctx.KIND_VIDEO: "video", ctx.KIND_POSE: "pose", ctx.KIND_WAVEFORM: "waveform"}


def console_script(name: str) -> str:
    """Path of one of this package's console scripts in the colcon install space."""
    from ament_index_python.packages import get_package_prefix
    path = Path(get_package_prefix(PACKAGE)) / "lib" / PACKAGE / name
    assert path.is_file(), f"{path} missing: run 'make build'"
    return str(path)


class StreamPublisher(Node):
    """Publishes descriptors (latched) and samples of example streams."""

    def __init__(self, descriptors: dict[str, ctx.StreamDescriptor], video_profile: str =
                 "video_recording", **kwargs: Any) -> None:
        super().__init__("test_stream_publisher", **kwargs)
        self.descriptors = descriptors
        self.samples = {}
        self._descriptor_pubs = []
        for key, d in descriptors.items():
            pub = self.create_publisher(StreamDescriptor, descriptor_topic(d.topic),
                                        named_qos("descriptor"))
            pub.publish(to_msg(d))
            self._descriptor_pubs.append(pub)
            profile = video_profile if d.kind == ctx.KIND_VIDEO else _PROFILES[d.kind]
            self.samples[key] = self.create_publisher(
                _SAMPLE_TYPES[d.kind], d.topic, named_qos(profile, d.nominal_rate_hz))
        self.status: dict[str, Any] | None = None   # the last RecorderStatus, as a dict
        self.status_msg: RecorderStatus | None = None
        self.create_subscription(RecorderStatus, "/recorder/status", self._on_status,
                                 named_qos("status"))

    def _on_status(self, msg: RecorderStatus) -> None:
        self.status_msg = msg
        self.status = status_dict(msg)

    def subscribed(self) -> bool:
        """Every sample topic has a subscriber (the recorder got the descriptors)."""
        return all(p.get_subscription_count() > 0 for p in self.samples.values())

    def _fill_context(self, msg: Any, d: ctx.StreamDescriptor, stamp_ns: int, seq: int) -> None:
        msg.context.header.stamp = self.get_clock().now().to_msg()
        msg.context.header.frame_id = d.tf_frame_id
        msg.context.series_instance_uid = d.series_instance_uid
        msg.context.sequence = seq
        msg.context.acquisition_time = ns_to_time(stamp_ns)

    def video(self, key: str, image: np.ndarray, stamp_ns: int, seq: int) -> None:
        d = self.descriptors[key]
        msg = ImageFrame()
        self._fill_context(msg, d, stamp_ns, seq)
        msg.image.header = msg.context.header
        msg.image.height, msg.image.width = image.shape[:2]
        msg.image.encoding = d.pixel_encoding
        msg.image.step = image.shape[1] * (image.shape[2] if image.ndim == 3 else 1)
        msg.image.data = image.tobytes()
        self.samples[key].publish(msg)

    def chunk(self, key: str, samples: np.ndarray, first_ns: int, first_index: int,
              seq: int) -> None:
        d = self.descriptors[key]
        msg = WaveformChunk()
        self._fill_context(msg, d, first_ns, seq)
        msg.first_sample_time = ns_to_time(first_ns)
        msg.sample_period = 1.0 / d.sampling_frequency_hz
        msg.first_sample_index = first_index
        msg.channel_count = samples.shape[1]
        msg.samples = samples.astype(np.int16).ravel().tolist()
        self.samples[key].publish(msg)

    def pose(self, key: str, tool: str, stamp_ns: int, position: tuple, quaternion: tuple,
             visible: bool, seq: int) -> None:
        d = self.descriptors[key]
        msg = PoseSample()
        self._fill_context(msg, d, stamp_ns, seq)
        msg.tool_id = tool
        p, q = msg.pose.position, msg.pose.orientation
        p.x, p.y, p.z = (float(v) for v in position)
        q.x, q.y, q.z, q.w = (float(v) for v in quaternion)
        msg.visible = visible
        msg.tracking_quality = 1.0
        self.samples[key].publish(msg)


def stream_status(status: dict[str, Any] | None, topic: str) -> dict[str, Any]:
    """The status entry of one stream (empty dict when not there yet)."""
    for entry in (status or {}).get("streams", []):
        if entry["topic"] == topic:
            return entry
    return {}


def cfind_image(port: int, study_uid: str, called_ae: str = "ORTHANC") -> set[str]:
    """SOP Instance UIDs a Study Root C-FIND SCP returns at IMAGE level for a Study."""
    from pydicom.dataset import Dataset
    from pynetdicom import AE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(FIND)
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID = study_uid
    query.SeriesInstanceUID = ""
    query.SOPInstanceUID = ""
    found = set()
    try:
        for status, identifier in assoc.send_c_find(query, FIND):
            if status and status.Status in (0xFF00, 0xFF01) and identifier is not None:
                found.add(str(identifier.SOPInstanceUID))
    finally:
        assoc.release()
    return found
