"""Recorder node in-process: discovery, descriptors, every kind recorded, control service
(START / STOP / SNAPSHOT), status topic, filters, QoS; parameters validated at start."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_or_test_common.examples import (
    example_descriptor,
    example_session,
    now_ns,
    synthetic_rgb,
    synthetic_waveform,
)
from dicom_or_test_common.peers import dciodvfy, have
from dicom_or_test_common.ros import isolated_env, reserved_domain_id, ros_context, spin_until
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import ReliabilityPolicy
from recorder_fixtures import StreamPublisher, console_script, stream_status

from dicom_or_core.iod.pose import read_pose_sr
from dicom_or_core.iod.video import VL_ENDOSCOPIC
from dicom_or_core.iod.waveform import read_samples
from dicom_or_msgs.srv import RecordControl
from dicom_or_recorder import recorder_node
from dicom_or_recorder.recorder_node import RecorderNode
from dicom_or_recorder.segments import VIDEO_MODES
from dicom_or_ros.params import load_schema

ROOT = Path(__file__).resolve().parents[3]


def make(rctx, tmp_path, descriptors, video_profile="video_recording", **params):
    overrides = {"recordings_dir": str(tmp_path), "discovery_period_s": 0.1,
                 "status_period_s": 0.2, **params}
    pub = StreamPublisher(descriptors, video_profile=video_profile, context=rctx)
    rec = RecorderNode(context=rctx, parameter_overrides=[
        Parameter(k, value=v) for k, v in overrides.items()])
    executor = SingleThreadedExecutor(context=rctx)
    executor.add_node(pub)
    executor.add_node(rec)
    return pub, rec, executor


def call(executor, pub, command, series=()):
    client = pub.create_client(RecordControl, "/recorder/control")
    assert client.wait_for_service(timeout_sec=10)
    future = client.call_async(RecordControl.Request(command=command,
                                                     series_instance_uids=list(series)))
    assert spin_until(executor, future.done, 30)
    return future.result()


def stats(rec, topic):
    return stream_status(rec.status(), topic)


def test_records_every_kind_with_control_and_status(tmp_path):
    session = example_session()
    d = {"video": example_descriptor("video", session), "ecg": example_descriptor("ecg",
                                                                                  session),
         "pose": example_descriptor("pose", session)}
    with ros_context() as rctx:
        pub, rec, ex = make(rctx, tmp_path, d, max_segment_s=1.0)
        try:
            assert spin_until(ex, pub.subscribed, 20)
            t0 = now_ns()
            # Video: 40 frames at 30 fps, sequence 20 lost on the way.
            sent = 0
            for i in range(40):
                if i != 20:
                    pub.video("video", synthetic_rgb(240, 320, i), t0 + i * 33_333_333, i)
                    sent += 1
                    assert spin_until(ex, lambda n=sent: stats(rec, d["video"].topic)
                                      .get("samples", 0) >= n, 10), rec.status()
            # ECG: 10 chunks of 50 samples.
            data = synthetic_waveform(500, 3)
            for i in range(10):
                pub.chunk("ecg", data[i * 50:(i + 1) * 50], t0 + i * 100_000_000, i * 50, i)
            # Poses: 2 tools x 20, "pointer" occluded for 5.
            for i in range(20):
                for j, tool in enumerate(d["pose"].tool_ids):
                    pub.pose("pose", tool, t0 + i * 16_666_667, (0.01 * i, 0.0, 0.1 * j),
                             (0.0, 0.0, 0.0, 1.0), not (j == 0 and i < 5), 2 * i + j)
            assert spin_until(ex, lambda: stats(rec, d["ecg"].topic).get("samples") == 500
                              and stats(rec, d["pose"].topic).get("samples") == 35, 20)
            video = stats(rec, d["video"].topic)
            assert video["lost_messages"] == 1 and video["samples"] == 39
            # Frames went through the encoder queue: none dropped, none left waiting.
            assert video["dropped_backpressure"] == 0 and video["queue_capacity"] == 60
            assert video["acknowledged"] == 39 and video["queued"] == 0
            assert stats(rec, d["pose"].topic)["occluded"] == 5
            assert spin_until(ex, lambda: pub.status is not None and stream_status(
                pub.status, d["ecg"].topic).get("samples") == 500, 10)
            assert pub.status["pacs"]["enabled"] is False

            stop = call(ex, pub, RecordControl.Request.STOP)
            assert stop.success, stop.message
            assert len(stop.sop_instance_uids) == 3  # second video instance, ECG, pose
            snap = call(ex, pub, RecordControl.Request.SNAPSHOT,
                        [d["video"].series_instance_uid])
            assert snap.success and len(snap.sop_instance_uids) == 1
            bad = call(ex, pub, RecordControl.Request.START, ["1.2.3.999"])
            assert not bad.success and "not followed" in bad.message
        finally:
            rec.close()
            rec.destroy_node()
            pub.destroy_node()
    by_modality: dict[str, list] = {}
    for path in sorted(tmp_path.rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        by_modality.setdefault(ds.Modality, []).append(ds)
        assert ds.StudyInstanceUID == session.study.study_instance_uid
        assert ds.SynchronizationFrameOfReferenceUID == \
            session.synchronization_frame_of_reference_uid
        if have("dciodvfy"):
            assert dciodvfy(path)[0] == 0, path
    videos = [ds for ds in by_modality["ES"] if ds.SOPClassUID != VL_ENDOSCOPIC]
    assert sorted(int(v.NumberOfFrames) for v in videos) == [9, 30]
    assert [ds.SOPClassUID for ds in by_modality["ES"]].count(VL_ENDOSCOPIC) == 1
    assert np.array_equal(read_samples(by_modality["ECG"][0]), data)
    poses = read_pose_sr(by_modality["SR"][0])
    assert len(poses["pointer"][0]) == 15 and len(poses["patient_reference"][0]) == 20


def test_filters_and_record_on_start_false(tmp_path):
    session = example_session()
    d = {"video": example_descriptor("video", session),
         "ecg": example_descriptor("ecg", session)}
    with ros_context() as rctx:
        pub, rec, ex = make(rctx, tmp_path, d, kinds=["waveform"], record_on_start=False)
        try:
            assert spin_until(ex, lambda: pub.samples["ecg"].get_subscription_count() > 0, 20)
            t0 = now_ns()
            pub.chunk("ecg", synthetic_waveform(50, 3), t0, 0, 0)
            assert spin_until(ex, lambda: pub.status is not None and stream_status(
                pub.status, d["ecg"].topic).get("recording") is False, 10)
            assert stats(rec, d["ecg"].topic)["samples"] == 0  # not recording yet
            assert call(ex, pub, RecordControl.Request.START).success
            pub.chunk("ecg", synthetic_waveform(50, 3, 50), t0 + 10**8, 50, 1)
            assert spin_until(ex, lambda: stats(rec, d["ecg"].topic)["samples"] == 50, 10)
            assert stats(rec, d["video"].topic) == {}  # kinds filter: video not followed
            assert pub.samples["video"].get_subscription_count() == 0
        finally:
            rec.close()
            rec.destroy_node()
            pub.destroy_node()
    assert len(list(tmp_path.rglob("*.dcm"))) == 1


def test_a_stream_outside_its_iod_is_refused_visibly(tmp_path):
    d = {"hd": example_descriptor("hd", sampling_frequency_hz=1000.0, nominal_rate_hz=1000.0)}
    with ros_context() as rctx:
        pub, rec, ex = make(rctx, tmp_path, d)
        try:
            assert spin_until(ex, lambda: "refused" in stats(rec, d["hd"].topic), 20)
            assert "400" in stats(rec, d["hd"].topic)["refused"]
        finally:
            rec.close()
            rec.destroy_node()
            pub.destroy_node()


@pytest.mark.parametrize("video_profile,reliability", [
    ("video", ReliabilityPolicy.BEST_EFFORT), ("video_recording", ReliabilityPolicy.RELIABLE)])
def test_video_subscription_follows_the_driver_reliability(tmp_path, video_profile,
                                                           reliability):
    """A default (best-effort) driver's frames are received; a driver switched to RELIABLE
    gets a RELIABLE subscription (lossless capture), with no recorder switch."""
    d = {"video": example_descriptor("video")}
    with ros_context() as rctx:
        pub, rec, ex = make(rctx, tmp_path, d, video_profile=video_profile)
        try:
            assert spin_until(ex, pub.subscribed, 20)
            sub = rec._followed[d["video"].topic].sample_sub
            assert sub.qos_profile.reliability == reliability
            t0 = now_ns()
            for i in range(5):
                pub.video("video", synthetic_rgb(240, 320, i), t0 + i * 33_333_333, i)
                spin_until(ex, lambda n=i: stats(rec, d["video"].topic).get("samples", 0)
                           > n, 5)
            assert stats(rec, d["video"].topic)["samples"] >= 1
        finally:
            rec.close()
            rec.destroy_node()
            pub.destroy_node()


def test_parameter_schema_names_the_recorders_video_modes():
    """recorder_parameters.yaml's one_of for video_mode is segments.VIDEO_MODES."""
    _, specs = load_schema(Path(recorder_node.__file__).with_name("recorder_parameters.yaml"))
    (spec,) = [s for s in specs if s.name == "video_mode"]
    assert dict(spec.validation)["one_of<>"] == (list(VIDEO_MODES),)


