"""QoS for dicom_or nodes: the named profiles of ``config/qos_profiles.yaml`` as rclpy QoS
objects, and subscription profiles adapted to what a topic's publishers offer."""

from __future__ import annotations

from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    LivelinessPolicy,
    QoSProfile,
    ReliabilityPolicy,
)
from rclpy.qos_overriding_options import QoSOverridingOptions

from dicom_or_core.config.qos import QosSpec, get_profile

_RELIABILITY = {"reliable": ReliabilityPolicy.RELIABLE,
                "best_effort": ReliabilityPolicy.BEST_EFFORT}
_DURABILITY = {"volatile": DurabilityPolicy.VOLATILE,
               "transient_local": DurabilityPolicy.TRANSIENT_LOCAL}
_HISTORY = {"keep_last": HistoryPolicy.KEEP_LAST, "keep_all": HistoryPolicy.KEEP_ALL}
_LIVELINESS = {"automatic": LivelinessPolicy.AUTOMATIC,
               "manual_by_topic": LivelinessPolicy.MANUAL_BY_TOPIC}


def to_qos_profile(spec: QosSpec, nominal_rate_hz: float = 0.0) -> QoSProfile:
    """The rclpy profile for ``spec``; the deadline scales with the stream's rate."""
    profile = QoSProfile(
        history=_HISTORY[spec.history],
        depth=spec.depth,
        reliability=_RELIABILITY[spec.reliability],
        durability=_DURABILITY[spec.durability],
        liveliness=_LIVELINESS[spec.liveliness],
    )
    deadline = spec.deadline_s(nominal_rate_hz)
    if deadline is not None:
        profile.deadline = Duration(nanoseconds=int(deadline * 1e9))
    if spec.liveliness_lease_s is not None:
        profile.liveliness_lease_duration = Duration(
            nanoseconds=int(spec.liveliness_lease_s * 1e9))
    return profile


def named_qos(name: str, nominal_rate_hz: float = 0.0, path: str | None = None) -> QoSProfile:
    """Profile ``name`` from the QoS file, as an rclpy QoSProfile."""
    return to_qos_profile(get_profile(name, path), nominal_rate_hz)


def overridable() -> QoSOverridingOptions:
    """Let operators override a publisher's policies per topic through parameters
    (``qos_overrides.<topic>.publisher.<policy>``), as ros2/demos qos_overrides_talker."""
    return QoSOverridingOptions.with_default_policies()


def adapt_request_to_offers(node: Node, topic: str, base_profile: QoSProfile) -> QoSProfile:
    """A subscription profile for ``topic`` that matches every publisher it has now, as
    rosbag2_transport's ``adapt_request_to_offers`` (qos.cpp) records a topic.

    RELIABLE only if every publisher offers RELIABLE, TRANSIENT_LOCAL only if every
    publisher offers it; otherwise BEST_EFFORT / VOLATILE, which match any writer (a
    reliable reader of a best-effort writer, or a transient-local reader of a volatile one,
    is refused by DDS). Deadline, lifespan and liveliness are left at their defaults (no
    request a publisher could fail to meet); history and depth are ``base_profile``'s. Mixed
    offers are logged as a warning, since then a reliable publisher is read best effort.
    No publisher yet: BEST_EFFORT / VOLATILE, compatible with whatever comes.
    """
    offers = [info.qos_profile for info in node.get_publishers_info_by_topic(topic)]
    reliable = sum(1 for q in offers if q.reliability == ReliabilityPolicy.RELIABLE)
    transient = sum(1 for q in offers if q.durability == DurabilityPolicy.TRANSIENT_LOCAL)
    every = bool(offers)
    profile = QoSProfile(
        history=base_profile.history, depth=base_profile.depth,
        reliability=ReliabilityPolicy.RELIABLE if every and reliable == len(offers)
        else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if every and transient == len(offers)
        else DurabilityPolicy.VOLATILE)
    if 0 < reliable < len(offers):
        node.get_logger().warning(
            f"{topic}: {reliable} of {len(offers)} publishers offer RELIABLE: subscribing "
            "BEST_EFFORT, so the reliable ones' samples may be lost too")
    if 0 < transient < len(offers):
        node.get_logger().warning(
            f"{topic}: {transient} of {len(offers)} publishers offer TRANSIENT_LOCAL: "
            "subscribing VOLATILE, late-joining samples are not received")
    return profile
