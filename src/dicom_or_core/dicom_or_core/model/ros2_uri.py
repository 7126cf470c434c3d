"""The ``ros2:`` URI a C-FIND answer carries in Retrieve URL (0008,1190).

A live Series is not retrievable as stored instances: its data is a ROS 2 topic. The bridge
tells a DICOM client how to subscribe with a URI of this form::

    ros2:<topic>?type=<package>/msg/<Type>&qos=<profile>&domain=<ROS_DOMAIN_ID>

for example ``ros2:/or/endoscope/frames?type=dicom_or_msgs/msg/ImageFrame&qos=video&domain=0``,
or, for a video stream encoded at the camera (descriptor ``video_codec`` "h264"),
``ros2:/or/endoscope/frames?type=dicom_or_msgs/msg/VideoPacket&qos=video_compressed&domain=0``:
the type tells a subscriber which message to create (and whether it must decode).

* ``<topic>`` is the fully qualified topic name (starts with ``/``; ROS names use only
  ``[A-Za-z0-9_/]``, so no percent-encoding is ever needed).
* ``type`` is the ROS interface type of the samples (``pkg/msg/Name``).
* ``qos`` names the QoS profile in ``config/qos_profiles.yaml`` that the publisher uses;
  a subscriber with that profile is guaranteed compatible.
* ``domain`` is the DDS domain (ROS_DOMAIN_ID, 0..232) of the publishing graph.

Retrieve URL has VR UR (PS3.5 6.2: RFC 3986 URI, no spaces); ``ros2`` is a valid RFC 3986
scheme with a path and a query component. Query parameters other than the four above are
ignored by :func:`parse`, so the form can grow without breaking old clients.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

from dicom_or_core.model.errors import DicomOrError

SCHEME = "ros2"
_TOPIC = re.compile(r"^(/[A-Za-z_][A-Za-z0-9_]*)+$")
_TYPE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*/(msg|srv|action)/[A-Z][A-Za-z0-9]*$")
_PROFILE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_DOMAIN_ID = 232


@dataclass(frozen=True)
class Ros2Uri:
    """Where and how to subscribe to one stream."""

    topic: str
    message_type: str
    qos_profile: str
    domain_id: int = 0

    def validate(self) -> Ros2Uri:
        """Self, or DicomOrError naming the topic, type, QoS profile or domain that is invalid."""
        if not _TOPIC.match(self.topic):
            raise DicomOrError("ros2_uri.topic", "must be a fully qualified ROS topic name "
                               "(/a/b, letters, digits, underscores)", self.topic)
        if not _TYPE.match(self.message_type):
            raise DicomOrError("ros2_uri.type", "must be a ROS interface type pkg/msg/Name",
                               self.message_type)
        if not _PROFILE.match(self.qos_profile):
            raise DicomOrError("ros2_uri.qos", "must be a QoS profile name", self.qos_profile)
        if isinstance(self.domain_id, bool) or not isinstance(self.domain_id, int) \
                or not 0 <= self.domain_id <= MAX_DOMAIN_ID:
            raise DicomOrError("ros2_uri.domain", f"must be an integer 0..{MAX_DOMAIN_ID}",
                               self.domain_id)
        return self

    def __str__(self) -> str:
        return format_uri(self)


def format_uri(uri: Ros2Uri) -> str:
    """The URI text, validated; parameters in a fixed order (type, qos, domain)."""
    uri.validate()
    query = urlencode([("type", uri.message_type), ("qos", uri.qos_profile),
                       ("domain", str(uri.domain_id))], safe="/")
    return f"{SCHEME}:{uri.topic}?{query}"


def parse(text: str) -> Ros2Uri:
    """Parse a ``ros2:`` URI; anything malformed raises DicomOrError naming the part."""
    if not isinstance(text, str):
        raise DicomOrError("ros2_uri", "must be a string", text)
    text = text.strip()
    scheme, sep, rest = text.partition(":")
    if not sep or scheme.lower() != SCHEME:
        raise DicomOrError("ros2_uri", f"must start with '{SCHEME}:'", text)
    path, _, query = rest.partition("?")
    # Tolerate the authority form ros2:///or/x (empty host) some URI builders emit.
    if path.startswith("///"):
        path = path[2:]
    params = dict(parse_qsl(query, keep_blank_values=True))
    for key in ("type", "qos"):
        if not params.get(key):
            raise DicomOrError(f"ros2_uri.{key}", "is missing", text)
    domain_text = params.get("domain", "0")
    if not domain_text.isdigit():
        raise DicomOrError("ros2_uri.domain", "must be an integer", domain_text)
    return Ros2Uri(path, params["type"], params["qos"], int(domain_text)).validate()
