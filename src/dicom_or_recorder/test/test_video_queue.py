"""The video encoder queue (ROS-free): frames are taken without waiting for the encoder, a slow
encoder loses nothing while the queue has room, an overflow is counted and kept as a gap."""

from __future__ import annotations

import threading

import numpy as np
import pydicom
import pytest
from dicom_or_test_common.examples import example_descriptor, now_ns, synthetic_rgb
from pydicom.encaps import generate_fragments

from dicom_or_core.archive.spool import Spool
from dicom_or_core.iod.codec import PacketEncoder, decode_frames
from dicom_or_core.iod.video import frame_offsets_ms
from dicom_or_core.model.errors import DicomOrError
from dicom_or_recorder.segments import RecorderOptions, VideoRecorder
from dicom_or_recorder.video_queue import VideoEncoderQueue

PERIOD = round(1e9 / 30)
WAIT_S = 30.0  # generous bound on every wait: a broken worker fails the test, never hangs it


class GatedEncoder(PacketEncoder):
    """A PacketEncoder that cannot encode until its gate opens: an encoder slower than any
    frame rate, under the test's control (no sleeps, no timing assumptions)."""

    gate = threading.Event()
    entered = threading.Event()   # a frame reached the encoder
    fail_on: set[int] = set()     # encode() calls (0-based) that raise
    calls = 0

    def encode(self, image: np.ndarray, pts: int):
        cls = type(self)
        cls.entered.set()
        assert cls.gate.wait(WAIT_S), "gate never opened"
        call, cls.calls = cls.calls, cls.calls + 1
        if call in cls.fail_on:
            raise ValueError(f"encoder failed on call {call}")
        return super().encode(image, pts)


@pytest.fixture()
def gated():
    class Encoder(GatedEncoder):
        gate = threading.Event()
        entered = threading.Event()
        fail_on: set[int] = set()
        calls = 0
    yield Encoder
    Encoder.gate.set()  # never leave a worker blocked


def make(tmp_path, encoder, capacity, errors=None):
    spool = Spool(tmp_path)
    recorder = VideoRecorder(example_descriptor("video"), spool, RecorderOptions(),
                             encoder_factory=encoder)
    queue = VideoEncoderQueue(recorder, capacity,
                              on_error=None if errors is None else errors.append)
    return spool, recorder, queue


def frame(i):
    return synthetic_rgb(240, 320, i)


def only_instance(spool, uids):
    [uid] = uids
    return pydicom.dcmread(spool.absolute(spool.get(uid)))


def frame_slots(ds):
    """Each frame's time in frame periods after the first frame (which every test keeps),
    from the Cine Module and from the decoded stream's PTS."""
    offsets = [off * 1e6 / PERIOD for off in frame_offsets_ms(ds)]
    decoded = decode_frames(b"".join(generate_fragments(ds.PixelData)))
    pts = [t * 1e9 / PERIOD for t, _ in decoded]
    return offsets, pts


def test_slow_encoder_loses_no_frame_while_the_queue_has_room(tmp_path, gated):
    spool, recorder, queue = make(tmp_path, gated, capacity=10)
    t0 = now_ns()
    # The encoder is blocked: every offer still returns at once, nothing is acknowledged.
    assert all(queue.offer(frame(i), t0 + i * PERIOD, i) for i in range(10))
    assert gated.entered.wait(WAIT_S)
    assert queue.queued == 10 and recorder.stats.acknowledged == 0
    assert recorder.stats.extra["dropped_backpressure"] == 0
    gated.gate.set()
    uids = queue.close()   # encodes every queued frame, then finalises
    assert recorder.stats.acknowledged == 10 and recorder.stats.samples == 10
    assert recorder.stats.lost_messages == 0 and queue.dropped == 0
    ds = only_instance(spool, uids)
    assert int(ds.NumberOfFrames) == 10
    offsets, pts = frame_slots(ds)
    assert offsets == pytest.approx(range(10), abs=1e-3)
    assert pts == pytest.approx(range(10), abs=0.03)


