"""Pose sources of the tracker driver, ROS-free: a simulated tracker, an OpenIGTLink client.

``source`` parameter values:

* ``simulator``: :class:`dicom_or_core.sim.tracker.TrackerSimulator`, N tools (``tools`` or
  ``tool_count`` defaults) paced at ``rate_hz`` on an absolute schedule;
* ``igtl``: an OpenIGTLink client (PLUS Server, 3D Slicer) republishing the TRANSFORM
  messages of ``igtl.device_names``, translations scaled by ``igtl.unit_scale`` to metres.

Every source delivers :class:`~dicom_or_core.sim.tracker.ToolPose` lists with their
acquisition time, so the node only stamps and publishes. A source that cannot deliver
raises :class:`SourceLost` (the node reports SOURCE_LOST and runs it again after its
backoff); a source that can never work (no device name) raises :class:`DicomOrError` at
configuration time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from dicom_or_core.model.errors import DicomOrError
from dicom_or_core.sim.tracker import ToolPose, TrackerSimulator, default_tools, parse_tools
from dicom_or_drivers.igtl import (
    IgtlClient,
    IgtlConnectionError,
    IgtlTransform,
    matrix_to_quaternion,
)
from dicom_or_drivers.pacing import Pacer

SOURCES = ("simulator", "igtl")
# Poses and their acquisition time (ns, host clock) -> published.
Deliver = Callable[[list[ToolPose], int], None]
_log = logging.getLogger("dicom_or_drivers.tracker")


class SourceLost(RuntimeError):
    """The tracker stopped delivering (server unreachable or closed the connection)."""


class TrackerSource:
    """Interface: ``tools`` ((id, kind) pairs), ``model_name`` (the Equipment Module's
    Manufacturer's Model Name) and ``run(deliver, stop, active)``."""

    model_name = "Tracker"

    def __init__(self, tools: list[tuple[str, str]]) -> None:
        self.tools = tools

    def run(self, deliver: Deliver, stop: threading.Event,
            active: Callable[[], bool] = lambda: True) -> None:
        """Deliver poses until ``stop`` is set; skip the work while not ``active()`` (no
        Series runs). SourceLost when the device is gone."""
        raise NotImplementedError


class SimulatedTracker(TrackerSource):
    """Simulated optical tracker: every tool's pose at every tick of ``rate_hz``."""

    model_name = "Simulated optical tracker"

    def __init__(self, tools: list[tuple[str, str]], rate_hz: float, seed: int = 0) -> None:
        super().__init__(tools)
        self.rate_hz = rate_hz
        self.simulator = TrackerSimulator(tools, seed)

    def run(self, deliver: Deliver, stop: threading.Event,
            active: Callable[[], bool] = lambda: True) -> None:
        """Poses on an absolute schedule. A tracker delivers every tick: after a stall of up
        to 50 ms the missed ticks are caught up rather than left as holes in the pose
        timeline (longer stalls are skipped, not burst)."""
        pacer = Pacer(self.rate_hz, stop, max_late_ticks=max(1, int(self.rate_hz / 20)))
        start = pacer.start
        while (tick := pacer.wait()) is not None:
            if not active():
                continue
            acquisition_ns = time.time_ns()
            deliver(self.simulator.poses(pacer.deadline(tick) - start), acquisition_ns)


class IgtlTracker(TrackerSource):
    """OpenIGTLink TRANSFORM client: one pose per received TRANSFORM of a listed device."""

    model_name = "OpenIGTLink tracker"

    def __init__(self, host: str, port: int, device_names: list[str],
                 unit_scale: float) -> None:
        if not device_names:
            raise DicomOrError("igtl.device_names", "needs at least one device name (the "
                               "stream descriptor lists its tools)")
        super().__init__([(name, "igtl") for name in device_names])
        self.host, self.port, self.unit_scale = host, port, unit_scale
        self.device_names = list(device_names)

    def pose(self, transform: IgtlTransform, now_ns: int) -> tuple[ToolPose, int]:
        """A TRANSFORM as a pose in metres and its acquisition time. The sender's time stamp
        is the acquisition time when its clock agrees with ours (same host or NTP, within
        1 s); otherwise the reception time is the better estimate. OpenIGTLink TRANSFORM has
        no visibility or error field: a received transform is a valid measurement."""
        sent = int(transform.timestamp_s * 1e9)
        acquisition_ns = sent if abs(sent - now_ns) < 1_000_000_000 else now_ns
        matrix = transform.matrix
        x, y, z = (float(v) * self.unit_scale for v in matrix[:3, 3])
        return ToolPose(transform.device_name, (x, y, z), matrix_to_quaternion(matrix[:3, :3]),
                        True, 1.0), acquisition_ns

    def run(self, deliver: Deliver, stop: threading.Event,
            active: Callable[[], bool] = lambda: True) -> None:
        """Connect and republish until ``stop``; SourceLost when the server is unreachable
        or the connection ends."""
        def on_transform(transform: IgtlTransform) -> None:
            if active():
                pose, acquisition_ns = self.pose(transform, time.time_ns())
                deliver([pose], acquisition_ns)

        client = IgtlClient(self.host, self.port, self.device_names)
        try:
            client.connect()
            _log.info(f"connected to OpenIGTLink server {self.host}:{self.port}")
            client.run(on_transform, stop)
        except IgtlConnectionError as exc:
            if not stop.is_set():
                raise SourceLost(str(exc)) from None
        finally:
            client.close()


def make_tracker_source(params: Any) -> TrackerSource:
    """The source the node's parameters (tracker_parameters.yaml) name."""
    if params.source == "simulator":
        tools = parse_tools(list(params.tools)) if params.tools \
            else default_tools(params.tool_count)
        return SimulatedTracker(tools, params.rate_hz, params.seed)
    return IgtlTracker(params.igtl.host, params.igtl.port, list(params.igtl.device_names),
                       params.igtl.unit_scale)
