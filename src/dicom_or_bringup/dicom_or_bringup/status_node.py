"""or_status: a live, in-place status display of every stream on /or/device_status."""

from __future__ import annotations

import sys
import time

from rclpy.node import Node
from std_msgs.msg import String

from dicom_or_bringup.status_view import StreamRow, render, summarize_recorder
from dicom_or_msgs.msg import DeviceStatus
from dicom_or_ros.graph import DEVICE_STATUS_TOPIC
from dicom_or_ros.params import declare
from dicom_or_ros.qos import named_qos
from dicom_or_ros.runtime import run_node


class StatusMonitor(Node):
    """Subscribes to device status and the recorder's status; redraws once per period."""

    def __init__(self) -> None:
        super().__init__("or_status")
        period = declare(self, "period_s", 1.0, "seconds between redraws",
                         check=lambda v: v > 0, rule="must be greater than 0")
        recorder_topic = declare(self, "recorder_status_topic", "/or/recorder/status",
                                 "std_msgs/String topic with the recorder's one-line status")
        self.rows: dict[str, StreamRow] = {}
        self.recorder_line = ""
        self._drawn = 0
        self._ticks = 0
        self.create_subscription(DeviceStatus, DEVICE_STATUS_TOPIC, self._on_status,
                                 named_qos("status"))
        self.create_subscription(String, recorder_topic, self._on_recorder, 10)
        self.create_timer(period, self.redraw)

    def _on_status(self, msg: DeviceStatus) -> None:
        self.rows[msg.stream_uuid] = StreamRow(msg.topic, msg.state, msg.measured_rate_hz,
                                               msg.samples_published, msg.message,
                                               time.monotonic())

    def _on_recorder(self, msg: String) -> None:
        self.recorder_line = summarize_recorder(msg.data)

    def redraw(self) -> None:
        lines = render(list(self.rows.values()), time.monotonic(), self.recorder_line)
        out = sys.stdout
        if out.isatty() and self._drawn:
            out.write(f"\x1b[{self._drawn}F\x1b[J")  # back to the table's first line
        elif not out.isatty():
            # A log file gets a table every 10 periods, not a wall of repeats.
            self._ticks += 1
            if (self._ticks - 1) % 10:
                return
        out.write("\n".join(lines) + "\n")
        out.flush()
        self._drawn = len(lines)


def main() -> None:
    sys.exit(run_node(StatusMonitor))
