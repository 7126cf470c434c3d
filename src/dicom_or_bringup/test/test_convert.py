"""dicom_or_convert end to end: bags the tests write with rosbags -> DICOM studies that
dciodvfy validates (0 errors per instance) and Orthanc indexes; the project's own bag keeps
its Series, samples and times, and survives DICOM -> MCAP -> DICOM; bad input is one line
and exit status 1 with nothing left behind. (The 1080p, 60 s bag with its speed next to
ffmpeg is test/test_convert_1080p.py.)"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pydicom
import pytest
import yaml
from dicom_or_test_common import bags as b
from dicom_or_test_common.examples import example_descriptor, example_session
from dicom_or_test_common.peers import Orthanc, dciodvfy, free_tcp_port, have

from dicom_or_bringup.convert_tool import main
from dicom_or_core.iod.pose import read_pose_sr
from dicom_or_core.iod.waveform import read_samples

T0 = time.time_ns() - 3600 * 10**9
PERIOD = 33_333_333
FRAMES = 60  # 2 s at 30 fps
ECG_YAML = {"/monitor/ecg": {
    "modality": "ECG", "series_description": "ECG (bag)", "sampling_frequency_hz": 500.0,
    "equipment": {"manufacturer": "Bag Monitors", "model_name": "M1"},
    "channels": [{"label": lead, "source_code_value": code, "source_coding_scheme": "MDC",
                  "source_code_meaning": meaning, "unit_ucum": "uV", "sensitivity": 2.5,
                  "filter_low_hz": 0.05, "filter_high_hz": 150.0}
                 for lead, code, meaning in (("I", "2:1", "Lead I"), ("II", "2:2", "Lead II"),
                                             ("III", "2:61", "Lead III"))]}}


def instances(folder: Path) -> list[Path]:
    return sorted(folder.glob("*/*/*.dcm"))


def check_valid(paths: list[Path]) -> None:
    """dciodvfy: 0 errors in every instance."""
    assert have("dciodvfy"), "dciodvfy missing: run tools/install_system_deps"
    for path in paths:
        count, errors = dciodvfy(path)
        assert count == 0, (path.name, errors)


def orthanc_indexes(paths: list[Path], workdir: Path) -> dict:
    """POST every file to Orthanc's REST /instances; its index of studies and series."""
    with Orthanc(workdir) as orthanc:
        for path in paths:
            request = urllib.request.Request(
                f"http://127.0.0.1:{orthanc.http_port}/instances", data=path.read_bytes(),
                method="POST", headers={"Content-Type": "application/dicom"})
            with urllib.request.urlopen(request, timeout=60) as response:
                assert json.loads(response.read())["Status"] == "Success", path.name
        return {"studies": orthanc.rest("GET", "/studies"),
                "series": orthanc.rest("GET", "/series"),
                "instances": orthanc.rest("GET", "/instances")}


def test_plain_topics_become_a_valid_study_that_orthanc_indexes(tmp_path, capsys):
    # Video raw and JPEG, a tracked tool (rosbag2, mcap storage).
    frames = list(b.moving_pattern(240, 320, FRAMES))
    messages = []
    for i, pixels in enumerate(frames):
        t = T0 + i * PERIOD
        messages += [b.image("/cam/image", t, pixels),
                     b.compressed("/cam/compressed", t, b.jpeg(pixels[:, :, ::-1])),
                     b.pose_stamped("/tracker/pointer", t, (0.1, 0.02 * i, 0.3),
                                    (0.0, 0.0, np.sin(i / 100), np.cos(i / 100)))]
    video_bag = b.write_bag(tmp_path / "video", sorted(messages, key=lambda m: m[2]))
    # A 3-lead ECG in physical units (uV) with its channel YAML (rosbag2, sqlite3 storage).
    rng = np.random.default_rng(7)
    digital = rng.integers(-2000, 2000, (1000, 3)).astype(np.int16)
    ecg_bag = b.write_bag(tmp_path / "ecg", [
        b.float_array("/monitor/ecg", T0 + k * 100_000_000, digital[k * 50:(k + 1) * 50] * 2.5)
        for k in range(20)], "sqlite3")
    streams = tmp_path / "streams.yaml"
    streams.write_text(yaml.safe_dump(ECG_YAML))
    out = tmp_path / "dicom"
    study_uid = "1.2.826.0.1.3680043.8.498.1414"
    context = ["--patient-id", "BAG-1", "--patient-name", "Bag^Case", "--study-uid", study_uid,
               "--study-description", "Converted case", "--quiet"]
    assert main([str(video_bag), str(out), *context]) == 0
    assert main([str(ecg_bag), str(out), "--streams", str(streams), *context]) == 0
    printed = capsys.readouterr().out
    assert "/cam/image (video): 60 messages, 1 instance(s)" in printed
    paths = instances(out)
    assert len(paths) == 4
    check_valid(paths)
    by_series = {str(ds.SeriesDescription): ds for ds in map(pydicom.dcmread, paths)}
    assert {ds.StudyInstanceUID for ds in by_series.values()} == {study_uid}
    assert {ds.PatientID for ds in by_series.values()} == {"BAG-1"}
    assert int(by_series["/cam/image"].NumberOfFrames) == FRAMES
    assert int(by_series["/cam/compressed"].NumberOfFrames) == FRAMES
    ecg = by_series["ECG (bag)"]
    assert ecg.Modality == "ECG" and ecg.Manufacturer == "Bag Monitors"
    assert np.array_equal(read_samples(ecg), digital)
    tracks = read_pose_sr(by_series["/tracker/pointer"])
    stamps, positions, _ = tracks["pointer"]
    assert len(stamps) == FRAMES
    assert np.allclose(positions[:, 1], 0.02 * np.arange(FRAMES), atol=1e-6)
    assert abs(int(stamps[0]) - T0) < 1000
    index = orthanc_indexes(paths, tmp_path / "orthanc")
    assert len(index["studies"]) == 1 and len(index["series"]) == 4
    assert len(index["instances"]) == 4


