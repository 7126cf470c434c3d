"""Turn the named profiles of ``config/qos_profiles.yaml`` into rclpy QoS objects."""

from __future__ import annotations

from rclpy.duration import Duration
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
