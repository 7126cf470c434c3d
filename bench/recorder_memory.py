#!/usr/bin/env python3
"""Recorder memory: a 4K lossless segment and a PACS backlog, file to file.

Each case runs in a child process and reports its peak RSS (VmHWM):

* a lossless 4K segment (3840x2160 RGB frames, ``--frames`` of them, ~25 MB each) journaled
  and finalised into a Multi-frame True Color SC instance the way the recorder does it
  (frames copied from the journal into Pixel Data one at a time), next to the reference of
  the same run: the same frames built into one instance in memory (``build_multiframe_sc``,
  what finalising used to do);
* a PACS backlog: ``--backlog-gb`` of large instances (``--instance-mb`` each) sent by the
  recorder's StorageSender to dcmtk ``storescp --ignore`` (receives, stores nothing), next
  to the reference of one instance read whole with pydicom (what sending used to do per
  instance of a batch).

    tools/with_env python bench/recorder_memory.py [--quick] [--frames 120] [--backlog-gb 10]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def case_lossless(folder: str, frames: int, in_memory: bool) -> dict:
    from dicom_or_test_common.examples import example_descriptor, now_ns

    from dicom_or_core.archive.spool import Spool
    from dicom_or_core.iod.video import build_multiframe_sc
    from dicom_or_recorder.segments import RecorderOptions, VideoRecorder

    d = example_descriptor("video")
    d.rows, d.columns, d.nominal_rate_hz = 2160, 3840, 60.0
    image = np.random.default_rng(0).integers(0, 255, (2160, 3840, 3), dtype=np.uint8)
    t0 = now_ns() - 600 * 10**9
    started = time.monotonic()
    if in_memory:
        ds = build_multiframe_sc(d, [image] * frames, [t0 + k * 16_666_667
                                                       for k in range(frames)], "1.2.3.4")
        ds.save_as(Path(folder) / "reference.dcm", enforce_file_format=True)
        size = (Path(folder) / "reference.dcm").stat().st_size
    else:
        spool = Spool(folder)
        rec = VideoRecorder(d, spool, RecorderOptions(video_mode="lossless",
                                                      max_segment_s=3600))
        for k in range(frames):
            rec.feed(image, t0 + k * 16_666_667, k)
        [uid] = rec.stop()
        size = spool.absolute(spool.get(uid)).stat().st_size
    return {"seconds": time.monotonic() - started, "bytes": size, "peak_mib": peak_rss_mib()}


def prepare_backlog(folder: str, gigabytes: float, instance_mb: int) -> dict:
    """Spool ``gigabytes`` of video instances of ``instance_mb`` each (state final)."""
    from dicom_or_test_common.examples import example_descriptor, now_ns

    from dicom_or_core.archive.spool import Spool
    from dicom_or_core.iod.codec import choose_codec
    from dicom_or_core.iod.video import build_video
    from dicom_or_core.model.uid import new_uid

    d = example_descriptor("video")
    choice = choose_codec(d.rows, d.columns, d.nominal_rate_hz)
    spool = Spool(folder)
    count = max(1, round(gigabytes * 1024 / instance_mb))
    bitstream = np.random.default_rng(1).bytes(instance_mb << 20)
    stamps = [now_ns() - 10**9 + k * 33_333_333 for k in range(30)]
    for k in range(count):
        spool.write_instance(build_video(d, bitstream, choice, stamps, new_uid(), k + 1))
    return {"instances": count}


def case_backlog(folder: str, read_whole: bool) -> dict:
    from dicom_or_test_common.peers import free_tcp_port
    from pydicom import dcmread

    from dicom_or_core.archive.spool import FINAL, Spool
    from dicom_or_core.scu.storage import PacsConfig, StorageSender

    spool = Spool(folder)
    if read_whole:  # the reference: one instance decoded whole, as sending used to
        started = time.monotonic()
        dcmread(spool.absolute(spool.rows()[0]))
        return {"seconds": time.monotonic() - started, "instances": 1,
                "peak_mib": peak_rss_mib()}
    rows = spool.rows(FINAL)
    port = free_tcp_port()
    # dcmtk's storescp as the PACS: accepts every transfer syntax it knows (+xa), receives
    # each instance whole and stores nothing (--ignore), so the disk is not the limit.
    pacs = subprocess.Popen(["storescp", "--ignore", "+xa", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        sender = StorageSender(spool, PacsConfig(ae_title="STORESCP", port=port,
                                                 storage_commitment=False,
                                                 initial_backoff_s=0.2))
        started = time.monotonic()
        while spool.counts()["stored"] < len(rows) and time.monotonic() - started < 1800:
            sender.run_once()
        elapsed = time.monotonic() - started
    finally:
        pacs.terminate()
        pacs.wait()
    return {"seconds": elapsed, "instances": spool.counts()["stored"],
            "peak_mib": peak_rss_mib()}


def run_child(*args: str) -> dict:
    out = subprocess.run([sys.executable, str(HERE), "--child", *args], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--backlog-gb", type=float, default=10.0)
    parser.add_argument("--instance-mb", type=int, default=500)
    parser.add_argument("--child", nargs="+")
    options = parser.parse_args()
    if options.child:
        kind, folder, *rest = options.child
        if kind == "lossless":
            result = case_lossless(folder, int(rest[0]), rest[1] == "memory")
        elif kind == "prepare":
            result = prepare_backlog(folder, float(rest[0]), int(rest[1]))
        else:
            result = case_backlog(folder, rest[0] == "whole")
        print(json.dumps(result))
        return 0
    if options.quick:
        options.frames, options.backlog_gb, options.instance_mb = 20, 1.0, 200
    rows = []
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        for how in ("file", "memory"):
            folder = Path(tmp) / f"lossless-{how}"
            folder.mkdir()
            r = run_child("lossless", str(folder), str(options.frames), how)
            rows.append((f"4K lossless segment, {options.frames} frames "
                         f"({r['bytes'] / 2**30:.2f} GiB), "
                         + ("recorder (file to file)" if how == "file"
                            else "reference: built in memory"), r))
            subprocess.run(["rm", "-rf", str(folder)], check=False)
        folder = Path(tmp) / "backlog"
        folder.mkdir()
        count = run_child("prepare", str(folder), str(options.backlog_gb),
                          str(options.instance_mb))["instances"]
        for how in ("stream", "whole"):
            r = run_child("backlog", str(folder), how)
            rows.append((f"PACS backlog {options.backlog_gb:g} GB ({count} x "
                         f"{options.instance_mb} MB), "
                         + (f"StorageSender -> storescp, {r['instances']} stored"
                            if how == "stream" else "reference: one instance read whole"), r))
    print(f"{'case':<96}{'peak RSS MiB':>13}{'seconds':>9}")
    for name, r in rows:
        print(f"{name:<96}{r['peak_mib']:>13.0f}{r['seconds']:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
