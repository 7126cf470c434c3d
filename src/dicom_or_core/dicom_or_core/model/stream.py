"""Stream kinds and stream states, defined once for the whole project.

The values are the wire values of the interfaces (``dicom_or_msgs/StreamDescriptor``
``KIND_*`` and ``dicom_or_msgs/DeviceStatus`` ``STATE_*``); the core cannot import the
messages (it is ROS-free), so ``src/dicom_or_ros/test/test_stream_enums.py`` checks that the
two stay equal.
"""

from __future__ import annotations

from enum import IntEnum


class StreamKind(IntEnum):
    """What a stream carries, and so which IOD records it (PS3.3 A.34 / A.32.4 / A.35.13)."""

    VIDEO = 1
    POSE = 2
    WAVEFORM = 3

    @property
    def label(self) -> str:
        """The lower-case name used in parameters, file names and logs (``"video"``)."""
        return self.name.lower()


class StreamState(IntEnum):
    """A stream's health as its driver reports it.

    STALE: the deadline was missed (the device may come back); SOURCE_LOST: the device is
    gone (instances are then UNAVAILABLE in the bridge's answers, PS3.4 C.4.1.1.3.2);
    STOPPED: the driver ended the stream on purpose.
    """

    STARTING = 0
    LIVE = 1
    STALE = 2
    SOURCE_LOST = 3
    STOPPED = 4
