"""A stream's health entry on /diagnostics and its header stamps on the node's clock
(use_sim_time), the device's acquisition time kept apart."""

import time

import rclpy
from dicom_or_test_common.ros import ros_context, spin_until
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.time import Time
from rosgraph_msgs.msg import Clock

from dicom_or_core.model.context import KIND_POSE
from dicom_or_drivers.stream import (
    SOURCE_LOST,
    STALE,
    DriverParameters,
    SessionFollower,
    StatusReporter,
    StreamConfig,
    StreamPublisher,
)
from dicom_or_msgs.msg import PoseSample
from dicom_or_ros.convert import time_to_ns
from dicom_or_ros.diagnostics import ERROR, OK, diagnostics_for, status_level
from dicom_or_ros.diagnostics import STALE as DIAG_STALE

SIM_NS = 1_000 * 10**9  # 1000 s of simulated time


def _stream(node):
    params = DriverParameters(node, "Acme", "Tracker 3000")
    session = SessionFollower(node, require=False)  # ad-hoc session: a Series at once
    return StreamPublisher(node, StreamConfig(
        topic="~/poses", msg_type=PoseSample, kind=KIND_POSE, modality="SR",
        qos_profile="pose", nominal_rate_hz=50.0, tool_ids=["pointer"]),
        params, session, StatusReporter(node))


def test_header_stamps_follow_sim_time_and_health_follows_the_state():
    with ros_context() as ctx:
        node = rclpy.create_node("tracker", namespace="/or", context=ctx,
                                 parameter_overrides=[Parameter("use_sim_time", value=True)])
        clock_node = rclpy.create_node("clock", context=ctx)
        clock_pub = clock_node.create_publisher(Clock, "/clock", 10)
        executor = SingleThreadedExecutor(context=ctx)
        executor.add_node(node)
        executor.add_node(clock_node)
        try:
            stream = _stream(node)

            def ticked() -> bool:
                clock_pub.publish(Clock(clock=Time(nanoseconds=SIM_NS).to_msg()))
                return node.get_clock().now().nanoseconds == SIM_NS

            assert spin_until(executor, ticked, 10)
            captured = time.time_ns() - 20_000_000  # the device saw it 20 ms ago
            stamps = []

            def build(stamp):
                msg = PoseSample()
                stamp.fill(msg.context)
                stamps.append(stamp.capture_stamp())
                return msg

            sample = stream.publish(build, captured)
            assert sample is not None
            assert time_to_ns(sample.context.header.stamp) == SIM_NS  # published "now"
            assert time_to_ns(sample.context.acquisition_time) == captured  # host clock
            assert SIM_NS - 10**9 < time_to_ns(stamps[0]) < SIM_NS  # 20 ms before now
            assert time_to_ns(stream.capture_stamp(captured)) < SIM_NS

            diag = diagnostics_for(node)
            topic = "/or/tracker/poses"
            assert topic in diag.entries

            def entry():
                found = {s.name: s for s in diag.collect().status}
                return found[f"/or/tracker: {topic}"]

            live = entry()
            assert status_level(live) == OK and live.hardware_id == "Acme Tracker 3000"
            values = {kv.key: kv.value for kv in live.values}
            assert values["state"] == "LIVE" and values["published"] == "1"
            assert values["dropped"] == "0" and values["nominal_rate_hz"] == "50"
            stream.counters["frames_dropped_encoder"] = 3   # a driver's own counter
            values = {kv.key: kv.value for kv in entry().values}
            assert values["frames_dropped_encoder"] == "3"
            stream.set_state(STALE, "deadline missed")
            assert status_level(entry()) == DIAG_STALE
            stream.set_state(SOURCE_LOST, "cable pulled")
            lost = entry()
            assert status_level(lost) == ERROR and "cable pulled" in lost.message
            stream.close()
        finally:
            executor.shutdown()
            node.destroy_node()
            clock_node.destroy_node()
