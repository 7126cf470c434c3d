"""Replay node: a recording the iod builders write, replayed in process (session, descriptors,
samples with their recorded acquisition times and data, pacing at a rate, end of recording),
and as the console script (loop, Ctrl-C, bad parameters: one line, exit 1)."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from dicom_or_test_common.examples import (
    example_descriptor,
    example_session,
    synthetic_rgb,
    synthetic_waveform,
)
from dicom_or_test_common.ros import isolated_env, ros_context
from driver_harness import (
    Probe,
    assert_contiguous,
    executable,
    params,
    run_bad_parameter,
)

from dicom_or_core.iod.codec import PTS_HZ, PacketEncoder, choose_codec, mux_mpegts
from dicom_or_core.iod.pose import ToolTrack, build_pose_sr
from dicom_or_core.iod.video import build_video
from dicom_or_core.iod.waveform import build_waveform
from dicom_or_core.model import context as ctx
from dicom_or_core.model.uid import new_uid
from dicom_or_drivers.replay_node import ReplayNode
from dicom_or_msgs.msg import DeviceStatus, ImageFrame, PoseSample, WaveformChunk
from dicom_or_msgs.msg import SessionContext as SessionContextMsg
from dicom_or_ros.convert import from_msg, time_to_ns
from dicom_or_ros.graph import SESSION_CONTEXT_TOPIC
from dicom_or_ros.image import image_to_array
from dicom_or_ros.qos import named_qos

VIDEO, ECG, POSES = "/or/endoscope/frames", "/or/patient_monitor/ecg", "/or/tracker/poses"
T0 = 1_795_000_000_000_000_000


def _save(root: Path, ds) -> None:
    path = root / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> dict[str, object]:
    """1.2 s of endoscope video (30 fps, 320x240), ECG in two instances, two tools."""
    root = tmp_path_factory.mktemp("replay_input")
    session = example_session()
    video = example_descriptor("video", session)
    ecg = example_descriptor("ecg", session, series_number=2)
    pose = example_descriptor("pose", session, series_number=3)
    stamps = [T0 + round(i * 1e9 / 30) // 1000 * 1000 for i in range(36)]
    choice = choose_codec(video.rows, video.columns, 30.0)
    encoder = PacketEncoder(choice, video.rows, video.columns, "rgb8", 30.0)
    packets = []
    for i, stamp in enumerate(stamps):
        packets += encoder.encode(synthetic_rgb(240, 320, i), round((stamp - T0) * PTS_HZ / 1e9))
    packets += encoder.flush()
    _save(root, build_video(video, mux_mpegts(choice, 240, 320, 30.0, packets), choice,
                            stamps, new_uid()))
    samples = synthetic_waveform(600, 3)
    _save(root, build_waveform(ecg, samples[:300], T0, new_uid(), 1))
    _save(root, build_waveform(ecg, samples[300:], T0 + 600_000_000, new_uid(), 2))
    rng = np.random.default_rng(5)
    tracks = []
    for k, tool in enumerate(pose.tool_ids):
        t = np.array([T0 + 1000 * k + i * 20_000_000 for i in range(60)], np.int64)
        q = rng.normal(size=(60, 4))
        tracks.append(ToolTrack(tool, t, rng.uniform(-0.3, 0.3, (60, 3)),
                                q / np.linalg.norm(q, axis=1, keepdims=True)))
    _save(root, build_pose_sr(pose, tracks, new_uid()))
    return {"root": root, "session": session, "video": video, "ecg": ecg, "pose": pose,
            "stamps": stamps, "samples": samples, "tracks": tracks}


def _ended(probe: Probe, topics: tuple[str, ...]) -> bool:
    return all(DeviceStatus.STATE_SOURCE_LOST in probe.states(t) for t in topics)


def test_replay_publishes_the_recording_as_live_streams(recording):
    with ros_context() as context:
        probe = Probe(context)
        probe.follow(VIDEO, ImageFrame, named_qos("video_recording", 30))
        probe.follow(ECG, WaveformChunk, named_qos("waveform", 10))
        probe.follow(POSES, PoseSample, named_qos("pose", 50))
        sessions: list[SessionContextMsg] = []
        probe.node.create_subscription(SessionContextMsg, SESSION_CONTEXT_TOPIC,
                                       sessions.append, named_qos("descriptor"))
        node = ReplayNode(context=context, parameter_overrides=params(
            input=str(recording["root"]), wait_for_subscribers=1, rate=2.0, **{
                "qos_overrides./or/endoscope/frames.publisher.reliability": "reliable",
                "qos_overrides./or/endoscope/frames.publisher.depth": 30}))
        probe.executor.add_node(node)
        try:
            assert probe.spin_until(lambda: _ended(probe, (VIDEO, ECG, POSES)), 30)
            probe.spin_until(lambda: False, 0.3)  # the last samples in flight
        finally:
            node.close()
            probe.executor.remove_node(node)
            node.destroy_node()
            probe.close()
    session = from_msg(ctx.SessionContext, sessions[-1])
    assert session.study == recording["session"].study
    assert session.patient == recording["session"].patient
    for topic, name in ((VIDEO, "video"), (ECG, "ecg"), (POSES, "pose")):
        d = probe.descriptor(topic)
        assert d.series_instance_uid == recording[name].series_instance_uid
        assert d.session.synchronization_frame_of_reference_uid == \
            recording["session"].synchronization_frame_of_reference_uid
        assert d.topic == topic
        assert_contiguous([m.context.sequence for m in probe.samples[topic]])
        assert probe.samples[topic][0].context.sequence == 0
        assert all(m.context.series_instance_uid == d.series_instance_uid
                   for m in probe.samples[topic])
    assert probe.descriptor(ECG).channels == recording["ecg"].channels
    frames = probe.samples[VIDEO]
    # Frame Time keeps the period to the nanosecond; each frame's time to the microsecond.
    times = [time_to_ns(f.context.acquisition_time) for f in frames]
    assert len(times) == len(recording["stamps"])
    assert max(abs(a - b) for a, b in zip(times, recording["stamps"], strict=True)) <= 1000
    assert image_to_array(frames[5].image).shape == (240, 320, 3)
    chunks = probe.samples[ECG]
    got = np.concatenate([np.asarray(c.samples, np.int16).reshape(-1, 3) for c in chunks])
    np.testing.assert_array_equal(got, recording["samples"])
    assert [c.first_sample_index for c in chunks] == list(range(0, 600, 50))
    poses = probe.samples[POSES]
    assert len(poses) == 120
    pointer = [p for p in poses if p.tool_id == "pointer"]
    assert [time_to_ns(p.context.acquisition_time) for p in pointer] == \
        [int(t) for t in recording["tracks"][0].stamps_ns]
    positions = np.array([[p.pose.position.x, p.pose.position.y, p.pose.position.z]
                          for p in pointer])
    np.testing.assert_array_equal((positions * 1000).astype(np.float32),
                                  (recording["tracks"][0].positions_m * 1000).astype(np.float32))
    # Paced at rate 2 on one clock: publication times follow the acquisition times / 2.
    everything = [m for topic in (VIDEO, ECG, POSES) for m in probe.samples[topic]]
    published = np.array([time_to_ns(m.context.header.stamp) for m in everything]) / 1e9
    acquired = np.array([time_to_ns(m.context.acquisition_time) for m in everything]) / 1e9
    due = (acquired - acquired.min()) / 2.0
    lag = published - published.min() - due
    assert np.percentile(np.abs(lag - np.median(lag)), 90) < 0.1, lag


def test_console_script_loops_and_stops_cleanly_on_ctrl_c(recording):
    with ros_context() as context:
        probe = Probe(context)
        probe.follow(ECG, WaveformChunk, named_qos("waveform", 10))
        child = subprocess.Popen(
            [executable("dicom_or_replay"), "--ros-args", "-p",
             f"input:={recording['root']}", "-p", "loop:=true", "-p", "rate:=4.0"],
            env=isolated_env(context.domain), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        try:
            # Two and a half passes of 12 chunks.
            assert probe.spin_until(lambda: len(probe.samples[ECG]) >= 30, 30)
        finally:
            child.send_signal(signal.SIGINT)
            # Spin while the node stops: its last device status (STOPPED) is taken in as it
            # leaves, not after it is gone (a loaded machine may not deliver it then).
            probe.spin_until(lambda: child.poll() is not None
                             and DeviceStatus.STATE_STOPPED in probe.states(ECG), 20)
            output, _ = child.communicate(timeout=20)
        probe.close()
    assert child.returncode == 0, output
    assert "Traceback" not in output
    times = [time_to_ns(c.first_sample_time) for c in probe.samples[ECG]]
    assert times == sorted(times) and len(set(times)) == len(times)
    indices = [c.first_sample_index for c in probe.samples[ECG]]
    assert indices == list(range(indices[0], indices[0] + 50 * len(indices), 50))
    assert DeviceStatus.STATE_STOPPED in probe.states(ECG)


@pytest.mark.parametrize("args,name", [
    (["input:=/nonexistent/folder"], "input"),
    ([], "input"),
    (["input:={root}", "rate:=0.0"], "rate"),
    (["input:={root}", "topic_remap:=[nonsense]"], "topic_remap"),
    (["input:={root}", "study_instance_uid:=1.2.3"], "study_instance_uid"),
    (["input:={root}", "start_offset_s:=60.0"], "start_offset_s"),
    (["input:={root}", "pacs_port:=9"], "study_instance_uid"),
    (["input:={root}", "pacs_port:=9", "study_instance_uid:=1.2.3", "pacs_timeout_s:=2.0"],
     "pacs: cannot pull the study"),
])
def test_bad_parameters_are_one_line_and_exit_1(recording, args, name):
    args = [a.format(root=recording["root"]) for a in args]
    with ros_context() as context:
        result = run_bad_parameter("dicom_or_replay", *args, env=isolated_env(context.domain))
    assert result.returncode == 1, result.stderr
    assert name in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
