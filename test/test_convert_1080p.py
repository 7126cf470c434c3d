"""The must-show bag conversion: a 1080p30 video bag of 60 s (plus a tracked tool) written with
rosbags, converted by dicom_or_convert's core path, with its speed in frames per second
printed next to ffmpeg encoding the same frames in the same run (bench/convert_bag.py, run
here as the soak test runs bench/soak.py); then every instance is checked as a user would:
dciodvfy 0 errors, Orthanc indexes it, the frame count is the bag's.
``DICOM_OR_CONVERT_S`` sets the length (default 60 s, the issue's minimum)."""

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pydicom
from conftest import require
from dicom_or_test_common.peers import Orthanc, dciodvfy

BENCH = Path(__file__).resolve().parents[1] / "bench" / "convert_bag.py"
SECONDS = float(os.environ.get("DICOM_OR_CONVERT_S", "60"))


def test_1080p_video_bag_of_60_s_converts_to_valid_dicom(tmp_path):
    require("dciodvfy", "ffmpeg")
    figures = tmp_path / "figures.json"
    run = subprocess.run(
        [sys.executable, str(BENCH), "--seconds", str(SECONDS), "--output", str(tmp_path),
         "--json", str(figures)],
        capture_output=True, text=True, timeout=SECONDS * 20 + 300)
    print(run.stdout[-3000:])
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    r = json.loads(figures.read_text())
    assert r["frames"] == int(SECONDS * 30) == r["converted_frames"]
    print(f"conversion {r['ours_fps']:.1f} frames/s; reference ffmpeg {r['ffmpeg_fps']:.1f} "
          f"frames/s; video {SECONDS:g} s")
    paths = [Path(p) for p in r["instances"]]
    datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    video = [ds for ds in datasets if "NumberOfFrames" in ds]
    assert sum(int(ds.NumberOfFrames) for ds in video) == r["frames"]
    assert {(int(ds.Rows), int(ds.Columns)) for ds in video} == {(1080, 1920)}
    assert any(ds.Modality == "SR" for ds in datasets)   # the tracked tool
    for path in paths:
        count, errors = dciodvfy(path)
        assert count == 0, (path.name, errors)
    with Orthanc(tmp_path / "orthanc") as orthanc:
        for path in paths:
            request = urllib.request.Request(
                f"http://127.0.0.1:{orthanc.http_port}/instances", data=path.read_bytes(),
                method="POST", headers={"Content-Type": "application/dicom"})
            with urllib.request.urlopen(request, timeout=120) as response:
                assert json.loads(response.read())["Status"] == "Success", path.name
        assert len(orthanc.rest("GET", "/instances")) == len(paths)
        assert len(orthanc.rest("GET", "/studies")) == 1
