"""The shipped parameter files load with --params-file and give the contract's streams."""

from __future__ import annotations

import subprocess

import pytest
from dicom_or_test_common.ros import isolated_env, ros_context
from driver_harness import Probe, executable

from dicom_or_core.config.paths import config_file
from dicom_or_msgs.msg import ImageFrame, PoseSample, WaveformChunk
from dicom_or_ros.qos import named_qos

CASES = [
    ("video_driver", [("/or/endoscope/frames", ImageFrame, "ES")],
     ["width:=320", "height:=240"]),
    ("tracker_driver", [("/or/tracker/poses", PoseSample, "SR")], []),
    ("waveform_driver", [("/or/patient_monitor/ecg", WaveformChunk, "ECG"),
                         ("/or/patient_monitor/hemodynamic", WaveformChunk, "HD")], []),
]


@pytest.mark.parametrize("name, streams, overrides", CASES)
def test_params_file_loads_and_streams_start(name, streams, overrides) -> None:
    path = config_file(f"{name}.yaml")
    assert path.is_file(), path
    args = [executable(name), "--ros-args", "-r", "__ns:=/or", "--params-file", str(path),
            "-p", "require_session_context:=false"]
    for override in overrides:
        args += ["-p", override]
    with ros_context() as context:
        probe = Probe(context)
        for topic, msg_type, _ in streams:
            profile = {ImageFrame: "video", PoseSample: "pose"}.get(msg_type, "waveform")
            probe.follow(topic, msg_type, named_qos(profile))
        child = subprocess.Popen(args, env=isolated_env(context.domain), text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            assert probe.spin_until(lambda: all(probe.descriptors[t] for t, _, _ in streams),
                                    30), "no descriptor"
            for topic, _, modality in streams:
                descriptor = probe.descriptor(topic)
                assert descriptor.modality == modality
                assert descriptor.equipment.manufacturer == "dicom_or"
        finally:
            child.terminate()
            output, _ = child.communicate(timeout=15)
            probe.close()
        assert child.returncode in (0, -15), output
        assert "Traceback" not in output, output
