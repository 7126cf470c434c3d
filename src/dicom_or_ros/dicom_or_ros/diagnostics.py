"""Standard health of every node: ``diagnostic_msgs/DiagnosticArray`` on ``/diagnostics``.

A thin stand-in for ``diagnostic_updater`` (there is no wheel of it), in its spirit: a node
registers *entries*, one for itself and one per stream or device it handles, each a
callback (like a ``DiagnosticTask``) that returns a :class:`Health`: level, one-line message
and key-values (rate, lost, queue depth, PACS backlog, last error, ...). One timer per node
(1 Hz by default) runs every callback and publishes one ``DiagnosticArray`` stamped from the
node's clock (so ``use_sim_time`` holds). Each status is named ``"<node fqn>: <entry>"``
and carries the device or stream as ``hardware_id``, which is how the ROS diagnostics
tools (``rqt_robot_monitor``, the aggregator) group and tell them apart.

Levels are diagnostic_msgs' OK / WARN / ERROR / STALE. A callback that raises reports ERROR
with the exception and the node goes on: health reporting must never stop a node.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from rclpy.qos import QoSProfile

from dicom_or_core.model.stream import StreamState

DIAGNOSTICS_TOPIC = "/diagnostics"
DEFAULT_PERIOD_S = 1.0
NODE_ENTRY = "node"
# diagnostic_updater publishes /diagnostics reliable, volatile, keep last: a monitor that
# joins late only needs the next period's array.
_QOS_DEPTH = 10

# DiagnosticStatus levels, as ints (the message field is a ``byte``).
OK = DiagnosticStatus.OK[0]
WARN = DiagnosticStatus.WARN[0]
ERROR = DiagnosticStatus.ERROR[0]
STALE = DiagnosticStatus.STALE[0]
LEVEL_NAMES = {OK: "OK", WARN: "WARN", ERROR: "ERROR", STALE: "STALE"}

# A stream's DeviceStatus state as a diagnostic level: a missed deadline is STALE (the data
# is late, not known bad), a lost device is ERROR; starting and a clean stop are no fault.
_LEVEL_OF_STATE: dict[int, int] = {
    StreamState.STARTING: OK,
    StreamState.LIVE: OK,
    StreamState.STALE: STALE,
    StreamState.SOURCE_LOST: ERROR,
    StreamState.STOPPED: OK,
}


@dataclass
class Health:
    """What one entry reports: level, a one-line message and key-values (any value; sent
    as text)."""

    level: int
    message: str
    values: Mapping[str, Any] = field(default_factory=dict)


HealthCheck = Callable[[], Health]


def level_of_state(state: int) -> int:
    """Diagnostic level of a stream state (``DeviceStatus.state``; unknown states: WARN)."""
    return _LEVEL_OF_STATE.get(int(state), WARN)


def worst(*levels: int) -> int:
    """The most severe of ``levels`` (OK < WARN < ERROR < STALE, as diagnostic_updater
    orders them: no data is worse than a known error)."""
    return max(levels, default=OK)


def value_text(value: Any) -> str:
    """A key-value's value as DiagnosticStatus carries it (text)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


@dataclass
class _Entry:
    check: HealthCheck
    hardware_id: str


class Diagnostics:
    """The ``/diagnostics`` publisher of one node and its registered entries.

    Every node has a ``"node"`` entry from the start (OK, "running", uptime); a node that
    knows more about itself replaces it with ``add(NODE_ENTRY, check)``.
    """

    def __init__(self, node: Node, period_s: float = DEFAULT_PERIOD_S) -> None:
        self._node = node
        self._entries: dict[str, _Entry] = {}
        self._started = time.monotonic()
        self.publisher = node.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC,
                                               QoSProfile(depth=_QOS_DEPTH))
        self.add(NODE_ENTRY, self._running, hardware_id=node.get_fully_qualified_name())
        self.timer = node.create_timer(period_s, self.publish)

    def _running(self) -> Health:
        return Health(OK, "running", {"uptime_s": round(time.monotonic() - self._started, 1)})

    def add(self, entry: str, check: HealthCheck, hardware_id: str = "") -> None:
        """Register (or replace) ``entry``; ``hardware_id`` names the device or stream."""
        self._entries[entry] = _Entry(check, hardware_id or self._node.get_name())

    def remove(self, entry: str) -> None:
        """Forget ``entry`` (a stream that went away); unknown entries are ignored."""
        self._entries.pop(entry, None)

    @property
    def entries(self) -> list[str]:
        """The registered entry names, ``"node"`` among them."""
        return list(self._entries)

    def status_name(self, entry: str) -> str:
        """``<node's full name>: <entry>``, the DiagnosticStatus name: unique across the graph."""
        return f"{self._node.get_fully_qualified_name()}: {entry}"

    def collect(self) -> DiagnosticArray:
        """Run every entry's check and return the array, stamped from the node's clock."""
        array = DiagnosticArray()
        array.header.stamp = self._node.get_clock().now().to_msg()
        for name, entry in list(self._entries.items()):
            try:
                health = entry.check()
            except Exception as exc:  # noqa: BLE001  (a broken check must not stop the node)
                health = Health(ERROR, f"health check failed: {type(exc).__name__}: {exc}")
            status = DiagnosticStatus()
            status.level = bytes([int(health.level)])
            status.name = self.status_name(name)
            status.message = health.message
            status.hardware_id = entry.hardware_id
            status.values = [KeyValue(key=str(k), value=value_text(v))
                             for k, v in health.values.items()]
            array.status.append(status)
        return array

    def publish(self) -> None:
        """Publish one array now (the timer's callback; also for a final report)."""
        if self._node.context.ok():
            self.publisher.publish(self.collect())


_BY_NODE: weakref.WeakKeyDictionary[Node, Diagnostics] = weakref.WeakKeyDictionary()


def diagnostics_for(node: Node, period_s: float = DEFAULT_PERIOD_S) -> Diagnostics:
    """The node's :class:`Diagnostics`, made on first use: nodes register their entries
    through it, and :func:`dicom_or_ros.runtime.run_node` makes sure every node has one."""
    found = _BY_NODE.get(node)
    if found is None:
        found = _BY_NODE[node] = Diagnostics(node, period_s)
    return found


def status_level(status: DiagnosticStatus) -> int:
    """A received DiagnosticStatus's level as an int."""
    level = status.level
    return level[0] if isinstance(level, (bytes, bytearray)) else int(level)
