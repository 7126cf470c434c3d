"""A compact, person-readable view of the OR's streams (ROS-free, so it is unit tested).

Fed with DeviceStatus-like records and the time each was last heard of; renders one line
per stream: state, measured rate against nominal, samples, and age of the last report; then
the recorder's status in one line and every ``/diagnostics`` entry that is not OK.
Messages are read by attribute, so the functions take the ROS messages or any look-alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

STATE_NAMES = {0: "STARTING", 1: "LIVE", 2: "STALE", 3: "SOURCE LOST", 4: "STOPPED"}
LEVEL_NAMES = {0: "OK", 1: "WARN", 2: "ERROR", 3: "STALE"}  # diagnostic_msgs levels


@dataclass
class StreamRow:
    """One stream's line: its last DeviceStatus and when it was heard (``time.monotonic()``)."""

    topic: str
    state: int
    measured_rate_hz: float
    samples: int
    message: str
    last_heard_s: float


def render(rows: list[StreamRow], now_s: float, recorder_line: str = "",
           health: list[str] | None = None) -> list[str]:
    """Lines of the status table, streams sorted by topic, then the recorder's line and
    the ``/diagnostics`` entries that are not OK (:func:`health_lines`)."""
    lines = [f"{'stream':<36} {'state':<12} {'rate Hz':>8} {'samples':>10} {'age s':>6}"]
    for row in sorted(rows, key=lambda r: r.topic):
        state = STATE_NAMES.get(row.state, str(row.state))
        age = max(0.0, now_s - row.last_heard_s)
        line = (f"{row.topic[:36]:<36} {state:<12} {row.measured_rate_hz:>8.1f} "
                f"{row.samples:>10d} {age:>6.1f}")
        if row.message and row.state not in (1,):
            line += f"  {row.message[:60]}"
        lines.append(line)
    if not rows:
        lines.append("(no stream has reported yet)")
    if recorder_line:
        lines.append(f"recorder: {recorder_line}")
    lines.extend(health or [])
    return lines


def summarize_recorder(status: Any) -> str:
    """One line from the recorder's status (a ``dicom_or_msgs/RecorderStatus``): streams,
    samples, losses, instances, PACS, the first stream error."""
    streams = list(status.streams)
    recording = [s for s in streams if s.recording]
    samples = sum(int(s.samples) for s in recording)
    lost = sum(int(s.lost_messages) for s in recording)
    line = (f"recording {len(recording)}/{len(streams)} streams, {samples} samples, "
            f"{lost} lost, instances final {status.instances_final}")
    pacs = status.pacs
    if pacs.enabled:
        line += (f", PACS queue {pacs.queue} stored {pacs.stored} "
                 f"committed {pacs.committed}")
        if pacs.contacted and not pacs.reachable:
            line += " (unreachable)"
    if status.disk_low:
        line += f", DISK LOW {status.disk_free_mib:.0f} MiB"
    errors = [s.last_error or s.refused for s in streams if s.last_error or s.refused]
    if errors:
        line += f", error: {errors[0][:60]}"
    return line


def health_lines(statuses: list[Any]) -> list[str]:
    """One line per ``/diagnostics`` entry that is not OK (``DiagnosticStatus``-like:
    level, name, message), worst first; OK entries are not news."""
    def level(s: Any) -> int:
        raw = s.level
        return raw[0] if isinstance(raw, (bytes, bytearray)) else int(raw)

    bad = sorted((s for s in statuses if level(s) != 0), key=lambda s: (-level(s), s.name))
    return [f"{LEVEL_NAMES.get(level(s), str(level(s))):<5} {s.name}: {s.message[:80]}"
            for s in bad]
