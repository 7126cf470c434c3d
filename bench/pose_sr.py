#!/usr/bin/env python3
"""Recorder: pose trajectories into Comprehensive 3D SR, build and read time and size.

Ours: ``build_pose_sr`` + ``save_as`` of one instance (the recorder's finalisation of a
segment: 4 tools x 1 kHz x 10 minutes = 2.4 M poses by default), then ``dcmread`` +
``read_pose_sr`` back to stamps, positions and quaternions. Reference in the same run: the
same information as raw numpy arrays (int64 stamps, float32 positions, float32 quaternions)
written with ``np.save`` and read with ``np.load``. A 1-hour recording is 6 such instances:
its read time is 6 x the instance's.

    tools/with_env python bench/pose_sr.py [--quick] [--minutes M] [--tools N] [--rate HZ]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from dicom_or_test_common.examples import example_descriptor, now_ns

from dicom_or_core.iod.pose import ToolTrack, build_pose_sr, read_pose_sr
from dicom_or_core.model.uid import new_uid


def tracks(tools: int, n: int, rate_hz: float) -> list[ToolTrack]:
    """Smooth hand motion at ``rate_hz`` with 0-50 us stamp jitter, like an optical tracker."""
    rng = np.random.default_rng(7)
    t0 = now_ns()
    seconds = np.arange(n) / rate_hz
    out = []
    for k in range(tools):
        positions = 0.2 * np.stack([np.sin(0.3 * seconds + k), np.cos(0.2 * seconds),
                                    0.5 + 0.1 * np.sin(seconds)], axis=1)
        half = 0.25 * seconds + k
        axis = np.stack([np.sin(0.1 * seconds + k), np.cos(0.1 * seconds),
                         np.full(n, 0.3)], axis=1)
        axis /= np.linalg.norm(axis, axis=1, keepdims=True)
        q = np.concatenate([axis * np.sin(half)[:, None], np.cos(half)[:, None]], axis=1)
        period = round(1e9 / rate_hz)
        stamps = t0 + np.arange(n, dtype=np.int64) * period + rng.integers(0, 50_000, n)
        out.append(ToolTrack(f"tool{k}", stamps, positions, q))
    return out


def ours(data: list[ToolTrack], folder: Path) -> tuple[float, float, float, int]:
    d = example_descriptor("pose")
    d.tool_ids = [t.tool_id for t in data]
    path = folder / "pose.dcm"
    start = time.perf_counter()
    ds = build_pose_sr(d, data, new_uid(), 1, now_ns())
    built = time.perf_counter()
    ds.save_as(path, enforce_file_format=True)
    saved = time.perf_counter()
    del ds
    start_read = time.perf_counter()
    poses = read_pose_sr(pydicom.dcmread(path))
    read = time.perf_counter() - start_read
    assert sum(len(p[0]) for p in poses.values()) == sum(len(t.stamps_ns) for t in data)
    return built - start, saved - built, read, path.stat().st_size


def reference(data: list[ToolTrack], folder: Path) -> tuple[float, float, int]:
    start = time.perf_counter()
    for k, t in enumerate(data):
        np.save(folder / f"s{k}.npy", t.stamps_ns)
        np.save(folder / f"p{k}.npy", t.positions_m.astype(np.float32))
        np.save(folder / f"q{k}.npy", t.quaternions_xyzw.astype(np.float32))
    written = time.perf_counter() - start
    start = time.perf_counter()
    for k in range(len(data)):
        for name in "spq":
            np.load(folder / f"{name}{k}.npy")
    read = time.perf_counter() - start
    size = sum(p.stat().st_size for p in folder.glob("*.npy"))
    return written, read, size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 minute instead of 10")
    parser.add_argument("--minutes", type=float, default=0)
    parser.add_argument("--tools", type=int, default=4)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--repeat", type=int, default=3, help="runs; the median is shown")
    options = parser.parse_args()
    minutes = options.minutes or (1.0 if options.quick else 10.0)
    n = round(minutes * 60 * options.rate)
    total = n * options.tools
    print(f"pose_sr: {options.tools} tools x {options.rate:g} Hz x {minutes:g} min = "
          f"{total} poses in one instance, {os.cpu_count()} cores, pydicom "
          f"{pydicom.__version__}, numpy {np.__version__}")
    data = tracks(options.tools, n, options.rate)
    runs_ours, runs_ref = [], []
    for _ in range(max(1, options.repeat)):
        with tempfile.TemporaryDirectory() as tmp:
            runs_ours.append(ours(data, Path(tmp)))
        with tempfile.TemporaryDirectory() as tmp:
            runs_ref.append(reference(data, Path(tmp)))
    build = statistics.median(r[0] for r in runs_ours)
    save = statistics.median(r[1] for r in runs_ours)
    read = statistics.median(r[2] for r in runs_ours)
    size = runs_ours[0][3]
    ref_write = statistics.median(r[0] for r in runs_ref)
    ref_read = statistics.median(r[1] for r in runs_ref)
    ref_size = runs_ref[0][2]
    per_hour = 60.0 / minutes
    print(f"{'path (median of ' + str(len(runs_ours)) + ')':<40} {'build s':>8} {'write s':>8} "
          f"{'read s':>7} {'MB':>7} {'B/pose':>7} {'read 1 h s':>10}")
    print(f"{'dicom_or Comprehensive 3D SR':<40} {build:8.2f} {save:8.2f} {read:7.2f} "
          f"{size / 1e6:7.1f} {size / total:7.2f} {read * per_hour:10.2f}")
    print(f"{'reference: numpy np.save / np.load':<40} {'':>8} {ref_write:8.2f} "
          f"{ref_read:7.2f} {ref_size / 1e6:7.1f} {ref_size / total:7.2f} "
          f"{ref_read * per_hour:10.2f}")
    print(f"finalise (build + write) {build + save:.2f} s for {total} poses; "
          f"read of a 1-hour recording ({per_hour:g} instances) {read * per_hour:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
