"""Convert between dicom_or_msgs messages and dicom_or_core context dataclasses.

The messages and dataclasses share field names (one design, two representations), so one
recursive walk does every type: no per-field copy code to drift out of date.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar, cast

from builtin_interfaces.msg import Time

from dicom_or_core.model import context as ctx
from dicom_or_msgs import msg as m

T = TypeVar("T")

_MSG_OF = {
    ctx.Patient: m.Patient,
    ctx.Study: m.Study,
    ctx.Equipment: m.Equipment,
    ctx.SessionContext: m.SessionContext,
    ctx.RequestAttributes: m.RequestAttributes,
    ctx.WaveformChannel: m.WaveformChannel,
    ctx.StreamDescriptor: m.StreamDescriptor,
}


def to_msg(obj: Any) -> Any:
    """A core context dataclass as its ROS message."""
    msg = _MSG_OF[type(obj)]()
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            value = to_msg(value)
        elif isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            value = [to_msg(v) for v in value]
        elif isinstance(value, list):
            value = list(value)
        setattr(msg, f.name, value)
    return msg


def from_msg(cls: type[T], msg: Any) -> T:
    """A ROS message as the core context dataclass ``cls``."""
    kwargs = {}
    # ``cls`` is one of the context dataclasses; a TypeVar cannot say "a dataclass type".
    for f in dataclasses.fields(cast(Any, cls)):
        value = getattr(msg, f.name)
        nested = ctx.NESTED_FIELDS.get((cls, f.name))
        if nested is not None and isinstance(value, (list, tuple)):
            value = [from_msg(nested, v) for v in value]
        elif nested is not None:
            value = from_msg(nested, value)
        elif isinstance(value, (list, tuple)):
            value = list(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def time_to_ns(stamp: Time) -> int:
    """builtin_interfaces/Time as integer nanoseconds."""
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def ns_to_time(ns: int) -> Time:
    """Integer nanoseconds as builtin_interfaces/Time."""
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)
