#!/usr/bin/env python3
"""Recorder: how long a 1080p30 video frame holds the subscription callback.

A paced producer (one frame every 1/30 s, as a camera) hands 1920x1080 RGB frames to the
recorder's ROS-free video path, the way the node's subscription callback does:

* reference, same run: the old path, ``VideoRecorder.feed`` in the callback (encode + journal
  before the callback returns);
* ours: ``VideoEncoderQueue.offer`` (the frame is queued; the encoder thread encodes and
  journals it), with the default preset and with a preset too slow for real time, which
  shows the queue absorbing then dropping (``dropped_backpressure``) instead of stalling.

Printed per path: callback hold time per frame (median, p99, max), the producer's worst
lateness against its 30 fps schedule (what delays DDS's taking of the next frame), frames
recorded and dropped. Times are wall clock on a shared machine: compare rows of one run.

    tools/with_env python bench/recorder_queue.py [--quick] [--frames N] [--slow-preset P]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np
import pydicom
from dicom_or_test_common.examples import example_descriptor, now_ns, synthetic_rgb

from dicom_or_core.archive.spool import Spool
from dicom_or_recorder.segments import RecorderOptions, VideoRecorder
from dicom_or_recorder.video_queue import VideoEncoderQueue

ROWS, COLUMNS, RATE = 1080, 1920, 30.0
PERIOD_S = 1.0 / RATE


def paced(images: list[np.ndarray], take: Callable[[np.ndarray, int, int], object]
          ) -> tuple[list[float], float]:
    """Call ``take`` at 30 fps; return per-call hold times (s) and the worst lateness (s)."""
    holds, worst_late = [], 0.0
    t0_ns = now_ns()
    start = time.perf_counter()
    for i, image in enumerate(images):
        due = start + i * PERIOD_S
        now = time.perf_counter()
        if now < due:
            time.sleep(due - now)  # the camera's pace, not a synchronisation
        else:
            worst_late = max(worst_late, now - due)
        t = time.perf_counter()
        take(image, t0_ns + round(i * 1e9 / RATE), i)
        holds.append(time.perf_counter() - t)
    return holds, worst_late


def frames_written(spool: Spool, uids: list[str]) -> int:
    return sum(int(pydicom.dcmread(spool.absolute(spool.get(u)), stop_before_pixels=True)
                   .NumberOfFrames) for u in uids)


def run(path: str, images: list[np.ndarray], preset: str, queue_frames: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        spool = Spool(tmp)
        recorder = VideoRecorder(example_descriptor("video", rows=ROWS, columns=COLUMNS),
                                 spool, RecorderOptions(video_preset=preset))
        queue = None
        if path == "queue":
            queue = VideoEncoderQueue(recorder, queue_frames)
            take = queue.offer
        else:
            take = recorder.feed
        wall = time.perf_counter()
        holds, late = paced(images, take)
        uids = queue.close() if queue else recorder.stop()
        wall = time.perf_counter() - wall
        recorded = frames_written(spool, uids)
        spool.close()
    ms = sorted(h * 1e3 for h in holds)
    return {"median": statistics.median(ms), "p99": ms[min(len(ms) - 1, int(len(ms) * 0.99))],
            "max": ms[-1], "late": late * 1e3, "recorded": recorded,
            "dropped": queue.dropped if queue else 0, "wall": wall}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="45 frames, queue of 5 (< 30 s)")
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--slow-preset", default="slow")
    parser.add_argument("--queue-frames", type=int, default=60)
    args = parser.parse_args()
    n = 45 if args.quick else args.frames
    queue_frames = min(args.queue_frames, 5) if args.quick else args.queue_frames
    distinct = [synthetic_rgb(ROWS, COLUMNS, i) for i in range(min(n, 30))]
    images = [distinct[i % len(distinct)] for i in range(n)]
    print(f"{n} frames 1920x1080 RGB paced at 30 fps; load average "
          f"{os.getloadavg()[0]:.1f}; video_queue_frames {queue_frames}")
    rows = [("reference: feed() in the callback, superfast", "feed", "superfast"),
            ("ours: queue offer(), superfast", "queue", "superfast"),
            (f"reference: feed() in the callback, {args.slow_preset}", "feed",
             args.slow_preset),
            (f"ours: queue offer(), {args.slow_preset}", "queue", args.slow_preset)]
    print("| path | hold median ms | hold p99 ms | hold max ms | worst lateness ms | "
          "frames recorded | dropped_backpressure | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for label, path, preset in rows:
        r = run(path, images, preset, queue_frames)
        print(f"| {label} | {r['median']:.2f} | {r['p99']:.2f} | {r['max']:.2f} | "
              f"{r['late']:.1f} | {r['recorded']}/{n} | {r['dropped']} | {r['wall']:.1f} |",
              flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
