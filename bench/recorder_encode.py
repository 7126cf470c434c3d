#!/usr/bin/env python3
"""Recorder: encoding 1080p30 into a DICOM H.264 instance, as a real-time factor.

Our path (what the recorder does per frame): RGB frame -> yuv420p -> libx264 (High Profile
Level 4.1, CRF 18, preset superfast, zero latency) -> packet, then MPEG-TS mux + Video
Endoscopic Image dataset. Reference in the same run: the ffmpeg command line encoding the
same raw RGB frames piped as rawvideo with the same encoder settings.
Real-time factor = video duration / wall time (> 1: faster than real time).

    tools/with_env python bench/recorder_encode.py [--quick] [--frames N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

import numpy as np
from dicom_or_test_common.examples import example_descriptor, now_ns, synthetic_rgb

from dicom_or_core.iod.codec import (
    PTS_HZ,
    PacketEncoder,
    choose_codec,
    decode_frames,
    mux_mpegts,
    psnr,
)
from dicom_or_core.iod.video import build_video
from dicom_or_core.model.uid import new_uid

ROWS, COLUMNS, RATE = 1080, 1920, 30.0


def frames(n: int) -> list[np.ndarray]:
    distinct = [synthetic_rgb(ROWS, COLUMNS, i) for i in range(min(n, 30))]
    return [distinct[i % len(distinct)] for i in range(n)]


def ours(images: list[np.ndarray], preset: str, crf: int) -> tuple[float, int, float]:
    d = example_descriptor("video", rows=ROWS, columns=COLUMNS)
    choice = choose_codec(ROWS, COLUMNS, RATE)
    start = time.perf_counter()
    encoder = PacketEncoder(choice, ROWS, COLUMNS, "rgb8", RATE, crf, preset)
    t0 = now_ns()
    stamps, packets = [], []
    for i, image in enumerate(images):
        stamps.append(t0 + round(i * 1e9 / RATE))
        packets += encoder.encode(image, round(i * PTS_HZ / RATE))
    packets += encoder.flush()
    ts = mux_mpegts(choice, ROWS, COLUMNS, RATE, packets)
    ds = build_video(d, ts, choice, stamps, new_uid(), 1, now_ns())
    elapsed = time.perf_counter() - start
    decoded = decode_frames(ts)
    worst = min(psnr(a, b) for a, (_, b) in zip(images, decoded, strict=True))
    return elapsed, len(ds.PixelData), worst


def ffmpeg(images: list[np.ndarray], preset: str, crf: int) -> tuple[float, int]:
    args = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "rawvideo",
            "-pix_fmt", "rgb24", "-s", f"{COLUMNS}x{ROWS}", "-r", str(int(RATE)), "-i", "-",
            "-c:v", "libx264", "-preset", preset, "-tune", "zerolatency", "-crf", str(crf),
            "-profile:v", "high", "-level", "4.1", "-pix_fmt", "yuv420p",
            "-f", "mpegts", "pipe:1"]
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    out = bytearray()
    import threading
    reader = threading.Thread(target=lambda: out.extend(proc.stdout.read()))
    reader.start()
    for image in images:
        proc.stdin.write(image.tobytes())
    proc.stdin.close()
    proc.wait()
    reader.join()
    return time.perf_counter() - start, len(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="30 frames instead of 150")
    parser.add_argument("--frames", type=int, default=0)
    parser.add_argument("--preset", default="superfast")
    parser.add_argument("--crf", type=int, default=18)
    options = parser.parse_args()
    n = options.frames or (30 if options.quick else 150)
    if not shutil.which("ffmpeg"):
        print("ffmpeg not installed", file=sys.stderr)
        return 2
    images = frames(n)
    seconds = n / RATE
    print(f"recorder_encode: {n} frames 1920x1080 @ {RATE:g} fps ({seconds:.1f} s of video), "
          f"libx264 preset {options.preset} CRF {options.crf}, {os.cpu_count()} cores")
    ours_s, ours_bytes, worst_psnr = ours(images, options.preset, options.crf)
    ref_s, ref_bytes = ffmpeg(images, options.preset, options.crf)
    print(f"{'encoder':<44} {'wall s':>8} {'fps':>7} {'RT factor':>10} {'MB':>7}")
    print(f"{'dicom_or (PyAV -> DICOM Video Endoscopic)':<44} {ours_s:8.2f} "
          f"{n / ours_s:7.1f} {seconds / ours_s:10.2f} {ours_bytes / 1e6:7.2f}")
    print(f"{'reference: ffmpeg CLI (rawvideo pipe -> TS)':<44} {ref_s:8.2f} "
          f"{n / ref_s:7.1f} {seconds / ref_s:10.2f} {ref_bytes / 1e6:7.2f}")
    print(f"worst-frame PSNR of the DICOM stream: {worst_psnr:.1f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
