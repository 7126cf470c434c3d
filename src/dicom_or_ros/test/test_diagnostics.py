"""dicom_or_ros.diagnostics: entries, levels, names, stamps, a failing check, the topic."""

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from dicom_or_test_common.ros import ros_context, spin_until
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.time import Time

from dicom_or_msgs.msg import DeviceStatus
from dicom_or_ros.diagnostics import (
    DIAGNOSTICS_TOPIC,
    ERROR,
    NODE_ENTRY,
    OK,
    STALE,
    WARN,
    Health,
    diagnostics_for,
    level_of_state,
    status_level,
    value_text,
    worst,
)


def _by_name(array: DiagnosticArray) -> dict[str, DiagnosticStatus]:
    return {s.name: s for s in array.status}


def test_levels_follow_the_stream_states_and_the_worst_wins():
    assert level_of_state(DeviceStatus.STATE_LIVE) == OK
    assert level_of_state(DeviceStatus.STATE_STARTING) == OK
    assert level_of_state(DeviceStatus.STATE_STALE) == STALE
    assert level_of_state(DeviceStatus.STATE_SOURCE_LOST) == ERROR
    assert level_of_state(99) == WARN
    assert worst(OK, WARN) == WARN and worst(ERROR, STALE) == STALE and worst() == OK
    assert (OK, WARN, ERROR, STALE) == (0, 1, 2, 3)
    assert value_text(True) == "true" and value_text(None) == "" and \
        value_text(0.1 + 0.2) == "0.3" and value_text(7) == "7"


def test_entries_are_named_after_the_node_and_carry_their_values():
    with ros_context() as ctx:
        node = rclpy.create_node("probe", namespace="/or", context=ctx)
        try:
            diag = diagnostics_for(node)
            assert diagnostics_for(node) is diag  # one per node
            diag.add("/or/x/frames", lambda: Health(STALE, "late", {"rate_hz": 29.97,
                                                                     "lost": 3}),
                     hardware_id="Acme cam 42")

            def broken() -> Health:
                raise RuntimeError("sensor gone")

            diag.add("broken", broken)
            array = diag.collect()
            got = _by_name(array)
            assert set(got) == {"/or/probe: node", "/or/probe: /or/x/frames",
                                "/or/probe: broken"}
            stream = got["/or/probe: /or/x/frames"]
            assert status_level(stream) == STALE and stream.message == "late"
            assert stream.hardware_id == "Acme cam 42"
            assert {kv.key: kv.value for kv in stream.values} == {"rate_hz": "29.97",
                                                                   "lost": "3"}
            failed = got["/or/probe: broken"]
            assert status_level(failed) == ERROR and "sensor gone" in failed.message
            assert status_level(got["/or/probe: node"]) == OK
            assert got["/or/probe: node"].hardware_id == "/or/probe"
            diag.remove("broken")
            diag.remove("never there")
            assert "broken" not in diag.entries and NODE_ENTRY in diag.entries
        finally:
            node.destroy_node()


def test_the_array_is_stamped_from_the_node_clock_under_sim_time():
    with ros_context() as ctx:
        node = rclpy.create_node("sim", context=ctx, parameter_overrides=[
            Parameter("use_sim_time", value=True)])
        try:
            # No /clock yet: ROS time is 0, where wall time would be decades.
            array = diagnostics_for(node).collect()
            assert Time.from_msg(array.header.stamp).nanoseconds == 0
        finally:
            node.destroy_node()


def test_the_timer_publishes_on_diagnostics():
    with ros_context() as ctx:
        node = rclpy.create_node("reporter", context=ctx)
        listener = rclpy.create_node("listener", context=ctx)
        got: list[DiagnosticArray] = []
        listener.create_subscription(DiagnosticArray, DIAGNOSTICS_TOPIC, got.append, 10)
        diagnostics_for(node, period_s=0.1).add("thing", lambda: Health(WARN, "meh"))
        executor = SingleThreadedExecutor(context=ctx)
        executor.add_node(node)
        executor.add_node(listener)
        try:
            assert spin_until(executor, lambda: len(got) >= 2, 10)
            names = {s.name: status_level(s) for s in got[-1].status}
            assert names == {"/reporter: node": OK, "/reporter: thing": WARN}
        finally:
            executor.shutdown()
            node.destroy_node()
            listener.destroy_node()
