"""Drift-free pacing, skip policy, backoff and rate meter, on a fake clock (no sleeping)."""

from __future__ import annotations

import pytest

from dicom_or_drivers.pacing import Backoff, Pacer, RateMeter


class FakeClock:
    """A monotonic clock the test advances; its stop event 'sleeps' by advancing it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeStop:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.set_flag = False

    def wait(self, seconds: float | None = None) -> bool:
        if seconds:
            self.clock.now += seconds
        return self.set_flag

    def is_set(self) -> bool:
        return self.set_flag


def test_schedule_is_absolute_so_work_time_does_not_drift() -> None:
    clock = FakeClock()
    pacer = Pacer(30.0, FakeStop(clock), clock=clock)
    for expected in range(1, 3001):          # 100 s of a 30 fps loop
        assert pacer.wait() == expected
        assert clock.now == pytest.approx(pacer.start + expected / 30.0, abs=1e-9)
        clock.now += 0.4 / 30.0              # each frame takes 40 % of a period
    assert pacer.skipped == 0


def test_late_ticks_are_skipped_not_burst() -> None:
    clock = FakeClock()
    pacer = Pacer(100.0, FakeStop(clock), clock=clock)
    assert pacer.wait() == 1
    clock.now += 0.055                       # a 55 ms stall: 5 ticks late
    tick = pacer.wait()
    assert tick == 6 and pacer.skipped == 4
    # Tick 6 (due at 60 ms) is already due: no sleep; the schedule continues at 70 ms.
    assert clock.now == pytest.approx(pacer.start + 0.065)
    assert pacer.wait() == 7
    assert clock.now == pytest.approx(pacer.start + 0.07)


def test_no_skip_mode_catches_up_every_tick() -> None:
    clock = FakeClock()
    pacer = Pacer(100.0, FakeStop(clock), max_late_ticks=None, clock=clock)
    pacer.wait()
    clock.now += 0.055
    ticks = [pacer.wait() for _ in range(6)]
    assert ticks == [2, 3, 4, 5, 6, 7] and pacer.skipped == 0


def test_stop_ends_the_wait() -> None:
    clock = FakeClock()
    stop = FakeStop(clock)
    pacer = Pacer(10.0, stop, clock=clock)
    stop.set_flag = True
    assert pacer.wait() is None
    with pytest.raises(ValueError):
        Pacer(0.0)


def test_backoff_doubles_caps_and_resets() -> None:
    backoff = Backoff(0.5, 4.0)
    assert [backoff.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    backoff.reset()
    assert backoff.next_delay() == 0.5


def test_rate_meter() -> None:
    clock = FakeClock()
    meter = RateMeter(clock)
    meter.add(30)
    clock.now += 1.5
    assert meter.take() == pytest.approx(20.0)
    clock.now += 1.0
    assert meter.take() == 0.0
