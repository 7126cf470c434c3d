"""Python ``logging`` into the node's rclpy logger, so it reaches the console and ``/rosout``.

The DICOM side logs through the standard library: pynetdicom, the storage SCU
(``dicom_or.storage_scu``), the worklist client, the bridge's SCP and server, the archive
index. Without a bridge those records reach neither ``/rosout`` nor the node's log file,
and ROS tools never see why a PACS refused an association. :func:`install` puts one
handler on the root logger that hands every record to a child of the node's logger named
after the record's logger (``recorder.dicom_or.storage_scu``), so ``/rosout`` tells the
library apart; :func:`dicom_or_ros.runtime.run_node` installs it once per process.

Levels: the project's own loggers follow the node's log level (``--log-level``); other
libraries (pynetdicom) stay at WARNING, since their INFO is a line per association and
their DEBUG a dump per PDU.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from rclpy.node import Node

# The standard-library loggers of this project (module names and dicom_or.*).
PROJECT_LOGGERS = ("dicom_or", "dicom_or_core", "dicom_or_ros", "dicom_or_bridge",
                   "dicom_or_recorder", "dicom_or_drivers", "dicom_or_bringup")
THIRD_PARTY_LEVEL = logging.WARNING


class RosLogHandler(logging.Handler):
    """Hands each record to ``<node logger>.<record's logger name>`` at its severity.

    Emitted from any thread (pynetdicom's, the storage sender's); rclpy's logging calls
    are thread safe. An exception's type and text are appended on the same line.
    """

    def __init__(self, node: Node) -> None:
        super().__init__()
        self._root = node.get_logger()
        self._children: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _logger(self, name: str) -> Any:
        with self._lock:
            child = self._children.get(name)
            if child is None:
                child = self._root if name == "root" else self._root.get_child(name)
                self._children[name] = child
            return child

    def emit(self, record: logging.LogRecord) -> None:
        """Log ``record`` on the child logger of its name at the matching rclpy severity; never
        raises."""
        try:
            text = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                exc = record.exc_info[1]
                text += f": {type(exc).__name__}: {exc}"
            log = self._logger(record.name)
            if record.levelno >= logging.CRITICAL:
                log.fatal(text)
            elif record.levelno >= logging.ERROR:
                log.error(text)
            elif record.levelno >= logging.WARNING:
                log.warning(text)
            elif record.levelno >= logging.INFO:
                log.info(text)
            else:
                log.debug(text)
        except Exception:  # noqa: BLE001  (logging must never raise into the caller)
            self.handleError(record)


class LoggingBridge:
    """An installed :class:`RosLogHandler`; :meth:`remove` undoes :func:`install`."""

    def __init__(self, node: Node) -> None:
        self.handler = RosLogHandler(node)
        self._levels: dict[str, int] = {}
        # rclpy severities use the standard library's numbers (DEBUG 10 .. FATAL 50).
        level = int(node.get_logger().get_effective_level()) or logging.INFO
        for name in PROJECT_LOGGERS:
            logger = logging.getLogger(name)
            self._levels[name] = logger.level
            logger.setLevel(level)
        root = logging.getLogger()
        self._root_level = root.level
        root.setLevel(max(level, THIRD_PARTY_LEVEL))
        root.addHandler(self.handler)

    def remove(self) -> None:
        """Take the handler off the root logger and give every logger its level from before."""
        root = logging.getLogger()
        root.removeHandler(self.handler)
        root.setLevel(self._root_level)
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)


class LastProblem(logging.Handler):
    """Remembers the last WARNING-or-worse record of one logger tree: what a node reports
    as ``last_error`` in its diagnostics when the problem was logged by a library thread
    (e.g. the bridge's SCP rejecting an association) rather than returned to the node."""

    def __init__(self, logger_name: str, level: int = logging.WARNING) -> None:
        super().__init__(level)
        self.text = ""
        self.count = 0
        self.at = 0.0          # time.monotonic() of the last one; 0 = none yet
        self._logger = logging.getLogger(logger_name)
        self._logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        """Remember ``record`` as the last problem: its text, one more in the count, now."""
        self.text = record.getMessage()
        self.count += 1
        self.at = time.monotonic()

    def age_s(self) -> float | None:
        """Seconds since the last problem, None when there was none."""
        return time.monotonic() - self.at if self.count else None

    def close(self) -> None:
        """Detach from the logger tree: no problem is recorded after this."""
        self._logger.removeHandler(self)
        super().close()


def install(node: Node) -> LoggingBridge:
    """Route every standard-library log record of the process to ``node``'s logger."""
    return LoggingBridge(node)
