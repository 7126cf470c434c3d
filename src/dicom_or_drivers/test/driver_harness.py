"""Shared helpers of the driver tests: a session context source, collectors, subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter

from dicom_or_core.model import context as ctx
from dicom_or_core.model.uid import new_uid
from dicom_or_msgs.msg import DeviceStatus, SessionContext, StreamDescriptor
from dicom_or_ros.convert import from_msg, to_msg
from dicom_or_ros.graph import DEVICE_STATUS_TOPIC, SESSION_CONTEXT_TOPIC, descriptor_topic
from dicom_or_ros.qos import named_qos

PACKAGE = "dicom_or_drivers"


def executable(name: str) -> str:
    """Path of one of this package's console scripts in the colcon install space."""
    from ament_index_python.packages import get_package_prefix

    path = Path(get_package_prefix(PACKAGE)) / "lib" / PACKAGE / name
    assert path.is_file(), f"{path} missing: run make build"
    return str(path)


@contextmanager
def driver_process(name: str, *parameters: str, env: dict[str, str]) -> Iterator[None]:
    """The installed console script ``name`` in namespace /or with ``-p`` ``parameters``,
    as a launcher starts it; on leaving, it is terminated and must not have printed a
    traceback."""
    words = [word for parameter in parameters for word in ("-p", parameter)]
    child = subprocess.Popen([executable(name), "--ros-args", "-r", "__ns:=/or", *words],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    try:
        yield
    finally:
        child.terminate()
        output, _ = child.communicate(timeout=15)
    assert "Traceback" not in output, output


def make_session(patient_id: str = "P-0001", study_uid: str | None = None) -> ctx.SessionContext:
    return ctx.SessionContext(
        patient=ctx.Patient(patient_id=patient_id, patient_name="Doe^Jane", sex="F",
                            birth_date="19700101"),
        study=ctx.Study(study_instance_uid=study_uid or new_uid(), study_date="20261124",
                        study_time="120000", accession_number="ACC1", study_id="S1"),
        synchronization_frame_of_reference_uid=new_uid(), operating_room="OR1").validate()


def params(**values: object) -> list[Parameter]:
    """parameter_overrides from keyword arguments ('__' in a name stands for '.')."""
    return [Parameter(name.replace("__", "."), value=value) for name, value in values.items()]


class Probe:
    """A test node that publishes the session context and records everything a driver
    sends: samples per topic, descriptors, device status."""

    def __init__(self, context: object, name: str = "probe") -> None:
        self.node = rclpy.create_node(name, context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.samples: dict[str, list] = defaultdict(list)
        self.descriptors: dict[str, list[StreamDescriptor]] = defaultdict(list)
        self.status: list[DeviceStatus] = []
        self._session_pub = self.node.create_publisher(SessionContext, SESSION_CONTEXT_TOPIC,
                                                       named_qos("descriptor"))
        self.node.create_subscription(DeviceStatus, DEVICE_STATUS_TOPIC, self.status.append,
                                      named_qos("status"))
        self._keep: list[object] = []

    def publish_session(self, session: ctx.SessionContext) -> None:
        self._session_pub.publish(to_msg(session))

    def follow(self, topic: str, msg_type: type, qos: object) -> None:
        """Record samples of ``topic`` and descriptors of its latched descriptor topic."""
        self._keep.append(self.node.create_subscription(
            msg_type, topic, self.samples[topic].append, qos))
        self._keep.append(self.node.create_subscription(
            StreamDescriptor, descriptor_topic(topic), self.descriptors[topic].append,
            named_qos("descriptor")))

    def descriptor(self, topic: str, index: int = -1) -> ctx.StreamDescriptor:
        return from_msg(ctx.StreamDescriptor, self.descriptors[topic][index])

    def states(self, topic: str) -> list[int]:
        return [s.state for s in self.status if s.topic == topic]

    def spin_until(self, predicate, timeout_s: float = 20.0) -> bool:
        from dicom_or_test_common.ros import spin_until

        return spin_until(self.executor, predicate, timeout_s)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


def spin_driver_with(probe: Probe, driver: object) -> None:
    """Spin the driver node in the probe's executor (its timers and subscriptions)."""
    probe.executor.add_node(driver)


def run_bad_parameter(executable_name: str, *ros_args: str, timeout_s: float = 30.0,
                      env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a driver with bad parameters; it must exit on its own (no spin)."""
    args = [executable(executable_name), "--ros-args"]
    for arg in ros_args:
        args += ["-p", arg]
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout_s,
                          env=env or dict(os.environ))


def assert_contiguous(sequences: list[int]) -> None:
    """Sequences increase by exactly 1 (no loss, no reordering, no duplicates)."""
    assert sequences, "no samples"
    gaps = [(a, b) for a, b in zip(sequences, sequences[1:], strict=False) if b != a + 1]
    assert not gaps, f"not contiguous: first gaps {gaps[:5]}"


__all__ = ["Probe", "assert_contiguous", "executable", "make_session", "params",
           "run_bad_parameter", "spin_driver_with", "sys"]