def test_overflow_is_counted_and_kept_as_a_gap(tmp_path, gated):
    spool, recorder, queue = make(tmp_path, gated, capacity=5)
    t0 = now_ns()
    assert queue.offer(frame(0), t0, 0)
    assert gated.entered.wait(WAIT_S)            # frame 0 is inside the (blocked) encoder
    taken = [queue.offer(frame(i), t0 + i * PERIOD, i) for i in range(1, 13)]
    assert taken == [True] * 5 + [False] * 7     # 5 fit the queue, 6..12 overflow
    assert queue.dropped == 7 and recorder.stats.extra["dropped_backpressure"] == 7
    gated.gate.set()
    assert queue.drain(WAIT_S)
    for i in range(13, 20):  # one at a time: a busy machine must not make these overflow
        assert queue.offer(frame(i), t0 + i * PERIOD, i)
        assert queue.drain(WAIT_S)
    uids = queue.close()
    # Dropped on purpose and counted as such, not as lost on the way.
    assert recorder.stats.lost_messages == 0 and recorder.stats.samples == 13
    ds = only_instance(spool, uids)
    assert int(ds.NumberOfFrames) == 13
    kept = [*range(0, 6), *range(13, 20)]        # the drop is a gap: later frames not shifted
    offsets, pts = frame_slots(ds)
    assert offsets == pytest.approx(kept, abs=1e-3)
    assert pts == pytest.approx(kept, abs=0.03)


def test_a_frame_lost_on_the_way_is_still_a_lost_message_next_to_drops(tmp_path, gated):
    spool, recorder, queue = make(tmp_path, gated, capacity=1)
    t0 = now_ns()
    queue.offer(frame(0), t0, 0)
    assert gated.entered.wait(WAIT_S)
    assert queue.offer(frame(1), t0 + PERIOD, 1)
    assert not queue.offer(frame(2), t0 + 2 * PERIOD, 2)   # dropped: queue full
    gated.gate.set()
    assert queue.drain(WAIT_S)
    assert queue.offer(frame(4), t0 + 4 * PERIOD, 4)       # sequence 3 never arrived
    queue.close()
    assert queue.dropped == 1 and recorder.stats.lost_messages == 1


def test_a_failing_frame_is_counted_and_the_worker_goes_on(tmp_path, gated):
    errors: list[Exception] = []
    spool, recorder, queue = make(tmp_path, gated, capacity=20, errors=errors)
    gated.fail_on = {3}
    gated.gate.set()
    t0 = now_ns()
    for i in range(8):
        assert queue.offer(frame(i), t0 + i * PERIOD, i)
    uids = queue.close()
    assert queue.errors == 1 and len(errors) == 1 and "call 3" in str(errors[0])
    assert "call 3" in recorder.stats.last_error
    ds = only_instance(spool, uids)
    assert int(ds.NumberOfFrames) == 7
    offsets, pts = frame_slots(ds)
    kept = [0, 1, 2, 4, 5, 6, 7]                  # the failed frame's stamp is not reused
    assert offsets == pytest.approx(kept, abs=1e-3)
    assert pts == pytest.approx(kept, abs=0.03)


def test_snapshot_takes_the_newest_frame_even_while_it_is_queued(tmp_path, gated):
    spool, recorder, queue = make(tmp_path, gated, capacity=5)
    t0 = now_ns()
    with pytest.raises(DicomOrError, match="no frame"):
        queue.snapshot()
    queue.note_latest(frame(0), t0)                 # not recording: kept for SNAPSHOT only
    assert queue.queued == 0
    queue.offer(frame(1), t0 + PERIOD, 1)
    assert gated.entered.wait(WAIT_S)
    queue.offer(frame(2), t0 + 2 * PERIOD, 2)
    gated.gate.set()
    snap = only_instance(spool, queue.snapshot())
    assert np.array_equal(snap.pixel_array, frame(2))
    queue.close()


def test_bad_frames_and_capacity_are_refused(tmp_path, gated):
    with pytest.raises(DicomOrError, match="video_queue_frames"):
        make(tmp_path, gated, capacity=0)
    spool, recorder, queue = make(tmp_path, gated, capacity=2)
    with pytest.raises(DicomOrError, match="shape"):
        queue.offer(np.zeros((10, 10, 3), np.uint8), now_ns(), 0)
    assert queue.queued == 0
    gated.gate.set()
    assert queue.close() == []                      # nothing recorded, nothing written
    with pytest.raises(DicomOrError, match="closed"):
        queue.offer(frame(0), now_ns(), 1)
