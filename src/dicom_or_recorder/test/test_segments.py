"""ROS-free stream recorders: segmenting, gap accounting, journals and crash recovery."""

from __future__ import annotations

import time

import numpy as np
import pydicom
import pytest
from dicom_or_test_common.examples import (
    example_descriptor,
    now_ns,
    synthetic_rgb,
    synthetic_waveform,
)
from dicom_or_test_common.peers import dciodvfy, have
from pydicom.encaps import generate_fragments

from dicom_or_core.archive.spool import FINAL, Spool
from dicom_or_core.iod.codec import decode_frames
from dicom_or_core.iod.pose import read_pose_sr
from dicom_or_core.iod.video import frame_offsets_ms
from dicom_or_core.iod.waveform import read_samples
from dicom_or_core.model.errors import DicomOrError
from dicom_or_recorder.segments import (
    PoseRecorder,
    RecorderOptions,
    VideoRecorder,
    WaveformRecorder,
    finalise_journal,
)

PERIOD = round(1e9 / 30)


def files(spool, uids):
    return [pydicom.dcmread(spool.absolute(spool.get(u))) for u in uids]


def feed_video(rec, n, t0, skip=()):
    for i in range(n):
        if i in skip:
            continue
        rec.feed(synthetic_rgb(240, 320, i), t0 + i * PERIOD, i)


def test_video_is_cut_into_instances_with_gaps_kept(tmp_path):
    spool = Spool(tmp_path)
    rec = VideoRecorder(example_descriptor("video"), spool, RecorderOptions(max_segment_s=1.0))
    t0 = now_ns()
    done = []
    for i in range(45):
        if i == 12:
            continue  # lost on the way: sequence 12 never arrives
        done += rec.feed(synthetic_rgb(240, 320, i), t0 + i * PERIOD, i)
    assert len(done) == 1                   # the 1 s boundary closed the first instance
    done += rec.stop()
    assert rec.stats.lost_messages == 1 and rec.stats.samples == 44
    first, second = files(spool, done)
    assert first.SeriesInstanceUID == second.SeriesInstanceUID
    assert (first.InstanceNumber, second.InstanceNumber) == (1, 2)
    assert int(first.NumberOfFrames) + int(second.NumberOfFrames) == 44
    # The lost frame keeps its slot in the first instance's timeline.
    offsets = frame_offsets_ms(first)
    assert offsets[12] == pytest.approx(13 * PERIOD / 1e6, abs=1e-3)
    decoded = decode_frames(b"".join(generate_fragments(first.PixelData)))
    assert len(decoded) == int(first.NumberOfFrames)
    assert decoded[12][0] * 1000 == pytest.approx(13 * PERIOD / 1e6, abs=1.0)
    if have("dciodvfy"):
        for uid in done:
            assert dciodvfy(spool.absolute(spool.get(uid)))[0] == 0


def test_time_orders_frames_and_the_sequence_only_counts_losses(tmp_path):
    spool = Spool(tmp_path)
    rec = VideoRecorder(example_descriptor("video"), spool, RecorderOptions())
    t0 = now_ns() - 10**9
    rec.feed(synthetic_rgb(240, 320, 0), t0, 5)
    rec.feed(synthetic_rgb(240, 320, 1), t0 + PERIOD, 4)    # counter restarted, time goes on
    rec.feed(synthetic_rgb(240, 320, 1), t0 + PERIOD, 4)    # the same message again
    assert rec.stats.extra["sequence_resets"] == 1 and rec.stats.out_of_order == 1
    assert rec.stats.samples == 2
    with pytest.raises(DicomOrError, match="shape"):
        rec.feed(np.zeros((10, 10, 3), np.uint8), t0 + 2 * PERIOD, 7)
    # The next message stamped before the previous one: the clock stepped back. The open
    # instance closes consistent and the frame starts the next one.
    done = rec.feed(synthetic_rgb(240, 320, 2), t0 - 5 * PERIOD, 5)
    assert rec.stats.extra["clock_steps"] == 1 and len(done) == 1
    done += rec.stop()
    assert [int(ds.NumberOfFrames) for ds in files(spool, done)] == [2, 1]


