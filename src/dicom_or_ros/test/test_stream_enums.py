"""The core's stream enums (ROS-free) carry the interfaces' wire values."""

from dicom_or_core.model.stream import StreamKind, StreamState
from dicom_or_msgs.msg import DeviceStatus, StreamDescriptor


def test_kinds_are_the_descriptor_constants():
    wire = {name[len("KIND_"):]: getattr(StreamDescriptor, name)
            for name in dir(StreamDescriptor) if name.startswith("KIND_")}
    assert wire == {kind.name: int(kind) for kind in StreamKind}


def test_states_are_the_device_status_constants():
    wire = {name[len("STATE_"):]: getattr(DeviceStatus, name)
            for name in dir(DeviceStatus) if name.startswith("STATE_")}
    assert wire == {state.name: int(state) for state in StreamState}
