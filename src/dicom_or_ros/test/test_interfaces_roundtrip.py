"""Two processes exchange every dicom_or message type; every field round-trips, and a
subscriber that joins after the latched context was published still receives it."""

import subprocess
import sys
from pathlib import Path

import pytest
from dicom_or_test_common.ros import isolated_env, ros_context, spin_until
from message_fill import LATCHED_TYPES, SAMPLE_TYPES, _message_class, as_plain, fill, topic_of
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

HERE = Path(__file__).parent


@pytest.fixture
def publisher_process():
    with ros_context() as ctx:
        child = subprocess.Popen([sys.executable, str(HERE / "roundtrip_publisher.py")],
                                 cwd=HERE, env=isolated_env(ctx.domain), text=True,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            yield ctx, child
        finally:
            child.stdin.close()
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()


def test_every_message_type_round_trips_and_latched_reaches_late_joiner(publisher_process):
    ctx, child = publisher_process
    # Wait until the child has published its latched messages, *then* subscribe: the
    # subscriber is a late joiner by construction.
    assert child.stdout.readline().strip() == "LATCHED"
    import rclpy

    node = rclpy.create_node("roundtrip_subscriber", context=ctx)
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    received = {}
    latched_qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
    for type_name in LATCHED_TYPES + SAMPLE_TYPES:
        qos = latched_qos if type_name in LATCHED_TYPES else 10
        node.create_subscription(_message_class(type_name), topic_of(type_name),
                                 lambda msg, t=type_name: received.setdefault(t, msg), qos)
    wanted = set(LATCHED_TYPES + SAMPLE_TYPES)
    assert spin_until(executor, lambda: wanted <= set(received), 20.0), \
        f"missing: {sorted(wanted - set(received))}"
    for type_name in wanted:
        assert as_plain(received[type_name]) == as_plain(fill(_message_class(type_name))), \
            type_name
    executor.shutdown()
    node.destroy_node()


def test_fill_sets_every_field():
    # Guard for the test above: fill() must not leave defaults that would compare equal
    # whether or not the field was transported.
    for type_name in LATCHED_TYPES + SAMPLE_TYPES:
        cls = _message_class(type_name)
        filled, default = as_plain(fill(cls)), as_plain(cls())
        for name in cls.get_fields_and_field_types():
            assert filled[name] != default[name], f"{type_name}.{name}"
