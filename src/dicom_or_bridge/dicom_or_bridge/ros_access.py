"""Subscribing to a stream found through DICOM: the QoS a *reader* should request.

A subscriber that copies a publisher's named profile is compatible only when the publisher
uses exactly that profile: a requested deadline or liveliness lease shorter than the one
offered (e.g. a publisher with the default infinite lease) makes DDS refuse the match
("incompatible QoS: LIVELINESS"). A reader that only looks (dicom_or_find, the bridge's
snapshot) keeps the profile's reliability, history and durability but requests no deadline
and the default (infinite) liveliness lease, which every publisher satisfies.
"""

from __future__ import annotations

from rclpy.duration import Duration
from rclpy.qos import QoSProfile

from dicom_or_ros.qos import named_qos


def reader_qos(profile: str) -> QoSProfile:
    """The named profile relaxed for a reader that must match any publisher of the stream."""
    qos = named_qos(profile)
    qos.deadline = Duration()
    qos.liveliness_lease_duration = Duration()
    return qos