@pytest.mark.parametrize("param,value", [("video_mode", "vp9"), ("max_segment_s", "0.0"),
                                         ("kinds", "[audio]"), ("pacs_port", "70000"),
                                         ("video_quality", "99"), ("video_queue_frames", "0")])
def test_bad_parameter_exits_1_naming_it(tmp_path, param, value):
    with reserved_domain_id() as domain:
        result = subprocess.run(
            [console_script("recorder"), "--ros-args", "-p", f"{param}:={value}",
             "-p", f"recordings_dir:={tmp_path}"],
            env=isolated_env(domain), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert param in result.stderr and "Traceback" not in result.stderr


def test_params_file_loads_and_sigint_exits_cleanly(tmp_path):
    with reserved_domain_id() as domain:
        proc = subprocess.Popen(
            [console_script("recorder"), "--ros-args", "--params-file",
             str(ROOT / "config" / "recorder.yaml"), "-p", f"recordings_dir:={tmp_path}"],
            env=isolated_env(domain), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        try:
            deadline = time.monotonic() + 30
            lines = []
            while time.monotonic() < deadline:
                line = proc.stdout.readline()
                lines.append(line)
                if "recording into" in line or not line:
                    break
            assert any("recording into" in line for line in lines), lines
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_commitment_port_in_use_exits_1_in_one_line(tmp_path):
    with socket.socket() as busy, reserved_domain_id() as domain:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [console_script("recorder"), "--ros-args", "-p", f"recordings_dir:={tmp_path}",
             "-p", "pacs_port:=11112", "-p", "pacs_ae_title:=PACS",
             "-p", f"commitment_port:={port}"],
            env=isolated_env(domain), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "commitment_port" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
