"""A compact, person-readable view of the OR's streams (ROS-free, so it is unit tested).

Fed with DeviceStatus-like records and the time each was last heard of; renders one line
per stream: state, measured rate against nominal, samples, and age of the last report.
"""

from __future__ import annotations

from dataclasses import dataclass

STATE_NAMES = {0: "STARTING", 1: "LIVE", 2: "STALE", 3: "SOURCE LOST", 4: "STOPPED"}


@dataclass
class StreamRow:
    topic: str
    state: int
    measured_rate_hz: float
    samples: int
    message: str
    last_heard_s: float


def render(rows: list[StreamRow], now_s: float, recorder_line: str = "") -> list[str]:
    """Lines of the status table, streams sorted by topic."""
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
    return lines