def project_bag(path: Path, seconds: int = 2):
    """The project's own topics as the recorder would have followed them."""
    session = example_session()
    video = example_descriptor("video", session)
    ecg = example_descriptor("ecg", session)
    pose = example_descriptor("pose", session)
    messages = [b.session_message(session, T0 - 1)] + [
        b.descriptor_message(d, T0 - 1) for d in (video, ecg, pose)]
    frames = list(b.moving_pattern(240, 320, 30 * seconds))
    for i, pixels in enumerate(frames):
        messages.append(b.image_frame(video, T0 + i * PERIOD, i, pixels))
    samples = np.random.default_rng(3).integers(-900, 900, (500 * seconds, 3)).astype(np.int16)
    for k in range(10 * seconds):
        messages.append(b.waveform_chunk(ecg, T0 + k * 100_000_000, k, 50 * k,
                                         samples[50 * k:50 * (k + 1)]))
    positions = np.column_stack([np.linspace(0, 0.2, 60 * seconds),
                                 np.full(60 * seconds, 0.1), np.full(60 * seconds, 0.5)])
    for i, p in enumerate(positions):
        messages.append(b.pose_sample(pose, T0 + i * 16_666_667, i, "pointer", tuple(p),
                                      (0.0, 0.0, 0.0, 1.0)))
    b.write_bag(path, sorted(messages, key=lambda m: m[2]))
    return (video, ecg, pose), samples, positions


def series_of(folder: Path) -> dict[str, list[pydicom.Dataset]]:
    out: dict[str, list[pydicom.Dataset]] = {}
    for path in instances(folder):
        ds = pydicom.dcmread(path)
        out.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    for members in out.values():
        members.sort(key=lambda ds: int(ds.InstanceNumber))
    return out


def recorded(series: list[pydicom.Dataset], kind: str):
    """What a Series holds: frames, joined waveform samples, or the pointer's positions."""
    if kind == "video":
        return sum(int(ds.NumberOfFrames) for ds in series)
    if kind == "waveform":
        return np.concatenate([read_samples(ds) for ds in series])
    return np.concatenate([read_pose_sr(ds)["pointer"][1] for ds in series])