def test_one_wild_sample_never_stops_a_stream(tmp_path):
    """A sequence of 2^63 or a frame stamped a day ahead once made every later frame look
    out of order; now the wild one is refused or taken for what it is, and recording
    goes on."""
    spool = Spool(tmp_path)
    rec = VideoRecorder(example_descriptor("video"), spool, RecorderOptions())
    t0 = now_ns() - 10**9
    rec.feed(synthetic_rgb(240, 320, 0), t0, 0)
    rec.feed(synthetic_rgb(240, 320, 1), t0 + PERIOD, 2**63)       # wild sequence
    with pytest.raises(DicomOrError, match="ahead of this host's clock"):
        rec.feed(synthetic_rgb(240, 320, 2), t0 + 86_400 * 10**9, 2)  # a day ahead
    with pytest.raises(DicomOrError, match="before 2000"):
        rec.feed(synthetic_rgb(240, 320, 2), 10**9, 2)
    for i in range(2, 12):
        rec.feed(synthetic_rgb(240, 320, i), t0 + i * PERIOD, i)
    assert rec.stats.samples == 12 and rec.stats.lost_messages == 0
    assert rec.stats.extra["sequence_jumps"] == 1
    [uid] = rec.stop()
    assert int(files(spool, [uid])[0].NumberOfFrames) == 12


def test_hostile_waveform_indices_and_pose_values_are_refused_at_the_door(tmp_path):
    spool = Spool(tmp_path)
    ecg = WaveformRecorder(example_descriptor("ecg"), spool, RecorderOptions())
    data = synthetic_waveform(500, 3)
    t0 = now_ns() - 5 * 10**9
    chunk_ns = 100_000_000
    ecg.feed(data[:50], t0, 0, 0)
    with pytest.raises(DicomOrError, match="2\\^53"):
        ecg.feed(data[50:100], t0 + chunk_ns, 2**62, 1)
    with pytest.raises(DicomOrError, match="more than its time allows"):
        ecg.feed(data[50:100], t0 + chunk_ns, 10**9, 1)
    for k in range(1, 5):
        ecg.feed(data[k * 50:(k + 1) * 50], t0 + k * chunk_ns, k * 50, k + 1)
    assert ecg.stats.extra.get("lost_samples", 0) == 0
    # The device restarts its sample count while time goes on: a new instance, not a loss.
    ecg.feed(data[250:300], t0 + 5 * chunk_ns, 0, 6)
    assert ecg.stats.extra["index_resets"] == 1
    ecg.stop()
    waves = sorted(files(spool, _series_uids(spool, ecg)), key=lambda ds: int(ds.InstanceNumber))
    assert [len(read_samples(ds)) for ds in waves] == [250, 50]
    assert np.array_equal(read_samples(waves[0]), data[:250])
    assert str(waves[0].AcquisitionDateTime)[:4] == str(waves[1].AcquisitionDateTime)[:4]

    pose = PoseRecorder(example_descriptor("pose"), spool, RecorderOptions())
    tool = pose.descriptor.tool_ids[0]
    with pytest.raises(DicomOrError, match="position"):
        pose.feed(tool, t0, (1e39, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0), True, 0)
    with pytest.raises(DicomOrError, match="orientation"):
        pose.feed(tool, t0, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 0.0), True, 0)
    pose.feed(tool, t0, (0.1, 0.2, 0.3), (0.0, 0.0, 0.0, 1.0), True, 0)
    [uid] = pose.stop()
    stamps, positions, _ = read_pose_sr(files(spool, [uid])[0])[tool]
    assert len(stamps) == 1 and np.allclose(positions, [[0.1, 0.2, 0.3]])


def _series_uids(spool, recorder):
    return [row.sop_instance_uid for row in spool.rows()
            if row.series_instance_uid == recorder.descriptor.series_instance_uid]


