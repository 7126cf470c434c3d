#!/usr/bin/env python3
"""dicom_or_convert: a 1080p30 video bag into DICOM, in frames per second next to ffmpeg.

The bag (written here with rosbags, rosbag2 with mcap storage, as a camera driver records
it): ``sensor_msgs/CompressedImage`` JPEG frames at 1920x1080, 30 fps, for ``--seconds``
(default 60), beside a tracked tool (``geometry_msgs/PoseStamped`` at 60 Hz). Our path is
the whole conversion (:func:`dicom_or_core.bags.to_dicom.convert_bag` through the
recorder's stream recorders): read the bag, decode each JPEG, encode H.264 (libx264 High
Profile Level 4.1, CRF 18, preset superfast, zero latency, as the recorder), mux MPEG-TS,
write the Video Endoscopic / Photographic instance(s) and the pose SR. Reference in the same
run: the ffmpeg command line encoding the same decoded frames (rawvideo pipe) with the same
encoder settings -- the encoder alone, without bag reading, JPEG decoding or DICOM.

    tools/with_env python bench/convert_bag.py [--quick] [--seconds S] [--output DIR]
                                              [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
from dicom_or_test_common import bags as b

from dicom_or_core.bags.reader import Bag
from dicom_or_core.bags.to_dicom import convert_bag
from dicom_or_recorder.segments import RecorderOptions, recorder_for

ROWS, COLUMNS, RATE = 1080, 1920, 30
PERIOD = 30          # distinct frames of the moving pattern (JPEG-encoded once each)
CRF, PRESET = 18, "superfast"


def write_bag(path: Path, seconds: float) -> tuple[int, list[bytes], float]:
    """The video bag; (frames, the distinct JPEGs, seconds it took)."""
    start = time.perf_counter()
    jpegs = [b.jpeg(np.ascontiguousarray(f[:, :, ::-1]), 90)
             for f in b.moving_pattern(ROWS, COLUMNS, PERIOD, PERIOD)]
    frames = int(seconds * RATE)
    t0 = time.time_ns() - int((seconds + 60) * 1e9)

    def messages():
        poses = 0
        for i in range(frames):
            t = t0 + round(i * 1e9 / RATE)
            yield b.compressed("/camera/image/compressed", t, jpegs[i % PERIOD])
            while poses * 1e9 / 60 <= i * 1e9 / RATE:
                tp = t0 + round(poses * 1e9 / 60)
                yield b.pose_stamped("/tracker/tool", tp, (0.1, 0.001 * (poses % 100), 0.4),
                                     (0.0, 0.0, 0.0, 1.0))
                poses += 1

    b.write_bag(path, messages())
    return frames, jpegs, time.perf_counter() - start


def ours(bag_path: Path, output: Path) -> tuple[float, int, list[str]]:
    """(wall seconds, video frames, instance paths) of the conversion."""
    options = RecorderOptions(video_quality=CRF, video_preset=PRESET)
    start = time.perf_counter()
    with Bag(bag_path, b.MSG_DIRS) as bag:
        report = convert_bag(bag, output, lambda d, spool: recorder_for(d, spool, options))
    return (time.perf_counter() - start, report.video_frames,
            [str(p) for p in report.instances])


def ffmpeg(jpegs: list[bytes], frames: int) -> float:
    """Wall seconds of ffmpeg encoding the same decoded frames with the same settings."""
    decoded = [cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR).tobytes()
               for j in jpegs]
    args = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "rawvideo",
            "-pix_fmt", "bgr24", "-s", f"{COLUMNS}x{ROWS}", "-r", str(RATE), "-i", "-",
            "-c:v", "libx264", "-preset", PRESET, "-tune", "zerolatency", "-crf", str(CRF),
            "-profile:v", "high", "-level", "4.1", "-pix_fmt", "yuv420p",
            "-f", "mpegts", "pipe:1"]
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    sink = threading.Thread(target=lambda: proc.stdout.read() if proc.stdout else None)
    sink.start()
    for i in range(frames):
        proc.stdin.write(decoded[i % PERIOD])
    proc.stdin.close()
    proc.wait()
    sink.join()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 s instead of 60 s")
    parser.add_argument("--seconds", type=float, default=0.0)
    parser.add_argument("--output", help="keep the bag and the study here")
    parser.add_argument("--json", help="write the figures here")
    options = parser.parse_args()
    seconds = options.seconds or (10.0 if options.quick else 60.0)
    if not shutil.which("ffmpeg"):
        print("ffmpeg not installed", file=sys.stderr)
        return 2
    work = Path(options.output or tempfile.mkdtemp(prefix="convert_bag-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        frames, jpegs, write_s = write_bag(work / "bag", seconds)
        bag_mb = sum(p.stat().st_size for p in (work / "bag").iterdir()) / 1e6
        print(f"convert_bag: {frames} frames {COLUMNS}x{ROWS} @ {RATE} fps ({seconds:g} s), "
              f"CompressedImage JPEG bag {bag_mb:.0f} MB written in {write_s:.1f} s, "
              f"libx264 preset {PRESET} CRF {CRF}, {os.cpu_count()} cores")
        ours_s, converted, paths = ours(work / "bag", work / "dicom")
        ref_s = ffmpeg(jpegs, frames)
        print(f"{'path':<52} {'wall s':>8} {'fps':>7} {'RT factor':>10}")
        print(f"{'dicom_or_convert (bag -> JPEG decode -> DICOM H.264)':<52} {ours_s:8.2f} "
              f"{converted / ours_s:7.1f} {seconds / ours_s:10.2f}")
        print(f"{'reference: ffmpeg CLI (same frames, rawvideo -> TS)':<52} {ref_s:8.2f} "
              f"{frames / ref_s:7.1f} {seconds / ref_s:10.2f}")
        figures = {"seconds": seconds, "frames": frames, "converted_frames": converted,
                   "ours_s": ours_s, "ours_fps": converted / ours_s, "ffmpeg_s": ref_s,
                   "ffmpeg_fps": frames / ref_s, "bag_mb": bag_mb, "instances": paths}
        if options.json:
            Path(options.json).write_text(json.dumps(figures, indent=2))
    finally:
        if not options.output:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