def test_project_bag_keeps_its_series_and_survives_dicom_mcap_dicom(tmp_path, capsys):
    (video, ecg, pose), samples, positions = project_bag(tmp_path / "own")
    first = tmp_path / "first"
    # 1 s segments: the recorder's segmentation cuts each stream into 2 instances.
    assert main([str(tmp_path / "own"), str(first), "--max-segment-s", "1", "--quiet"]) == 0
    got = series_of(first)
    assert set(got) == {video.series_instance_uid, ecg.series_instance_uid,
                        pose.series_instance_uid}
    assert [len(got[d.series_instance_uid]) for d in (video, ecg, pose)] == [2, 2, 2]
    check_valid(instances(first))
    assert recorded(got[video.series_instance_uid], "video") == 60
    assert np.array_equal(recorded(got[ecg.series_instance_uid], "waveform"), samples)
    assert np.allclose(recorded(got[pose.series_instance_uid], "pose"), positions,
                       atol=1e-6)
    assert got[ecg.series_instance_uid][0].StudyInstanceUID == \
        video.session.study.study_instance_uid
    index = orthanc_indexes(instances(first), tmp_path / "orthanc")
    assert len(index["series"]) == 3 and len(index["instances"]) == 6
    # DICOM -> MCAP (rosbag2) -> DICOM: the same samples again.
    exported = tmp_path / "exported"
    assert main(["--to-mcap", str(first), str(exported), "--quiet"]) == 0
    assert (exported / "metadata.yaml").is_file() and list(exported.glob("*.mcap"))
    second = tmp_path / "second"
    assert main([str(exported), str(second), "--quiet"]) == 0
    capsys.readouterr()
    again = series_of(second)
    assert set(again) == set(got)
    assert recorded(again[video.series_instance_uid], "video") == 60
    assert np.array_equal(recorded(again[ecg.series_instance_uid], "waveform"), samples)
    assert np.allclose(recorded(again[pose.series_instance_uid], "pose"), positions,
                       atol=1e-6)
    check_valid(instances(second))


@pytest.mark.parametrize("case", ["missing", "unknown_topic", "corrupt", "bad_streams",
                                  "not_a_study", "bad_option", "bad_context"])
def test_bad_input_is_one_line_and_exit_1(tmp_path, capsys, case):
    bag = b.write_bag(tmp_path / "bag", [b.pose_stamped("/tool", T0, (0, 0, 0),
                                                        (0, 0, 0, 1))])
    corrupt = tmp_path / "corrupt.mcap"
    corrupt.write_bytes(next(bag.glob("*.mcap")).read_bytes()[:300])
    (tmp_path / "streams.yaml").write_text("{/tool: [1, 2]}\n")
    (tmp_path / "empty").mkdir()
    out = str(tmp_path / "out")
    argv = {
        "missing": [str(tmp_path / "nowhere"), out],
        "unknown_topic": [str(bag), out, "--topic", "/nope"],
        "corrupt": [str(corrupt), out],
        "bad_streams": [str(bag), out, "--streams", str(tmp_path / "streams.yaml")],
        "not_a_study": ["--to-mcap", str(tmp_path / "empty"), out],
        "bad_option": [str(bag), out, "--max-segment-s", "0"],
        "bad_context": [str(bag), out, "--sex", "X"],
    }[case]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main([*argv, "--quiet"]) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dicom_or_convert: "), captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing half-written


def test_patient_and_study_from_the_modality_worklist(tmp_path, capsys):
    worklist = tmp_path / "worklist" / "WORKLIST"
    worklist.mkdir(parents=True)
    (worklist / "lockfile").touch()  # wlmscpfs locks the folder through this file
    for dump in sorted((Path(__file__).resolve().parents[3] / "config" / "worklist")
                       .glob("*.dump")):
        subprocess.run(["dump2dcm", "--write-dataset", str(dump),
                        str(worklist / (dump.stem + ".wl"))], check=True,
                       capture_output=True, timeout=30)
    port = free_tcp_port()
    scp = subprocess.Popen(["wlmscpfs", "--single-process", "-dfp", str(worklist.parent),
                            str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:  # until wlmscpfs accepts connections
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and scp.poll() is None, "wlmscpfs down"
                time.sleep(0.05)
        bag = b.write_bag(tmp_path / "bag", [
            b.pose_stamped("/tool", T0 + i * 10_000_000, (0.0, 0.0, i * 0.01),
                           (0, 0, 0, 1)) for i in range(20)])
        where = ["--worklist", f"127.0.0.1:{port}", "--worklist-aet", "WORKLIST", "--quiet"]
        # Two cases scheduled: the converter does not guess which one the bag is.
        assert main([str(bag), str(tmp_path / "out"), *where]) == 1
        assert "worklist: 2 matching items" in capsys.readouterr().err
        assert main([str(bag), str(tmp_path / "out"), *where,
                     "--accession", "ACC-20241124-02"]) == 0
    finally:
        scp.terminate()
        scp.wait(timeout=10)
    (path,) = instances(tmp_path / "out")
    ds = pydicom.dcmread(path)
    assert (ds.PatientID, ds.AccessionNumber) == ("P-000456", "ACC-20241124-02")
    assert ds.ReferencedRequestSequence[0].AccessionNumber == "ACC-20241124-02"
    check_valid([path])
