"""Tracker driver: simulated tools in-process and across processes, OpenIGTLink client
against a real pyigtl server (filtering, unit conversion, reconnect), bad parameters."""

from __future__ import annotations

import signal
from contextlib import contextmanager

import numpy as np
import pyigtl
import pytest
from dicom_or_test_common.peers import free_tcp_port
from dicom_or_test_common.ros import isolated_env, ros_context
from driver_harness import (
    Probe,
    assert_contiguous,
    driver_process,
    make_session,
    params,
    run_bad_parameter,
)
from geometry_msgs.msg import PoseStamped
from rclpy._rclpy_pybind11 import RCLError
from visualization_msgs.msg import MarkerArray

from dicom_or_core.model.context import KIND_POSE
from dicom_or_core.sim.tracker import quaternion_from_axis_angle
from dicom_or_drivers.igtl import matrix_to_quaternion
from dicom_or_drivers.tracker_node import TrackerDriver, topic_token
from dicom_or_msgs.msg import DeviceStatus, PoseSample
from dicom_or_ros.convert import time_to_ns
from dicom_or_ros.qos import named_qos

POSES = "/or/tracker/poses"


def _check_poses(samples: list[PoseSample], series_uid: str, tool_ids: list[str]) -> None:
    assert_contiguous([s.context.sequence for s in samples])
    for sample in samples:
        assert sample.context.series_instance_uid == series_uid
        assert sample.context.header.frame_id == "tracker"
        assert sample.tool_id in tool_ids
        q = sample.pose.orientation
        assert np.linalg.norm([q.x, q.y, q.z, q.w]) == pytest.approx(1.0, abs=1e-6)


