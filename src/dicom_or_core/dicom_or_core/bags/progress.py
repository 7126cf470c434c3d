"""A one-line progress bar: redrawn in place on a terminal, a line every 10 % elsewhere.

Small on purpose (no dependency): messages done of the total, percent, elapsed time, the
rate of video frames and an estimate of the time left.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

WIDTH = 30
REDRAW_S = 0.2


class ProgressBar:
    """Call with (done, total, frames); :meth:`close` ends the line."""

    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.started = time.monotonic()
        self._last_draw = 0.0
        self._last_tenth = -1
        self._line = ""

    def __call__(self, done: int, total: int, frames: int) -> None:
        """Show ``done`` of ``total`` messages (0: unknown) and the frames so far."""
        now = time.monotonic()
        fraction = done / total if total else 1.0
        if self.tty:
            if now - self._last_draw < REDRAW_S and (not total or done < total):
                return
            self._last_draw = now
            self._line = self.render(done, total, frames, now)
            self.stream.write("\r" + self._line)
            self.stream.flush()
            return
        # Without a total (an export counts as it goes): a line every 5000 messages.
        tenth = int(fraction * 10) if total else done // 5000
        if tenth != self._last_tenth:
            self._last_tenth = tenth
            self.stream.write(self.render(done, total, frames, now) + "\n")
            self.stream.flush()

    def render(self, done: int, total: int, frames: int, now: float) -> str:
        """The bar's text for a state."""
        elapsed = max(now - self.started, 1e-9)
        if not total:
            return (f"{self.label} {done} msgs, {frames / elapsed:6.1f} frames/s, "
                    f"{elapsed:5.1f} s")
        fraction = min(1.0, done / total)
        filled = int(round(fraction * WIDTH))
        left = elapsed * (1 - fraction) / fraction if fraction > 0 else 0.0
        return (f"{self.label} [{'#' * filled}{'.' * (WIDTH - filled)}] {fraction:4.0%} "
                f"{done}/{total} msgs, {frames / elapsed:6.1f} frames/s, "
                f"{elapsed:5.1f} s, ~{left:4.0f} s left")

    def close(self) -> None:
        """End the bar's line on a terminal."""
        if self.tty and self._line:
            self.stream.write("\n")
            self.stream.flush()
