"""Drift-free periodic schedules and reconnect backoff (ROS-free).

A device loop that sleeps ``period`` after each iteration drifts by the iteration's run time
every cycle (a 30 fps loop taking 3 ms per frame produces 27.5 fps). :class:`Pacer` instead
keeps an absolute schedule on the monotonic clock, ``start + k * period``, so over an hour
the k-th tick is still at ``k * period``; a late iteration does not shift later ones.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Pacer:
    """Absolute-deadline schedule ``start + k * period`` on ``time.monotonic``.

    :meth:`wait` blocks until the next tick (or until ``stop`` is set) and returns the tick
    index. When the caller fell behind by more than ``max_late_ticks`` periods, the missed
    ticks are skipped (counted in :attr:`skipped`) instead of bursting to catch up: a video
    driver should drop frames, not emit 10 at once. Callers that must not skip ticks
    (waveform samples are a function of the tick) pass ``max_late_ticks=None``.
    """

    def __init__(self, rate_hz: float, stop: threading.Event | None = None,
                 max_late_ticks: int | None = 1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate_hz <= 0:
            raise ValueError("rate_hz must be > 0")
        self.period = 1.0 / rate_hz
        self.stop = stop or threading.Event()
        self.max_late_ticks = max_late_ticks
        self._clock = clock
        self.start = clock()
        self.tick = 0
        self.skipped = 0

    def deadline(self, tick: int) -> float:
        """Monotonic time of tick ``tick``."""
        return self.start + tick * self.period

    def wait(self) -> int | None:
        """Sleep until the next tick; return its index, or None when ``stop`` was set."""
        self.tick += 1
        now = self._clock()
        if self.max_late_ticks is not None:
            late = int((now - self.deadline(self.tick)) / self.period)
            if late > self.max_late_ticks:
                self.skipped += late
                self.tick += late
        remaining = self.deadline(self.tick) - now
        if remaining > 0 and self.stop.wait(remaining):
            return None
        return None if self.stop.is_set() else self.tick

    def restart(self) -> None:
        """Start a new schedule now (after a source came back)."""
        self.start = self._clock()
        self.tick = 0


class Backoff:
    """Exponential reconnect delays: ``initial``, x2 each failure, capped at ``maximum``;
    :meth:`reset` after a success."""

    def __init__(self, initial_s: float = 0.5, maximum_s: float = 10.0) -> None:
        self.initial_s = initial_s
        self.maximum_s = maximum_s
        self._next = initial_s

    def next_delay(self) -> float:
        """The delay before the next attempt; doubles the one after, up to the maximum."""
        delay = self._next
        self._next = min(self._next * 2, self.maximum_s)
        return delay

    def reset(self) -> None:
        """Back to the initial delay (after a success)."""
        self._next = self.initial_s


class RateMeter:
    """Samples per second over the last reporting window."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._since = clock()
        self._count = 0

    def add(self, count: int = 1) -> None:
        """Count ``count`` more samples in the current window."""
        self._count += count

    def take(self) -> float:
        """The rate since the previous call, and start a new window."""
        now = self._clock()
        elapsed = now - self._since
        rate = self._count / elapsed if elapsed > 0 else 0.0
        self._since, self._count = now, 0
        return rate
