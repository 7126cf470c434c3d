"""Every stream of a recorded study on one clock: merge, start offset, rate, loop.

The recording's own time base is the session clock every sample was stamped with (PS3.3
C.7.4.2: one Synchronization Frame of Reference, Acquisition DateTime on the host clock). A
replay keeps it: all streams are merged by the time each sample became available (a
waveform chunk when its last sample was acquired), and the sample at recording time ``t``
is published at ``start + (t - window_start) / rate`` on the monotonic clock, so a video
frame and the ECG sample acquired with it leave together at any rate.

* ``start_offset_s`` skips the first seconds of the study (samples acquired before
  ``study start + offset``; a video is still decoded from its first frame, since a
  Transport Stream decodes from a key frame on).
* ``loop`` replays the window ``[study start + offset, study end)`` again and again; each
  pass is shifted by the window's length, acquisition times included, so time never steps
  back for a subscriber (a recorder would otherwise cut a new instance) and a waveform's
  sample index runs on.
* ``rate`` 2.0 plays twice as fast, 0.5 at half speed; acquisition times stay as recorded.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from dicom_or_core.model.errors import DicomOrError
from dicom_or_core.replay.sources import RecordedStudy, Sample

MIN_RATE, MAX_RATE = 0.01, 100.0


@dataclass(frozen=True)
class ReplayOptions:
    """How to play a study (the replay node's parameters of the same names)."""

    rate: float = 1.0
    loop: bool = False
    start_offset_s: float = 0.0
    waveform_chunk_ms: float = 100.0

    def validate(self, study: RecordedStudy | None = None) -> ReplayOptions:
        """Self, or DicomOrError naming the option out of range (the offset must leave
        something of ``study`` to play)."""
        if not MIN_RATE <= self.rate <= MAX_RATE:
            raise DicomOrError("rate", f"must be {MIN_RATE:g}..{MAX_RATE:g}", self.rate)
        if self.start_offset_s < 0:
            raise DicomOrError("start_offset_s", "must be 0 or more", self.start_offset_s)
        if not 1.0 <= self.waveform_chunk_ms <= 10000.0:
            raise DicomOrError("waveform_chunk_ms", "must be 1..10000",
                               self.waveform_chunk_ms)
        if study is not None:
            length_s = (study.end_ns - study.start_ns) / 1e9
            if self.start_offset_s >= length_s:
                raise DicomOrError("start_offset_s", f"the study lasts {length_s:.3f} s",
                                   self.start_offset_s)
        return self


@dataclass(frozen=True)
class Scheduled:
    """One sample of stream ``stream`` (an index into ``study.series``), due ``at_ns`` after
    the replay started (at rate 1)."""

    stream: int
    sample: Sample
    at_ns: int


def _from(index: int, samples: Iterator[Sample], window_start_ns: int
          ) -> Iterator[tuple[int, int, Sample]]:
    for sample in samples:
        if sample.acquisition_ns >= window_start_ns:
            yield sample.due_ns, index, sample


def schedule(study: RecordedStudy, options: ReplayOptions) -> Iterator[Scheduled]:
    """The samples of every stream in the order they are due, lazily (one sample per stream
    read ahead), pass after pass when ``options.loop``."""
    window_start = study.start_ns + round(options.start_offset_s * 1e9)
    span = study.end_ns - window_start
    passes = 0
    while True:
        merged = heapq.merge(*[_from(i, s.samples(options.waveform_chunk_ms), window_start)
                               for i, s in enumerate(study.series)],
                             key=lambda item: (item[0], item[1]))
        shift = passes * span
        played = False
        for due_ns, index, sample in merged:
            played = True
            yield Scheduled(index, sample.shifted(shift) if shift else sample,
                            due_ns - window_start + shift)
        if not (options.loop and played):
            return
        passes += 1


@dataclass
class PlayResult:
    """What a replay did: samples per stream, the latest a sample left after its time (s)."""

    published: list[int] = field(default_factory=list)
    max_late_s: float = 0.0
    stopped: bool = False


def play(study: RecordedStudy, options: ReplayOptions,
         emit: Callable[[int, Sample], None], stop: threading.Event,
         clock: Callable[[], float] = time.monotonic) -> PlayResult:
    """Replay ``study``: call ``emit(stream, sample)`` when each sample is due on ``clock``
    (absolute schedule from the first call, so a slow emit does not shift later samples)
    until the end (no loop) or ``stop`` is set."""
    result = PlayResult(published=[0] * len(study.series))
    start = clock()
    for item in schedule(study, options):
        due = start + item.at_ns / 1e9 / options.rate
        remaining = due - clock()
        if remaining > 0 and stop.wait(remaining):
            result.stopped = True
            return result
        if stop.is_set():
            result.stopped = True
            return result
        result.max_late_s = max(result.max_late_s, clock() - due)
        emit(item.stream, item.sample)
        result.published[item.stream] += 1
    return result
