"""A compact, person-readable view of the OR's streams (ROS-free, so it is unit tested).

Fed with DeviceStatus-like records and the time each was last heard of; renders one line
per stream: state, measured rate against nominal, samples, and age of the last report.
"""

from __future__ import annotations

import json
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


def summarize_recorder(status_text: str) -> str:
    """One line from the recorder's JSON status: streams, samples, losses, instances, PACS.

    Text that is not the recorder's JSON is shown as its first line.
    """
    try:
        status = json.loads(status_text)
        streams = status["streams"]
    except (ValueError, KeyError, TypeError):
        return status_text.splitlines()[0] if status_text else ""
    recording = [s for s in streams if s.get("recording")]
    samples = sum(int(s.get("samples", 0)) for s in recording)
    lost = sum(int(s.get("lost_messages", 0)) for s in recording)
    instances = status.get("instances", {})
    line = (f"recording {len(recording)}/{len(streams)} streams, {samples} samples, "
            f"{lost} lost, instances final {instances.get('final', 0)}")
    pacs = status.get("pacs") or {}
    if pacs.get("enabled"):
        line += (f", PACS queue {pacs.get('queue', 0)} stored {pacs.get('stored', 0)} "
                 f"committed {pacs.get('committed', 0)}")
    errors = [s.get("last_error") for s in streams if s.get("last_error")]
    if errors:
        line += f", error: {errors[0][:60]}"
    return line