def test_simulated_tools_in_process() -> None:
    tools = ["pointer:instrument", "patient_reference:reference", "drill:occluded"]
    with ros_context() as context:
        probe = Probe(context)
        probe.follow(POSES, PoseSample, named_qos("pose"))
        stamped: dict[str, list] = {"pointer": [], "patient_reference": []}
        for name, received in stamped.items():
            probe.node.create_subscription(PoseStamped, f"/or/tracker/{name}/measured_cp",
                                           received.append, named_qos("pose"))
        markers: list[MarkerArray] = []
        probe.node.create_subscription(MarkerArray, "/or/tracker/markers", markers.append,
                                       named_qos("pose", 30))
        driver = TrackerDriver(context=context, namespace="/or", parameter_overrides=params(
            tools=tools, rate_hz=100.0))
        probe.executor.add_node(driver)
        try:
            assert probe.spin_until(
                lambda: driver.stream.publisher.get_subscription_count() >= 1, 10)
            probe.publish_session(make_session())
            assert probe.spin_until(lambda: len(probe.samples[POSES]) >= 300 and markers, 20)
            descriptor = probe.descriptor(POSES)
            assert descriptor.kind == KIND_POSE and descriptor.modality == "SR"
            assert descriptor.tool_ids == ["pointer", "patient_reference", "drill"]
            assert descriptor.tf_frame_id == "tracker"
            samples = probe.samples[POSES]
            assert samples[0].context.sequence == 0
            _check_poses(samples, descriptor.series_instance_uid, descriptor.tool_ids)
            # One sample per tool per tick, in tool order, all tools sharing the tick's time.
            for tick in range(len(samples) // 3):
                group = samples[3 * tick:3 * tick + 3]
                assert [s.tool_id for s in group] == descriptor.tool_ids
                assert len({time_to_ns(s.context.acquisition_time) for s in group}) == 1
            assert stamped["pointer"] and stamped["patient_reference"]
            assert stamped["pointer"][0].header.frame_id == "tracker"
            assert {m.text for m in markers[-1].markers} == set(descriptor.tool_ids)
            assert DeviceStatus.STATE_LIVE in probe.states(POSES)
        finally:
            driver.close()
            driver.destroy_node()
            probe.close()


@contextmanager
def igtl_server(port: int):
    """A real pyigtl OpenIGTLink server; pyigtl installs SIGINT/SIGTERM handlers, restored
    afterwards."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    server = pyigtl.OpenIGTLinkServer(port=port, local_server=True)
    try:
        yield server
    finally:
        server.stop()
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _transform(device: str, angle: float, translation_mm: tuple[float, float, float]):
    matrix = np.eye(4)
    rotation = quaternion_from_axis_angle(np.array([0.0, 0.0, 1.0]), angle)
    x, y, z, w = rotation
    matrix[:3, :3] = [[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                      [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                      [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]]
    matrix[:3, 3] = translation_mm
    return pyigtl.TransformMessage(matrix, device_name=device), rotation


def test_igtl_client_against_real_pyigtl_server_with_reconnect() -> None:
    port = free_tcp_port()
    with ros_context() as context:
        probe = Probe(context)
        probe.follow(POSES, PoseSample, named_qos("pose"))
        driver = TrackerDriver(context=context, namespace="/or", parameter_overrides=params(
            source="igtl", igtl__port=port, igtl__device_names=["StylusTipToTracker"],
            require_session_context=False, reconnect_initial_s=0.1, reconnect_max_s=0.3))
        probe.executor.add_node(driver)
        try:
            # No server yet: SOURCE_LOST and retries, the node lives on.
            assert probe.spin_until(lambda: DeviceStatus.STATE_SOURCE_LOST
                                    in probe.states(POSES), 15)
            assert "reconnecting" in probe.status[-1].message
            with igtl_server(port) as server:
                assert probe.spin_until(lambda: server.is_connected(), 15)
                sent = []
                for index in range(20):
                    message, rotation = _transform("StylusTipToTracker", 0.05 * index,
                                                   (10.0 + index, -20.0, 300.0))
                    server.send_message(message, wait=True)
                    sent.append(rotation)
                    server.send_message(_transform("OtherTool", 0.0, (0, 0, 0))[0], wait=True)
                assert probe.spin_until(lambda: len(probe.samples[POSES]) >= 20, 15)
                # Connected but silent: the offered deadline (5 periods) is missed -> STALE.
                assert probe.spin_until(lambda: DeviceStatus.STATE_STALE
                                        in probe.states(POSES), 15)
            samples = probe.samples[POSES]
            descriptor = probe.descriptor(POSES)
            _check_poses(samples, descriptor.series_instance_uid, ["StylusTipToTracker"])
            assert len(samples) == 20      # every message, in order; OtherTool filtered out
            for index, (sample, rotation) in enumerate(zip(samples, sent, strict=True)):
                p, q = sample.pose.position, sample.pose.orientation
                assert (p.x, p.y, p.z) == pytest.approx((0.010 + index / 1000, -0.020, 0.3),
                                                        abs=1e-6)
                assert (q.x, q.y, q.z, q.w) == pytest.approx(rotation, abs=1e-5)
            assert DeviceStatus.STATE_LIVE in probe.states(POSES)
            # The server went away: SOURCE_LOST again, not a crash.
            lost_before = probe.states(POSES).count(DeviceStatus.STATE_SOURCE_LOST)
            assert probe.spin_until(lambda: probe.states(POSES).count(
                DeviceStatus.STATE_SOURCE_LOST) > lost_before, 15)
            assert driver._thread.is_alive()
        finally:
            driver.close()
            driver.destroy_node()
            probe.close()


def test_matrix_to_quaternion_all_branches() -> None:
    for axis in ([1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]):
        for angle in (0.0, 0.3, 3.0, np.pi):
            expected = np.array(quaternion_from_axis_angle(np.array(axis, float), angle))
            x, y, z, w = expected
            r = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                          [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                          [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
            got = np.array(matrix_to_quaternion(r))
            assert min(np.abs(got - expected).max(), np.abs(got + expected).max()) < 1e-9


def test_topic_token() -> None:
    assert topic_token("pointer") == "pointer"
    assert topic_token("Stylus-Tip.1") == "Stylus_Tip_1"
    assert topic_token("3d") == "tool_3d"


def test_across_processes_200hz() -> None:
    with ros_context() as context:
        probe = Probe(context)
        probe.follow(POSES, PoseSample, named_qos("pose"))
        try:
            with driver_process("tracker_driver", "rate_hz:=200.0", "tool_count:=2",
                                env=isolated_env(context.domain)):
                assert probe.spin_until(lambda: probe.node.count_publishers(POSES) >= 1, 20)
                assert probe.spin_until(lambda: probe.states(POSES) != [], 20)
                probe.spin_until(lambda: False, 0.5)
                probe.publish_session(make_session())
                assert probe.spin_until(lambda: len(probe.samples[POSES]) >= 400, 30)
                descriptor = probe.descriptor(POSES)
                samples = probe.samples[POSES]
                assert samples[0].context.sequence == 0
                _check_poses(samples, descriptor.series_instance_uid,
                             ["pointer", "patient_reference"])
        finally:
            probe.close()


@pytest.mark.parametrize("args, name", [
    (["rate_hz:=5.0"], "rate_hz"),
    (["rate_hz:=2000.0"], "rate_hz"),
    (["tools:=[1bad]"], "tools"),
    (["tools:=[a=laser]"], "tools"),
    (["tools:=['a:laser']"], "tools"),
    (["tool_count:=0"], "tool_count"),
    (["source:=igtl"], "igtl.device_names"),
    (["source:=igtl", "igtl.device_names:=[Stylus]", "igtl.port:=70000"], "igtl.port"),
])
def test_bad_parameter_exits_1_naming_it(args: list[str], name: str) -> None:
    with ros_context() as context:
        result = run_bad_parameter("tracker_driver", *args, env=isolated_env(context.domain))
    assert result.returncode == 1, result.stderr
    assert name in result.stderr and "invalid configuration" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


class _RefusingPublisher:
    """The stream's publisher, made to refuse its first ``refusals`` samples the way Fast DDS
    does on a starved machine ("cannot publish data")."""

    def __init__(self, inner, refusals: int) -> None:
        self.inner, self.refusals = inner, refusals

    def publish(self, msg) -> None:
        if self.refusals:
            self.refusals -= 1
            raise RCLError("Failed to publish: cannot publish data")
        self.inner.publish(msg)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_sample_dds_refuses_is_counted_and_the_tracker_goes_on() -> None:
    """One refused publish once ended the simulation for good (an hour-long soak recorded
    11 s of poses); now it is a counted gap in the sequence and the poses keep coming."""
    with ros_context() as context:
        probe = Probe(context)
        probe.follow(POSES, PoseSample, named_qos("pose"))
        driver = TrackerDriver(context=context, namespace="/or", parameter_overrides=params(
            tools=["pointer:instrument"], rate_hz=100.0))
        probe.executor.add_node(driver)
        try:
            assert probe.spin_until(
                lambda: driver.stream.publisher.get_subscription_count() >= 1, 10)
            driver.stream.publisher = _RefusingPublisher(driver.stream.publisher, 5)
            probe.publish_session(make_session())
            assert probe.spin_until(lambda: len(probe.samples[POSES]) >= 100, 20)
            assert driver.stream.publish_failures == 5
            sequences = [s.context.sequence for s in probe.samples[POSES]]
            assert sequences[0] == 5  # the refused ones left their gap
            assert sequences == list(range(5, 5 + len(sequences)))
            assert DeviceStatus.STATE_SOURCE_LOST not in probe.states(POSES)
        finally:
            driver.close()
            driver.destroy_node()
            probe.close()
