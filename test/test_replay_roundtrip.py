"""Round trip, as a user runs it: record a demo run (dicom_or_launch or_demo), replay the
recording (dicom_or_replay through or_demo use_replay:=true, devices off) into the demo's
recorder, then compare the second recording with the first:

* waveform samples identical, poses identical to float32 (positions exact, rotation vectors
  within 1 ulp), video frame count identical and every re-encoded frame above 40 dB PSNR
  against the first recording's decoded frame, every acquisition time within 1 ms;
* during the replay the bridge lists the replayed Series like live ones (dcmtk findscu:
  the recorded Series UIDs, Retrieve URL ``ros2:``).

Small frames (320x240 at 15 fps) and about 6 s of recording keep it short on 2 cores. The
figures are printed (``pytest -s``) for the release note.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
from conftest import require
from dicom_or_test_common.peers import free_tcp_port
from graph_support import find_series
from pydicom.encaps import generate_fragments

from dicom_or_core.iod.codec import decode_frames, psnr
from dicom_or_core.iod.pose import acquisition_start_ns, quaternion_to_rotvec, read_pose_sr
from dicom_or_core.iod.video import frame_offsets_ms
from dicom_or_core.iod.waveform import read_samples
from dicom_or_core.model.context import KIND_POSE, KIND_VIDEO, KIND_WAVEFORM
from dicom_or_core.replay.sources import kind_of

RECORD_S = 6.0
VIDEO = ["video_width:=320", "video_height:=240", "video_fps:=15.0"]
MODALITIES = {"ES", "ECG", "HD", "SR"}


class Graph:
    """dicom_or_launch or_demo with its output read line by line (a stop is an orderly
    SIGINT, as a user's Ctrl-C)."""

    def __init__(self, env: dict[str, str], output: Path, port: int, *args: str) -> None:
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            ["dicom_or_launch", "or_demo", f"output_dir:={output}", f"bridge_port:={port}",
             "dicomweb_port:=0", *VIDEO, *_optional_nodes_off(), *args],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def saw(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> int:
        if self.running():
            self.process.send_signal(signal.SIGINT)
        code = self.process.wait(timeout=90)
        self._reader.join(timeout=10)
        return code

    @property
    def log(self) -> str:
        return "".join(self.lines[-80:])


def _optional_nodes_off() -> list[str]:
    """Switch off optional viewers the demo may include (they would subscribe to the video
    before the recorder does and take CPU)."""
    text = Path(__file__).resolve().parents[1].joinpath("launch", "or_demo.launch.yaml")
    return [f"{name}:=false" for name in ("use_view", "use_igtl_server", "use_foxglove")
            if f"name: {name}," in text.read_text()]


def wait_for(predicate, timeout_s: float, graph: Graph, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert graph.running(), f"graph ended while waiting for {what}:\n{graph.log}"
        assert time.monotonic() < deadline, f"no {what} after {timeout_s:g} s:\n{graph.log}"
        time.sleep(0.3)


def read_recording(root: Path) -> dict[str, list[pydicom.Dataset]]:
    """Series UID -> its stream instances in time order (snapshots and others left out)."""
    series: dict[str, list[pydicom.Dataset]] = defaultdict(list)
    for path in sorted(root.rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        if kind_of(str(ds.SOPClassUID)) is not None:
            series[str(ds.SeriesInstanceUID)].append(ds)
    for instances in series.values():
        instances.sort(key=acquisition_start_ns)
    return dict(series)


def video_of(instances):
    """(frame times ns, decoded RGB frames) of a video Series."""
    times, frames = [], []
    for ds in instances:
        t0 = acquisition_start_ns(ds)
        times += [t0 + round(float(o) * 1000) * 1000 for o in frame_offsets_ms(ds)]
        decoded = decode_frames(b"".join(generate_fragments(ds.PixelData)))
        assert len(decoded) == int(ds.NumberOfFrames)
        frames += [image for _, image in decoded]
    return np.array(times, np.int64), frames


def waveform_of(instances):
    """(sample times ns, int16 samples) of a waveform Series."""
    times, blocks = [], []
    for ds in instances:
        samples = read_samples(ds)
        fs = float(ds.WaveformSequence[0].SamplingFrequency)
        t0 = acquisition_start_ns(ds)
        times.append(t0 + np.round(np.arange(len(samples)) * 1e9 / fs).astype(np.int64))
        blocks.append(samples)
    return np.concatenate(times), np.concatenate(blocks)


def poses_of(instances):
    """Tool id -> (stamps ns, float32 positions mm, float32 rotation vectors)."""
    tools: dict[str, list] = defaultdict(list)
    for ds in instances:
        for tool, (stamps, positions, quaternions) in read_pose_sr(ds).items():
            tools[tool].append((stamps, positions, quaternions))
    out = {}
    for tool, parts in tools.items():
        stamps = np.concatenate([p[0] for p in parts])
        positions = (np.concatenate([p[1] for p in parts]) * 1000.0).astype(np.float32)
        rotvecs = quaternion_to_rotvec(np.concatenate([p[2] for p in parts])).astype(np.float32)
        out[tool] = (stamps, positions, rotvecs)
    return out


def ulps(a: np.ndarray, b: np.ndarray) -> int:
    """Largest distance in float32 units in the last place."""
    ia, ib = a.view(np.int32).astype(np.int64), b.view(np.int32).astype(np.int64)
    ia = np.where(ia < 0, -(2**31) - ia, ia)
    ib = np.where(ib < 0, -(2**31) - ib, ib)
    return int(np.max(np.abs(ia - ib))) if len(ia) else 0


def record_demo(env, output: Path, workdir: Path) -> None:
    port = free_tcp_port()
    graph = Graph(env, output, port)
    try:
        wait_for(lambda: MODALITIES <= {s.Modality for s in find_series(port, workdir)}, 90,
                 graph, "live streams at the bridge")
        time.sleep(RECORD_S)  # the recording's length
    finally:
        code = graph.stop()
    assert code == 0, graph.log


def replay_into_recorder(env, first: Path, second: Path, workdir: Path,
                         recorded: dict[str, list]) -> list[pydicom.Dataset]:
    port = free_tcp_port()
    graph = Graph(env, second, port, "use_endoscope:=false", "use_tracker:=false",
                  "use_monitor:=false", "use_replay:=true", f"replay_input:={first}",
                  "replay_wait_for_subscribers:=1", "replay_video_qos:=video_recording")
    listed: list[pydicom.Dataset] = []
    try:
        def all_listed() -> bool:
            listed[:] = [s for s in find_series(port, workdir)
                         if str(s.SeriesInstanceUID) in recorded]
            return len(listed) == len(recorded)

        wait_for(all_listed, 60, graph, "the replayed Series at the bridge")
        wait_for(lambda: graph.saw("end of the recording"), 90, graph, "the replay's end")
        # The last samples reach the recorder (reliable) before the stop finalises them.
        time.sleep(1.0)
    finally:
        code = graph.stop()
    assert code == 0, graph.log
    return listed


def test_record_replay_record_round_trip(ros_env, tmp_path):
    require("findscu")
    first, second = tmp_path / "first", tmp_path / "second"
    record_demo(ros_env, first, tmp_path)
    original = read_recording(first)
    kinds = {uid: kind_of(str(instances[0].SOPClassUID)) for uid, instances in original.items()}
    assert sorted(kinds.values()) == sorted([KIND_VIDEO, KIND_WAVEFORM, KIND_WAVEFORM,
                                             KIND_POSE]), kinds

    listed = replay_into_recorder(ros_env, first, second, tmp_path, original)
    # The bridge listed the replayed Series like live ones: a ros2: Retrieve URL each.
    assert all(str(s.RetrieveURL).startswith("ros2:") for s in listed)
    assert {s.Modality for s in listed} == MODALITIES

    again = read_recording(second)
    assert set(again) == set(original), "the replay's Series are the recorded ones"
    figures: dict[str, float] = {"max_time_error_ms": 0.0, "min_psnr_db": float("inf")}
    counts = {}
    for uid, kind in kinds.items():
        a, b = original[uid], again[uid]
        assert {str(d.StudyInstanceUID) for d in a + b} == {str(a[0].StudyInstanceUID)}
        assert a[0].SynchronizationFrameOfReferenceUID == b[0].SynchronizationFrameOfReferenceUID
        modality = str(a[0].Modality)
        if kind == KIND_VIDEO:
            times_a, frames_a = video_of(a)
            times_b, frames_b = video_of(b)
            assert len(frames_b) == len(frames_a), (len(frames_a), len(frames_b))
            quality = [psnr(x, y) for x, y in zip(frames_a, frames_b, strict=True)]
            figures["min_psnr_db"] = min(quality)
            figures["mean_psnr_db"] = float(np.mean(quality))
            assert min(quality) > 40.0, min(quality)
            counts[modality] = f"{len(frames_a)} frames"
        elif kind == KIND_WAVEFORM:
            times_a, samples_a = waveform_of(a)
            times_b, samples_b = waveform_of(b)
            np.testing.assert_array_equal(samples_b, samples_a)
            counts[modality] = f"{len(samples_a)} samples x {samples_a.shape[1]} channels"
        else:
            tools_a, tools_b = poses_of(a), poses_of(b)
            assert set(tools_a) == set(tools_b)
            times_a = np.concatenate([tools_a[t][0] for t in sorted(tools_a)])
            times_b = np.concatenate([tools_b[t][0] for t in sorted(tools_a)])
            worst = 0
            for tool in tools_a:
                np.testing.assert_array_equal(tools_b[tool][1], tools_a[tool][1])
                worst = max(worst, ulps(tools_a[tool][2], tools_b[tool][2]))
            assert worst <= 1, f"rotation vectors differ by {worst} ulp"
            figures["rotation_max_ulp"] = worst
            counts[modality] = f"{len(times_a)} poses of {len(tools_a)} tools"
        assert len(times_a) == len(times_b)
        error_ms = float(np.max(np.abs(times_a - times_b))) / 1e6
        figures["max_time_error_ms"] = max(figures["max_time_error_ms"], error_ms)
    assert figures["max_time_error_ms"] < 1.0, figures
    print("\nreplay round trip:", ", ".join(f"{m}: {c}" for m, c in sorted(counts.items())))
    print("replay round trip:", ", ".join(f"{k} {v:.4g}" for k, v in figures.items()))
