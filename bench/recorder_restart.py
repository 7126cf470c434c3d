#!/usr/bin/env python3
"""Recorder restart: how long until it records again on a folder an earlier day left.

The recorder process is started on (a) an empty folder, the reference of the same run, and
(b) a folder with ``--instances`` finished instances plus ``--journals`` segments a killed
run left behind (each a 60 s ECG journal). Printed: seconds from process start to
"recording into" (the node is up and following streams; recovery then runs beside it) and
to "recovery done" (every leftover finalised).

    tools/with_env python bench/recorder_restart.py [--quick] [--instances 500] [--journals 8]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from dicom_or_test_common.examples import example_descriptor, now_ns, synthetic_waveform
from dicom_or_test_common.ros import isolated_env, reserved_domain_id

from dicom_or_core.archive.spool import Spool
from dicom_or_core.iod.waveform import build_waveform
from dicom_or_core.model.uid import new_uid
from dicom_or_recorder.segments import RecorderOptions, WaveformRecorder


def prepare(folder: Path, instances: int, journals: int) -> None:
    spool = Spool(folder)
    descriptor = example_descriptor("ecg")
    data = synthetic_waveform(5000, 3)
    t0 = now_ns() - 3600 * 10**9
    for k in range(instances):
        ds = build_waveform(descriptor, data[:500], t0 + k * 10**9, new_uid(), k + 1)
        spool.write_instance(ds)
    for _ in range(journals):  # segments of a run killed mid-recording
        recorder = WaveformRecorder(example_descriptor("ecg"), spool, RecorderOptions())
        for c in range(600):  # 60 s of 100 ms chunks
            recorder.feed(data[(c % 100) * 50:(c % 100 + 1) * 50], t0 + c * 10**8, c * 50, c)
        recorder.journal.close()  # left open: the process "died" here
    spool.close()


def timed_start(folder: Path) -> tuple[float, float]:
    with reserved_domain_id() as domain:
        started = time.monotonic()
        proc = subprocess.Popen(
            ["recorder", "--ros-args", "-p", f"recordings_dir:={folder}"],
            env=isolated_env(domain), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        up = done = float("nan")
        try:
            for line in proc.stdout:
                if "recording into" in line and up != up:
                    up = time.monotonic() - started
                    if "finalising" not in line and not any(
                            (folder / ".spool" / "journal").iterdir()):
                        done = up
                        break
                if "recovery done" in line:
                    done = time.monotonic() - started
                    break
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return up, done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument("--journals", type=int, default=8)
    options = parser.parse_args()
    if options.quick:
        options.instances, options.journals = 100, 2
    with tempfile.TemporaryDirectory() as tmp:
        empty, full = Path(tmp) / "empty", Path(tmp) / "full"
        empty.mkdir()
        prepare(full, options.instances, options.journals)
        rows = [("empty folder (reference)", *timed_start(empty)),
                (f"{options.instances} instances + {options.journals} leftover journals",
                 *timed_start(full))]
    print(f"{'folder':<44}{'recording (s)':>14}{'recovery done (s)':>19}")
    for name, up, done in rows:
        print(f"{name:<44}{up:>14.2f}{done:>19.2f}")
    return 0 if np.isfinite(rows[1][1]) else 1


if __name__ == "__main__":
    sys.exit(main())
