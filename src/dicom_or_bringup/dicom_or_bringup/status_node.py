"""or_status: a live, in-place status display of every stream on /or/device_status, the
recorder's status (dicom_or_msgs/RecorderStatus) and every /diagnostics entry that is not
OK."""

from __future__ import annotations

import sys
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.node import Node

from dicom_or_bringup.status_view import StreamRow, health_lines, render, summarize_recorder
from dicom_or_msgs.msg import DeviceStatus, RecorderStatus
from dicom_or_ros.diagnostics import DIAGNOSTICS_TOPIC
from dicom_or_ros.graph import DEVICE_STATUS_TOPIC
from dicom_or_ros.params import load_parameters
from dicom_or_ros.qos import named_qos
from dicom_or_ros.runtime import run_node

# A /diagnostics entry not refreshed for this long is dropped from the display (its node
# stopped; nodes report every second).
HEALTH_MAX_AGE_S = 10.0


class StatusMonitor(Node):
    """Subscribes to device status, the recorder's status and /diagnostics; redraws once
    per period."""

    def __init__(self) -> None:
        super().__init__("or_status")
        # Its parameters and their rules: status_parameters.yaml.
        p = load_parameters(self, "dicom_or_bringup", "status_parameters.yaml")
        period, recorder_topic = p.period_s, p.recorder_status_topic
        self.rows: dict[str, StreamRow] = {}
        self.recorder_line = ""
        self.health: dict[str, tuple[DiagnosticStatus, float]] = {}
        self._drawn = 0
        self._ticks = 0
        self.create_subscription(DeviceStatus, DEVICE_STATUS_TOPIC, self._on_status,
                                 named_qos("status"))
        self.create_subscription(RecorderStatus, recorder_topic, self._on_recorder,
                                 named_qos("status"))
        self.create_subscription(DiagnosticArray, DIAGNOSTICS_TOPIC, self._on_diagnostics, 10)
        self.create_timer(period, self.redraw)

    def _on_status(self, msg: DeviceStatus) -> None:
        self.rows[msg.stream_uuid] = StreamRow(msg.topic, msg.state, msg.measured_rate_hz,
                                               msg.samples_published, msg.message,
                                               time.monotonic())

    def _on_recorder(self, msg: RecorderStatus) -> None:
        self.recorder_line = summarize_recorder(msg)

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        now = time.monotonic()
        for status in msg.status:
            self.health[status.name] = (status, now)

    def redraw(self) -> None:
        """Redraw the table in place on a terminal, or every 10th period into a log file; a
        diagnostics entry not heard for HEALTH_MAX_AGE_S is left out (its node stopped)."""
        now = time.monotonic()
        current = [s for s, heard in self.health.values() if now - heard < HEALTH_MAX_AGE_S]
        lines = render(list(self.rows.values()), now, self.recorder_line,
                       health_lines(current))
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


def main(args: list[str] | None = None) -> None:
    """Run ``or_status`` until Ctrl-C / SIGTERM; a bad parameter: one error line, exit 1."""
    sys.exit(run_node(StatusMonitor, args))
