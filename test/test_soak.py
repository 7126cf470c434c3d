"""The soak benchmark's CI-sized run: the full OR graph for a few minutes (4 tools at 1 kHz,
12-lead ECG, hemodynamic, QVGA video), then what a user checks: nothing the recorder took is
lost, every instance valid, nothing left unfinalised. ``DICOM_OR_SOAK_MIN`` sets the length
(default 5 minutes); ``bench/soak.py`` is the same run at 1080p for an hour."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pydicom
from conftest import require

from dicom_or_core.iod.pose import read_pose_sr

SOAK = Path(__file__).resolve().parents[1] / "bench" / "soak.py"
MINUTES = os.environ.get("DICOM_OR_SOAK_MIN", "5")


def test_soak_records_every_stream_without_loss(tmp_path):
    require("dciodvfy")
    figures = tmp_path / "soak.json"
    run = subprocess.run(
        # QVGA at 15 fps: the encoder keeps a wide margin on a busy 2-core CI machine, so a
        # dropped frame here is a defect, not load (bench/soak.py runs 1080p30).
        [sys.executable, str(SOAK), "--minutes", MINUTES, "--width", "320", "--height", "240",
         "--fps", "15", "--output", str(tmp_path), "--json", str(figures)],
        capture_output=True, text=True, timeout=float(MINUTES) * 60 + 600)
    print(run.stdout[-3000:])
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    r = json.loads(figures.read_text())
    assert r["launcher_exit"] == 0
    assert r["journals_left"] == 0 and not r["dciodvfy_errors"], r["dciodvfy_errors"]
    streams = {s["kind"]: s for s in r["streams"]}
    assert set(streams) == {"video", "pose", "waveform"}
    for s in r["streams"]:
        assert s["errors"] == 0, s
        assert not s.get("dropped_backpressure") and not s.get("dropped_at_shutdown"), s
        if s["kind"] != "video":  # RELIABLE streams: no gap; video is best effort (counted)
            assert s["lost_messages"] == 0, s
    # What the status reported before the stop is in the files after it (and more).
    archive = Path(r["output"])
    frames = poses = 0
    for path in archive.rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if ds.Modality == "ES":
            frames += int(ds.NumberOfFrames)
        elif ds.Modality == "SR":
            poses += sum(len(t[0]) for t in read_pose_sr(pydicom.dcmread(path)).values())
    assert frames >= streams["video"]["samples"]
    assert poses >= streams["pose"]["samples"]
