"""Child process of test_params_runtime: a node whose close() must still be able to publish.

``HANG_TEARDOWN=1``: its ``destroy_node`` never returns, as rmw teardown was seen to do.
"""

import os
import sys
import threading

from rclpy.node import Node
from std_msgs.msg import String

from dicom_or_ros.params import declare
from dicom_or_ros.runtime import run_node


class ClosingNode(Node):
    def __init__(self) -> None:
        super().__init__("closing_node")
        declare(self, "rate_hz", 10.0, "a double parameter", check=lambda v: v > 0,
                rule="must be greater than 0")
        self.pub = self.create_publisher(String, "farewell", 10)
        print("READY", flush=True)

    def close(self) -> None:
        self.pub.publish(String(data="bye"))  # raises if the context is already shut down
        print("CLOSED", flush=True)

    def destroy_node(self) -> None:
        if os.environ.get("HANG_TEARDOWN") == "1":
            threading.Event().wait()  # blocks like a middleware teardown that never ends
        super().destroy_node()


if __name__ == "__main__":
    sys.exit(run_node(ClosingNode))
