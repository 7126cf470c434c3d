"""Child process of test_interfaces_roundtrip: publishes every dicom_or message type.

Latched types are published once, then the process prints LATCHED and waits, so the
parent can subscribe *late*. Sample types are published in a loop until stdin closes.
"""

import sys
import threading

import rclpy
from message_fill import LATCHED_TYPES, SAMPLE_TYPES, _message_class, fill, topic_of
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy


def main() -> None:
    with rclpy.init():
        node = rclpy.create_node("roundtrip_publisher")
        latched_qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                 durability=DurabilityPolicy.TRANSIENT_LOCAL)
        keep = []
        for type_name in LATCHED_TYPES:
            cls = _message_class(type_name)
            pub = node.create_publisher(cls, topic_of(type_name), latched_qos)
            pub.publish(fill(cls))
            keep.append(pub)
        print("LATCHED", flush=True)
        sample_pubs = [(node.create_publisher(_message_class(t), topic_of(t), 10),
                        fill(_message_class(t))) for t in SAMPLE_TYPES]
        done = threading.Event()
        threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
        node.create_timer(0.05, lambda: [pub.publish(msg) for pub, msg in sample_pubs])
        while not done.is_set():
            rclpy.spin_once(node, timeout_sec=0.1)
        node.destroy_node()


if __name__ == "__main__":
    main()
