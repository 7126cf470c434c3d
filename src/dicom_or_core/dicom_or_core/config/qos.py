"""Named QoS profiles per stream class, loaded from ``config/qos_profiles.yaml``.

This module is ROS-free: it parses and validates the file into :class:`QosSpec` values; the
ROS layer (``dicom_or_ros.qos``) turns a spec into an ``rclpy.qos.QoSProfile``. Keeping the
decision in one YAML file lets an integrator retune a whole OR without touching code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from dicom_or_core.config.paths import config_file
from dicom_or_core.model.errors import DicomOrError

RELIABILITIES = ("reliable", "best_effort")
DURABILITIES = ("volatile", "transient_local")
HISTORIES = ("keep_last", "keep_all")
LIVELINESSES = ("automatic", "manual_by_topic")


@dataclass(frozen=True)
class QosSpec:
    """One named profile. Durations in seconds; ``None`` means the DDS default (infinite)."""

    name: str
    reliability: str = "reliable"
    durability: str = "volatile"
    history: str = "keep_last"
    depth: int = 10
    deadline_periods: float | None = None
    liveliness: str = "automatic"
    liveliness_lease_s: float | None = None

    def deadline_s(self, nominal_rate_hz: float) -> float | None:
        """The deadline for a stream of ``nominal_rate_hz``, or None when not set."""
        if self.deadline_periods is None or nominal_rate_hz <= 0:
            return None
        return self.deadline_periods / nominal_rate_hz


def _choice(name: str, key: str, value: object, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise DicomOrError(f"profiles.{name}.{key}", f"must be one of {', '.join(allowed)}",
                           value)
    return str(value)


def _positive(name: str, key: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value <= 0:
        raise DicomOrError(f"profiles.{name}.{key}", "must be a number greater than 0", value)
    return float(value)


def parse_profiles(data: object) -> dict[str, QosSpec]:
    """Validate the parsed YAML document and return its profiles by name."""
    if not isinstance(data, dict) or not isinstance(data.get("profiles"), dict):
        raise DicomOrError("profiles", "the QoS file needs a 'profiles' mapping")
    specs = {}
    for name, body in data["profiles"].items():
        if not isinstance(body, dict):
            raise DicomOrError(f"profiles.{name}", "must be a mapping of policies")
        known = {"reliability", "durability", "history", "depth", "deadline_periods",
                 "liveliness", "liveliness_lease_s"}
        unknown = sorted(set(body) - known)
        if unknown:
            raise DicomOrError(f"profiles.{name}.{unknown[0]}", "is not a QoS policy")
        depth = body.get("depth", 10)
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise DicomOrError(f"profiles.{name}.depth", "must be an integer >= 1", depth)
        specs[name] = QosSpec(
            name=name,
            reliability=_choice(name, "reliability", body.get("reliability", "reliable"),
                                RELIABILITIES),
            durability=_choice(name, "durability", body.get("durability", "volatile"),
                               DURABILITIES),
            history=_choice(name, "history", body.get("history", "keep_last"), HISTORIES),
            depth=depth,
            deadline_periods=_positive(name, "deadline_periods", body.get("deadline_periods")),
            liveliness=_choice(name, "liveliness", body.get("liveliness", "automatic"),
                               LIVELINESSES),
            liveliness_lease_s=_positive(name, "liveliness_lease_s",
                                         body.get("liveliness_lease_s")),
        )
    return specs


def load_profiles(path: str | Path | None = None) -> dict[str, QosSpec]:
    """Load and validate a QoS profile file (default: the installed qos_profiles.yaml)."""
    path = Path(path) if path else config_file("qos_profiles.yaml")
    try:
        with open(path, encoding="utf-8") as stream:
            data = yaml.safe_load(stream)
    except OSError as exc:
        raise DicomOrError("qos_profiles_file", f"cannot be read: {exc.strerror}",
                           str(path)) from None
    except yaml.YAMLError as exc:
        raise DicomOrError("qos_profiles_file", f"is not valid YAML: {exc}", str(path)) \
            from None
    return parse_profiles(data)


def get_profile(name: str, path: str | Path | None = None) -> QosSpec:
    """One named profile; an unknown name is an error naming the available ones."""
    profiles = load_profiles(path)
    if name not in profiles:
        raise DicomOrError("qos_profile", f"unknown profile; known: {', '.join(profiles)}",
                           name)
    return profiles[name]
