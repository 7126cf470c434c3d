"""adapt_request_to_offers: the subscription matches every publisher, as rosbag2 records."""

import time

import rclpy
from dicom_or_test_common.ros import ros_context
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import String

from dicom_or_ros.qos import adapt_request_to_offers

RELIABLE, BEST_EFFORT = ReliabilityPolicy.RELIABLE, ReliabilityPolicy.BEST_EFFORT
VOLATILE, TRANSIENT = DurabilityPolicy.VOLATILE, DurabilityPolicy.TRANSIENT_LOCAL
BASE = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=7, reliability=RELIABLE,
                  durability=TRANSIENT)


def _offers(ctx, *offers):
    """A reader node and one writer node per (reliability, durability) offer on /t."""
    reader = rclpy.create_node("reader", context=ctx)
    writers = []
    for i, (reliability, durability) in enumerate(offers):
        writer = rclpy.create_node(f"writer{i}", context=ctx)
        writer.create_publisher(String, "/t", QoSProfile(depth=1, reliability=reliability,
                                                         durability=durability))
        writers.append(writer)
    deadline = time.monotonic() + 10.0
    while reader.count_publishers("/t") < len(offers) and time.monotonic() < deadline:
        time.sleep(0.02)  # graph discovery: polled with a timeout, no event to wait on
    assert reader.count_publishers("/t") == len(offers)
    return reader, writers


def _adapt(offers, warnings=None):
    with ros_context() as ctx:
        reader, writers = _offers(ctx, *offers)
        if warnings is not None:
            reader.get_logger().warning = lambda text, **_: warnings.append(text)
        profile = adapt_request_to_offers(reader, "/t", BASE)
        for node in [reader, *writers]:
            node.destroy_node()
        return profile


def test_all_reliable_transient_offers_get_a_reliable_transient_request():
    profile = _adapt([(RELIABLE, TRANSIENT), (RELIABLE, TRANSIENT)])
    assert (profile.reliability, profile.durability) == (RELIABLE, TRANSIENT)
    assert (profile.history, profile.depth) == (BASE.history, BASE.depth)


def test_mixed_offers_fall_back_to_best_effort_volatile_with_a_warning():
    warnings: list[str] = []
    profile = _adapt([(RELIABLE, TRANSIENT), (BEST_EFFORT, VOLATILE)], warnings)
    assert (profile.reliability, profile.durability) == (BEST_EFFORT, VOLATILE)
    assert len(warnings) == 2 and all("/t: 1 of 2 publishers" in w for w in warnings)


def test_best_effort_offer_and_no_publisher():
    profile = _adapt([(BEST_EFFORT, VOLATILE)])
    assert (profile.reliability, profile.durability) == (BEST_EFFORT, VOLATILE)
    profile = _adapt([])
    assert (profile.reliability, profile.durability) == (BEST_EFFORT, VOLATILE)
    # No deadline or liveliness lease is requested: any publisher satisfies the defaults.
    assert profile.deadline.nanoseconds == 0 == profile.liveliness_lease_duration.nanoseconds
