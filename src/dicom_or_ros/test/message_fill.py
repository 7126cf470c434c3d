"""Fill every field of any ROS message deterministically (shared by both sides of the
cross-process round-trip test, so the receiver can rebuild what the sender sent)."""

from __future__ import annotations

import importlib

import numpy as np

_SCALARS = {
    "boolean": lambda i: True,  # default is False
    "octet": lambda i: i % 256, "uint8": lambda i: (i * 7) % 256, "int8": lambda i: i % 100 - 50,
    "uint16": lambda i: (i * 31) % 65536, "int16": lambda i: (i * 31) % 60000 - 30000,
    "uint32": lambda i: i * 100003 % 2**32, "int32": lambda i: i * 100003 % 2**31 - 2**30,
    "uint64": lambda i: 2**40 + i, "int64": lambda i: -(2**40) - i,
    "float": lambda i: float(np.float32(i * 0.25)), "double": lambda i: i * 1.0e-3 + 0.5,
    "string": lambda i: f"v{i}-ä",
}


def _message_class(type_name: str):
    package, _, name = type_name.partition("/")
    return getattr(importlib.import_module(f"{package}.msg"), name)


def fill(msg_or_class, seed: int = 1):
    """An instance with every field set from ``seed`` (arrays of 3 elements)."""
    msg = msg_or_class() if isinstance(msg_or_class, type) else msg_or_class
    counter = seed * 1000
    for name, type_name in msg.get_fields_and_field_types().items():
        counter += 1
        is_array = type_name.startswith("sequence<") or type_name.endswith("]")
        base = type_name.removeprefix("sequence<").split(">")[0].split("[")[0].split(",")[0]
        if base.startswith("string"):
            base = "string"
        if "/" in base:
            value = ([fill(_message_class(base), counter + k) for k in range(3)]
                     if is_array else fill(getattr(msg, name), counter))
        else:
            make = _SCALARS[base]
            if name == "nanosec":
                value = counter % 1_000_000_000
            elif base in ("uint8", "octet") and is_array:
                value = bytes(make(counter + k) for k in range(3))
            elif is_array:
                value = [make(counter + k) for k in range(3)]
            else:
                value = make(counter)
        setattr(msg, name, value)
    return msg


def as_plain(msg) -> object:
    """A message as nested Python values, for equality with readable diffs."""
    if hasattr(msg, "get_fields_and_field_types"):
        return {name: as_plain(getattr(msg, name)) for name in msg.get_fields_and_field_types()}
    if isinstance(msg, (list, tuple)) or hasattr(msg, "tolist"):
        return [as_plain(v) for v in (msg.tolist() if hasattr(msg, "tolist") else msg)]
    if isinstance(msg, (bytes, bytearray)):
        return list(msg)
    return msg


SAMPLE_TYPES = ["dicom_or_msgs/ImageFrame", "dicom_or_msgs/PoseSample",
                "dicom_or_msgs/WaveformChunk", "dicom_or_msgs/DeviceStatus"]
LATCHED_TYPES = ["dicom_or_msgs/SessionContext", "dicom_or_msgs/StreamDescriptor"]


def topic_of(type_name: str) -> str:
    return "/roundtrip/" + type_name.split("/")[1].lower()