def test_lossless_video_and_snapshot(tmp_path):
    spool = Spool(tmp_path)
    d = example_descriptor("video")
    rec = VideoRecorder(d, spool, RecorderOptions(video_mode="lossless"))
    t0 = now_ns()
    feed_video(rec, 5, t0)
    [snap] = rec.snapshot()
    [uid] = rec.stop()
    ds, snapshot = files(spool, [uid, snap])
    assert np.array_equal(ds.pixel_array[4], synthetic_rgb(240, 320, 4))
    assert np.array_equal(snapshot.pixel_array, synthetic_rgb(240, 320, 4))
    assert snapshot.InstanceNumber != ds.InstanceNumber


def test_mpeg2_fills_dropped_slots_on_its_fixed_grid(tmp_path):
    spool = Spool(tmp_path)
    rec = VideoRecorder(example_descriptor("video"), spool, RecorderOptions(video_mode="mpeg2"))
    feed_video(rec, 10, now_ns(), skip=(4, 5))
    [uid] = rec.stop()
    [ds] = files(spool, [uid])
    assert int(ds.NumberOfFrames) == 10 and rec.stats.extra["repeated_frames"] == 2
    assert len(decode_frames(b"".join(generate_fragments(ds.PixelData)))) == 10


def test_waveform_gap_starts_a_new_instance_and_samples_are_exact(tmp_path):
    spool = Spool(tmp_path)
    d = example_descriptor("ecg")
    rec = WaveformRecorder(d, spool, RecorderOptions())
    t0 = now_ns()
    data = synthetic_waveform(1000, 3)
    chunks = [(i * 50, data[i * 50:(i + 1) * 50]) for i in range(20)]
    done = []
    for seq, (index, chunk) in enumerate(chunks):
        if seq == 7:
            continue
        done += rec.feed(chunk, t0 + int(index * 2e6), index, seq)
    done += rec.stop()
    assert rec.stats.lost_messages == 1 and rec.stats.extra["lost_samples"] == 50
    a, b = files(spool, done)
    assert np.array_equal(read_samples(a), data[:350])
    assert np.array_equal(read_samples(b), data[400:])
    assert a.AcquisitionDateTime < b.AcquisitionDateTime


def test_waveform_outside_its_iod_is_refused_up_front(tmp_path):
    with pytest.raises(DicomOrError, match="sampling_frequency_hz"):
        WaveformRecorder(example_descriptor("hd", sampling_frequency_hz=1000.0),
                         Spool(tmp_path), RecorderOptions())


