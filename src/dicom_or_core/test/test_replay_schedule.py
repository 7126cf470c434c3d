"""Replay schedule: every stream of a study on one clock, start offset, loop passes shifted
in time (and in waveform sample index), rate, stop; validated options."""

from __future__ import annotations

import threading

import pytest
from test_replay_sources import T0, recording  # noqa: F401 (the module fixture)

from dicom_or_core.model.errors import DicomOrError
from dicom_or_core.replay.schedule import ReplayOptions, play, schedule
from dicom_or_core.replay.sources import WaveformSample, load_study


class FakeClock:
    """Monotonic seconds that move only when the player waits (stop.wait)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeStop(threading.Event):
    def __init__(self, clock: FakeClock, stop_after_s: float | None = None) -> None:
        super().__init__()
        self.clock, self.stop_after_s = clock, stop_after_s
        self.start = clock.now

    def wait(self, timeout: float | None = None) -> bool:
        self.clock.now += timeout or 0.0
        if self.stop_after_s is not None and self.clock.now - self.start > self.stop_after_s:
            self.set()
        return self.is_set()


def test_all_streams_merge_on_one_clock(recording):  # noqa: F811
    study = load_study(recording["root"])
    items = list(schedule(study, ReplayOptions()))
    assert [i.at_ns for i in items] == sorted(i.at_ns for i in items)
    assert items[0].at_ns == 0
    assert {i.stream for i in items} == set(range(len(study.series)))
    for item in items:
        assert item.at_ns == item.sample.due_ns - study.start_ns


def test_play_publishes_each_sample_at_its_time_at_any_rate(recording):  # noqa: F811
    study = load_study(recording["root"])
    for rate in (1.0, 4.0, 0.5):
        clock = FakeClock()
        start = clock.now
        emitted: list = []

        def emit(_stream, sample, clock=clock, start=start, emitted=emitted):
            emitted.append((clock.now - start, sample))

        result = play(study, ReplayOptions(rate=rate), emit, FakeStop(clock), clock)
        assert not result.stopped and result.max_late_s == 0.0
        assert sum(result.published) == len(emitted)
        for at, sample in emitted:
            due = (sample.due_ns - study.start_ns) / 1e9 / rate
            assert at == pytest.approx(due, abs=1e-6)


def test_start_offset_and_stop(recording):  # noqa: F811
    study = load_study(recording["root"])
    items = list(schedule(study, ReplayOptions(start_offset_s=2.0)))
    assert min(i.sample.acquisition_ns for i in items) >= study.start_ns + 2_000_000_000
    assert items[0].at_ns >= 0
    clock = FakeClock()
    result = play(study, ReplayOptions(), lambda *_: None, FakeStop(clock, 1.0), clock)
    assert result.stopped and 0 < sum(result.published)
    full = play(study, ReplayOptions(), lambda *_: None, FakeStop(FakeClock()), FakeClock())
    assert sum(result.published) < sum(full.published)


def test_loop_passes_go_on_in_time_and_sample_index(recording):  # noqa: F811
    study = load_study(recording["root"])
    span = study.end_ns - study.start_ns
    first_pass = sum(1 for _ in schedule(study, ReplayOptions()))
    items = []
    for item in schedule(study, ReplayOptions(loop=True)):
        items.append(item)
        if len(items) == 2 * first_pass + 1:
            break
    second = items[first_pass:2 * first_pass]
    for a, b in zip(items[:first_pass], second, strict=True):
        assert b.sample.acquisition_ns - a.sample.acquisition_ns == span
        assert b.at_ns - a.at_ns == span
        if isinstance(a.sample, WaveformSample):
            assert b.sample.first_sample_index - a.sample.first_sample_index == \
                round(span * a.sample.sampling_frequency_hz / 1e9)
    # Per stream, time never goes back across the pass boundary.
    for stream in range(len(study.series)):
        times = [i.sample.acquisition_ns for i in items if i.stream == stream]
        assert times == sorted(times)


def test_options_are_validated(recording):  # noqa: F811
    study = load_study(recording["root"])
    with pytest.raises(DicomOrError, match="rate"):
        ReplayOptions(rate=0.0).validate()
    with pytest.raises(DicomOrError, match="start_offset_s"):
        ReplayOptions(start_offset_s=-1).validate()
    with pytest.raises(DicomOrError, match="start_offset_s: the study lasts"):
        ReplayOptions(start_offset_s=3600).validate(study)
    assert ReplayOptions(rate=2.0, start_offset_s=1.0).validate(study).rate == 2.0
    assert study.start_ns == T0  # the first video frame
