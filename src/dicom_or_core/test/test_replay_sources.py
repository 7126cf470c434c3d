"""Replay sources: the stream descriptors, session and samples rebuilt from instances the
iod builders write (video with a dropped frame, a waveform cut into two instances, a pose
SR, a snapshot that is no stream), compared with what was recorded."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from dicom_or_test_common.examples import (
    example_descriptor,
    example_session,
    synthetic_rgb,
    synthetic_waveform,
)

from dicom_or_core.iod.codec import PTS_HZ, PacketEncoder, choose_codec, mux_mpegts, psnr
from dicom_or_core.iod.pose import ToolTrack, build_pose_sr
from dicom_or_core.iod.video import build_multiframe_sc, build_snapshot, build_video
from dicom_or_core.iod.waveform import build_waveform
from dicom_or_core.model import context as ctx
from dicom_or_core.model.errors import DicomOrError
from dicom_or_core.model.uid import new_uid
from dicom_or_core.replay.sources import (
    FragmentReader,
    PoseSample,
    VideoSample,
    WaveformSample,
    default_topic,
    load_study,
    remap_topics,
)

T0 = 1_795_000_000_123_456_000   # a session-clock time (2026), whole microseconds
VIDEO_STAMPS = [T0 + round(i * 1e9 / 30) // 1000 * 1000 for i in range(40) if i != 17]


def save(root: Path, ds) -> Path:
    path = root / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def encode_video(d: ctx.StreamDescriptor, stamps: list[int]) -> tuple[object, bytes, list]:
    choice = choose_codec(d.rows, d.columns, d.nominal_rate_hz)
    encoder = PacketEncoder(choice, d.rows, d.columns, d.pixel_encoding, d.nominal_rate_hz)
    frames = [synthetic_rgb(d.rows, d.columns, i) for i in range(len(stamps))]
    packets = []
    for image, stamp in zip(frames, stamps, strict=True):
        packets += encoder.encode(image, round((stamp - stamps[0]) * PTS_HZ / 1e9))
    packets += encoder.flush()
    return choice, mux_mpegts(choice, d.rows, d.columns, d.nominal_rate_hz, packets), frames


def pose_tracks() -> list[ToolTrack]:
    rng = np.random.default_rng(3)
    tracks = []
    for k, tool in enumerate(("pointer", "patient_reference")):
        stamps = np.array([T0 + 2_000_000 + i * 16_667_000 + k * 1000 for i in range(120)
                           if not (tool == "pointer" and 50 <= i < 60)], np.int64)
        q = rng.normal(size=(len(stamps), 4))
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        q[q[:, 3] < 0] *= -1
        tracks.append(ToolTrack(tool, stamps, rng.uniform(-0.5, 0.5, (len(stamps), 3)), q))
    return tracks


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> dict[str, object]:
    """A study of four streams as the recorder writes them."""
    root = tmp_path_factory.mktemp("recording")
    session = example_session()
    session.requests = [ctx.RequestAttributes(
        study_instance_uid=session.study.study_instance_uid, accession_number="A1",
        requested_procedure_id="RP1", scheduled_procedure_step_id="SPS1")]
    session.scheduled_procedure_step_id = "SPS1"
    session.performed_procedure_step_sop_instance_uid = new_uid()
    session.performed_procedure_step_id = "PPS1"
    video = example_descriptor("video", session)
    ecg = example_descriptor("ecg", session, series_number=2)
    pose = example_descriptor("pose", session, series_number=3)
    lossless = example_descriptor("video_xc", session, series_number=4, rows=48, columns=64)
    choice, ts, frames = encode_video(video, VIDEO_STAMPS)
    save(root, build_video(video, ts, choice, VIDEO_STAMPS, new_uid(), 1))
    save(root, build_snapshot(video, frames[3], VIDEO_STAMPS[3], new_uid(), 2))
    samples = synthetic_waveform(1500, 3)
    # Two consecutive instances of one Series (the recorder's segments), the second first
    # on disk by name order does not matter: time orders them.
    save(root, build_waveform(ecg, samples[:1000], T0 + 500_000_000, new_uid(), 1))
    save(root, build_waveform(ecg, samples[1000:], T0 + 2_500_000_000, new_uid(), 2))
    tracks = pose_tracks()
    save(root, build_pose_sr(pose, tracks, new_uid(), 1))
    small = [synthetic_rgb(48, 64, i)[..., ::-1].copy() for i in range(5)]
    lossless_stamps = [T0 + i * 40_000_000 for i in range(5)]
    save(root, build_multiframe_sc(lossless, small, lossless_stamps, new_uid(), 1))
    return {"root": root, "session": session, "video": video, "ecg": ecg, "pose": pose,
            "lossless": lossless, "frames": frames, "samples": samples, "tracks": tracks,
            "small": small, "lossless_stamps": lossless_stamps}


def by_modality(study):
    return {s.descriptor.modality: s for s in study.series}


def test_context_is_rebuilt_from_the_instances(recording):
    study = load_study(recording["root"])
    session = recording["session"]
    assert study.session.patient == session.patient
    assert study.session.study == session.study
    assert study.session.synchronization_frame_of_reference_uid == \
        session.synchronization_frame_of_reference_uid
    assert study.session.requests[0].requested_procedure_id == "RP1"
    assert study.session.scheduled_procedure_step_id == "SPS1"
    assert study.session.performed_procedure_step_sop_instance_uid == \
        session.performed_procedure_step_sop_instance_uid
    series = by_modality(study)
    assert set(series) == {"ES", "ECG", "SR", "XC"}
    for name, modality in (("video", "ES"), ("ecg", "ECG"), ("pose", "SR"),
                           ("lossless", "XC")):
        original, back = recording[name], series[modality].descriptor
        back.validate()
        for f in ("series_instance_uid", "series_number", "modality", "series_description",
                  "series_date", "series_time", "body_part_examined", "equipment", "kind"):
            assert getattr(back, f) == getattr(original, f), (name, f)
        assert back.session.study == original.session.study
    ecg = series["ECG"].descriptor
    assert ecg.channels == recording["ecg"].channels
    assert ecg.sampling_frequency_hz == ecg.nominal_rate_hz == 500.0
    assert ecg.topic == "/or/patient_monitor/ecg" and ecg.qos_profile == "waveform"
    video = series["ES"].descriptor
    assert (video.rows, video.columns, video.nominal_rate_hz) == (240, 320, 30.0)
    assert video.topic == "/or/endoscope/frames"
    assert video.message_type == "dicom_or_msgs/msg/ImageFrame"
    pose = series["SR"].descriptor
    assert pose.tool_ids == ["pointer", "patient_reference"]
    assert pose.frame_of_reference_uid == recording["pose"].frame_of_reference_uid
    assert pose.nominal_rate_hz == 60.0 and pose.topic == "/or/tracker/poses"
    assert series["XC"].descriptor.topic == "/or/camera/frames"
    # The snapshot of the video Series is no stream; the video Series has one instance.
    assert len(series["ES"].instances) == 1 and len(study.skipped) == 1
    assert len(series["ECG"].instances) == 2


def test_the_same_recording_replays_with_the_same_identity(recording):
    a, b = load_study(recording["root"]), load_study(recording["root"])
    for x, y in zip(a.series, b.series, strict=True):
        assert x.descriptor == y.descriptor


def test_waveform_samples_are_identical_and_on_their_time_base(recording):
    series = by_modality(load_study(recording["root"]))["ECG"]
    chunks = list(series.samples(chunk_ms=100))
    assert all(isinstance(c, WaveformSample) for c in chunks)
    joined = np.concatenate([c.samples for c in chunks])
    np.testing.assert_array_equal(joined, recording["samples"])
    assert [c.samples.shape[0] for c in chunks[:3]] == [50, 50, 50]
    assert chunks[0].acquisition_ns == T0 + 500_000_000
    assert chunks[1].acquisition_ns == T0 + 600_000_000
    # The second instance starts 2 s after the first: index 1000, as the time says.
    second = next(c for c in chunks if c.acquisition_ns == T0 + 2_500_000_000)
    assert second.first_sample_index == 1000
    assert chunks[0].due_ns == chunks[0].acquisition_ns + 49 * 2_000_000
    assert series.start_ns == T0 + 500_000_000
    assert series.end_ns == T0 + 2_500_000_000 + 500 * 2_000_000


def test_poses_come_back_identical_to_float32_in_time_order(recording):
    series = by_modality(load_study(recording["root"]))["SR"]
    poses = list(series.samples())
    assert all(isinstance(p, PoseSample) for p in poses)
    stamps = [p.acquisition_ns for p in poses]
    assert stamps == sorted(stamps)
    for track in recording["tracks"]:
        mine = [p for p in poses if p.tool_id == track.tool_id]
        assert [p.acquisition_ns for p in mine] == [int(s) for s in track.stamps_ns]
        got = np.array([p.position for p in mine])
        np.testing.assert_array_equal((got * 1000).astype(np.float32),
                                      (track.positions_m * 1000).astype(np.float32))
        q = np.array([p.orientation for p in mine])
        np.testing.assert_allclose(q, track.quaternions_xyzw, atol=3e-7)


def test_video_frames_at_their_frame_times_and_quality(recording):
    study = load_study(recording["root"])
    series = by_modality(study)["ES"]
    frames = list(series.samples())
    assert all(isinstance(f, VideoSample) for f in frames)
    assert [f.acquisition_ns for f in frames] == VIDEO_STAMPS
    quality = [psnr(src, f.image) for src, f in zip(recording["frames"], frames, strict=True)]
    assert min(quality) > 40.0, min(quality)
    lossless = list(by_modality(study)["XC"].samples())
    assert [f.acquisition_ns for f in lossless] == recording["lossless_stamps"]
    for src, f in zip(recording["small"], lossless, strict=True):
        np.testing.assert_array_equal(f.image, src[..., ::-1])   # bgr8 recorded as RGB


def test_video_is_decoded_lazily(recording, monkeypatch):
    """Asking for the first frame decodes a little, not the instance."""
    import dicom_or_core.replay.sources as sources
    reads = []
    original = FragmentReader.readinto

    def counting(self, buffer):
        n = original(self, buffer)
        reads.append(n)
        return n

    monkeypatch.setattr(sources.FragmentReader, "readinto", counting)
    series = by_modality(load_study(recording["root"]))["ES"]
    samples = series.samples()
    next(samples)
    first = sum(reads)
    list(samples)
    assert first < sum(reads)


def test_topics_rules_and_remap(recording):
    assert default_topic(ctx.KIND_WAVEFORM, "HD") == "/or/patient_monitor/hemodynamic"
    assert default_topic(ctx.KIND_WAVEFORM, "ECG", 12) == "/or/patient_monitor/ecg12"
    assert default_topic(ctx.KIND_VIDEO, "ES", prefix="/replay") == "/replay/endoscope/frames"
    study = load_study(recording["root"], topic_prefix="/replay")
    assert {s.descriptor.topic for s in study.series} == {
        "/replay/endoscope/frames", "/replay/patient_monitor/ecg", "/replay/tracker/poses",
        "/replay/camera/frames"}
    remap_topics(study, {"/replay/tracker/poses": "/ndi/poses"})
    assert "/ndi/poses" in {s.descriptor.topic for s in study.series}
    with pytest.raises(DicomOrError, match="topic_remap"):
        remap_topics(study, {"/ndi/poses": "no topic"})


def test_bad_input_is_one_clear_error(recording, tmp_path):
    with pytest.raises(DicomOrError, match="input: is not a folder"):
        load_study(tmp_path / "missing")
    with pytest.raises(DicomOrError, match="input: holds no recorded"):
        load_study(tmp_path)
    with pytest.raises(DicomOrError, match="study_instance_uid: no recorded stream"):
        load_study(recording["root"], "1.2.3")
    # Two studies: the choice is required.
    other = replace(example_descriptor("ecg"), series_number=1)
    save(tmp_path, build_waveform(other, synthetic_waveform(10, 3), T0, new_uid()))
    (tmp_path / "junk.dcm").write_bytes(b"not dicom")
    for path in Path(recording["root"]).rglob("*.dcm"):
        target = tmp_path / path.relative_to(recording["root"])
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    with pytest.raises(DicomOrError, match="holds 2 studies"):
        load_study(tmp_path)
    study = load_study(tmp_path, other.session.study.study_instance_uid)
    assert len(study.series) == 1 and any("junk" in s for s in study.skipped)
