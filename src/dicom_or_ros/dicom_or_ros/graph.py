"""Names every dicom_or node agrees on, and discovery of live streams on the ROS graph.

A *stream* is a topic whose type is one of the project's sample messages; its static
description is latched on ``<topic>/descriptor``. The bridge and the recorder find streams
with :func:`discover_streams`, so a new driver needs no registration anywhere.

A video stream is either raw (``ImageFrame``, descriptor ``video_codec`` "") or encoded at
the camera (``VideoPacket``, ``video_codec`` "h264"); both are KIND_VIDEO streams and are
discovered, described and listed alike. :func:`is_encoded_video` tells them apart by the
message type, which every consumer needs anyway to create its subscription.
"""

from __future__ import annotations

from dataclasses import dataclass

from rclpy.node import Node

SESSION_CONTEXT_TOPIC = "/or/session_context"
DEVICE_STATUS_TOPIC = "/or/device_status"
DESCRIPTOR_SUFFIX = "/descriptor"

IMAGE_FRAME_TYPE = "dicom_or_msgs/msg/ImageFrame"
VIDEO_PACKET_TYPE = "dicom_or_msgs/msg/VideoPacket"
POSE_SAMPLE_TYPE = "dicom_or_msgs/msg/PoseSample"
WAVEFORM_CHUNK_TYPE = "dicom_or_msgs/msg/WaveformChunk"
STREAM_TYPES = (IMAGE_FRAME_TYPE, VIDEO_PACKET_TYPE, POSE_SAMPLE_TYPE, WAVEFORM_CHUNK_TYPE)
VIDEO_TYPES = (IMAGE_FRAME_TYPE, VIDEO_PACKET_TYPE)


def is_encoded_video(message_type: str) -> bool:
    """Whether a stream of ``message_type`` carries encoded access units (``VideoPacket``,
    decoded where pixels are needed) rather than raw frames."""
    return message_type == VIDEO_PACKET_TYPE


@dataclass(frozen=True)
class StreamTopic:
    """A live stream topic: where its samples and its descriptor are."""

    topic: str
    message_type: str

    @property
    def descriptor_topic(self) -> str:
        """Where the stream's descriptor is latched: ``<topic>/descriptor``."""
        return descriptor_topic(self.topic)


def descriptor_topic(sample_topic: str) -> str:
    """The latched descriptor topic of a stream's sample topic."""
    return sample_topic.rstrip("/") + DESCRIPTOR_SUFFIX


def discover_streams(node: Node) -> list[StreamTopic]:
    """Every topic on the graph (with at least one publisher) carrying a stream type."""
    found = []
    for name, types in node.get_topic_names_and_types():
        for type_name in types:
            if type_name in STREAM_TYPES and node.count_publishers(name) > 0:
                found.append(StreamTopic(name, type_name))
    return sorted(found, key=lambda s: s.topic)