def test_pose_occluded_samples_are_counted_and_poses_round_trip(tmp_path):
    spool = Spool(tmp_path)
    d = example_descriptor("pose")
    rec = PoseRecorder(d, spool, RecorderOptions())
    t0 = now_ns()
    for i in range(30):
        for j, tool in enumerate(d.tool_ids):
            rec.feed(tool, t0 + i * 10_000_000, (0.1 * i, 0.2, -0.3 * j), (0, 0, 0, 1),
                     visible=not (tool == "pointer" and 10 <= i < 15), sequence=2 * i + j)
    [uid] = rec.stop()
    assert rec.stats.occluded == 5 and rec.stats.samples == 55
    poses = read_pose_sr(files(spool, [uid])[0])
    stamps, positions, _ = poses["pointer"]
    visible = [t0 + i * 10_000_000 for i in range(30) if not 10 <= i < 15]
    # Stamps come back to the microsecond, with the occlusion gap.
    assert np.array_equal(stamps, np.array(visible, np.int64) // 1000 * 1000)
    assert positions[-1] == pytest.approx([2.9, 0.2, 0.0], abs=1e-6)
    with pytest.raises(DicomOrError, match="tool_id"):
        rec.feed("unknown", t0 + 10**9, (0, 0, 0), (0, 0, 0, 1), True, 100)


def test_a_killed_recorder_loses_nothing_it_acknowledged(tmp_path):
    """In-process version of the SIGKILL test: the recorder object vanishes without
    closing anything; a new spool finalises the journals."""
    d_video, d_ecg = example_descriptor("video"), example_descriptor("ecg")
    spool = Spool(tmp_path)
    video = VideoRecorder(d_video, spool, RecorderOptions())
    ecg = WaveformRecorder(d_ecg, spool, RecorderOptions())
    t0 = now_ns()
    feed_video(video, 20, t0)
    data = synthetic_waveform(500, 3)
    for i in range(10):
        ecg.feed(data[i * 50:(i + 1) * 50], t0 + i * 100_000_000, i * 50, i)
    acknowledged = (video.stats.acknowledged, ecg.stats.acknowledged)
    del video, ecg  # no stop(), no close(): what SIGKILL leaves
    spool = Spool(tmp_path)
    report = spool.recover(finalise_journal)
    assert report.journals_finalised == 2 and acknowledged == (20, 10)
    by_modality = {ds.Modality: ds for ds in files(spool, report.sop_instance_uids)}
    assert int(by_modality["ES"].NumberOfFrames) == 20
    assert np.array_equal(read_samples(by_modality["ECG"]), data)
    assert spool.counts()[FINAL] == 2 and not list(tmp_path.rglob("*.partial"))


def test_messages_skipped_while_stopped_are_not_counted_as_lost(tmp_path):
    spool = Spool(tmp_path)
    rec = WaveformRecorder(example_descriptor("ecg"), spool, RecorderOptions())
    t0 = now_ns()
    data = synthetic_waveform(1000, 3)
    rec.feed(data[:50], t0, 0, 0)
    [first] = rec.stop()
    rec.feed(data[500:550], t0 + 10**9, 500, 10)   # recording again, 9 messages later
    rec.feed(data[600:650], t0 + 12 * 10**8, 600, 12)  # one really lost
    [second] = rec.stop()
    assert rec.stats.lost_messages == 1
    assert spool.get(first).state == spool.get(second).state == "final"


def test_video_muxed_while_recording_equals_what_recovery_rebuilds(tmp_path):
    """The Transport Stream muxed as frames are encoded (what a stop copies into Pixel Data)
    is byte for byte what crash recovery muxes again from the journal alone."""
    spool = Spool(tmp_path / "live")
    rec = VideoRecorder(example_descriptor("video"), spool, RecorderOptions())
    t0 = now_ns()
    feed_video(rec, 20, t0)
    journal = rec.journal
    rec._before_close(journal)     # what close_segment does, without finalising
    journal.close()
    stamps = rec._closed_stamps()
    live = finalise_journal(journal, stamps)
    (journal.directory / "stream.ts").unlink()   # a crash: only the journal is left
    recovered = finalise_journal(journal, None)
    assert live.dataset.NumberOfFrames == recovered.dataset.NumberOfFrames == 20
    paths = []
    for name, instance in (("a", live), ("b", recovered)):
        path = tmp_path / f"{name}.dcm"
        with open(path, "wb") as fp:
            instance.dataset.save_as(fp, enforce_file_format=True)
            instance.pixel_data(fp)
        paths.append(path)
    a, b = (pydicom.dcmread(p) for p in paths)
    assert a.PixelData == b.PixelData
    assert len(decode_frames(b"".join(generate_fragments(a.PixelData)))) == 20
    if have("dciodvfy"):
        assert dciodvfy(paths[0])[0] == 0


def test_segments_cut_by_size_keep_every_frame_once(tmp_path):
    spool = Spool(tmp_path)
    rec = VideoRecorder(example_descriptor("video"), spool,
                        RecorderOptions(video_mode="lossless", max_segment_bytes=1 << 20))
    t0 = now_ns()
    done = []
    for i in range(12):  # 230 kB frames: 4 or 5 per 1 MiB segment
        done += rec.feed(synthetic_rgb(240, 320, i), t0 + i * PERIOD, i)
    done += rec.stop()
    instances = files(spool, done)
    assert len(instances) == 3
    counted = [int(ds.NumberOfFrames) for ds in instances]
    assert sum(counted) == 12
    # Continuous timing: each instance starts at the frame after the previous one's last.
    starts = [round((ns_of(ds.AcquisitionDateTime) - t0) / PERIOD) for ds in instances]
    assert starts == [0, counted[0], counted[0] + counted[1]]
    assert [int(ds.InstanceNumber) for ds in instances] == [1, 2, 3]


def ns_of(dt: str) -> int:
    import datetime

    moment = datetime.datetime.strptime(str(dt), "%Y%m%d%H%M%S.%f%z")
    return round(moment.timestamp() * 1e6) * 1000


def test_a_video_segment_is_cut_before_its_frame_time_vector_overflows(tmp_path,
                                                                       monkeypatch):
    """DS has a 16-bit length in Explicit VR: a jittery 60 fps stream's Frame Time Vector
    must stay under 65534 bytes per instance (pydicom would otherwise write it as UN)."""
    d = example_descriptor("video")
    d.rows, d.columns, d.nominal_rate_hz = 16, 16, 60.0
    spool = Spool(tmp_path)
    rec = VideoRecorder(d, spool, RecorderOptions(video_mode="lossless", max_segment_s=3600))
    t0 = now_ns() - 300 * 10**9  # 12,000 frames at 60 fps end 200 s later: not in the future
    rng = np.random.default_rng(1)
    done, stamp = [], t0
    frame = np.zeros((16, 16, 3), np.uint8)
    for i in range(12_000):
        stamp += round(1e9 / 60) + int(rng.integers(-900_000, 900_000))  # +-0.9 ms jitter
        done += rec.feed(frame, stamp, i)
    done += rec.stop()
    assert len(done) == 2
    # Read the VR as encoded, not as pydicom would repair an UN.
    monkeypatch.setattr(pydicom.config, "replace_un_with_known_vr", False)
    total = 0
    for uid in done:
        path = spool.absolute(spool.get(uid))
        raw = pydicom.dcmread(path, stop_before_pixels=True)
        element = raw["FrameTimeVector"]
        assert element.VR == "DS"
        assert len(element.value) == int(raw.NumberOfFrames)
        total += int(raw.NumberOfFrames)
    assert total == 12_000


@pytest.fixture
def small_disk(tmp_path):
    """A real 24 MiB file system (tmpfs) to fill up; skipped where mounting is not allowed."""
    import subprocess

    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs",
                              str(mount_point)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(folder):
    """Write until the file system is full; return the filler file."""
    filler = folder / "filler"
    with open(filler, "wb") as fp:
        try:
            while True:
                fp.write(b"\0" * 65536)
                fp.flush()
        except OSError:
            pass
    return filler


def test_a_full_disk_is_waited_out_and_every_instance_decodes(small_disk, monkeypatch):
    import dicom_or_recorder.segments as segments

    monkeypatch.setattr(segments, "DISK_RETRY_INITIAL_S", 0.05)
    monkeypatch.setattr(segments, "DISK_RETRY_MAX_S", 0.1)
    spool = Spool(small_disk)
    rec = VideoRecorder(example_descriptor("video"), spool, RecorderOptions())
    t0 = now_ns() - 30 * 10**9
    frame = 0

    def feed(n):
        nonlocal frame
        failures = 0
        for _ in range(n):
            try:
                rec.feed(synthetic_rgb(240, 320, frame), t0 + frame * PERIOD, frame)
            except OSError:
                failures += 1
            frame += 1
        return failures

    assert feed(20) == 0
    filler = fill(small_disk)
    failures = feed(60)
    assert failures >= 1 and rec.stats.extra.get("dropped_disk_full", 0) > 0
    assert rec.stats.last_error.startswith("cannot write")
    assert rec.unwritten == 1  # the abandoned segment: its instance did not fit either
    # Waited out, not spun on: no folder per sample while full.
    assert len(list((small_disk / ".spool" / "journal").iterdir())) <= 2
    filler.unlink()
    deadline = time.monotonic() + 10
    while rec._disk_error and time.monotonic() < deadline:
        time.sleep(0.02)  # the back-off (0.05-0.1 s here) runs out
        feed(1)
    assert feed(20) == 0 and rec.stats.last_error == ""
    rec.retry_unwritten()
    assert rec.unwritten == 0
    rec.stop()
    videos = [pydicom.dcmread(spool.absolute(row)) for row in spool.rows()]
    assert len(videos) >= 2
    for ds in videos:  # every instance starts at a key frame and decodes whole
        frames = decode_frames(b"".join(generate_fragments(ds.PixelData)))
        assert len(frames) == int(ds.NumberOfFrames) > 0
