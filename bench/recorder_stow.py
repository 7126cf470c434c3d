#!/usr/bin/env python3
"""Recorder: STOW-RS next to C-STORE, the same instances to the same kind of Orthanc.

(a) Throughput: recorder_store.py's set of instances (1-minute ECG and hemodynamic waveforms,
10 s 320x240 H.264 video, pose SR) sent by the StorageSender to a fresh Orthanc with its
DICOMweb plugin, once by C-STORE (no Storage Commitment) and once by STOW-RS (requests of
``--batch`` instances) to another fresh one. (b) Memory: a backlog of large instances
(``--large`` x ``--large-mib`` MiB) sent by STOW-RS in ONE request by a fresh process, whose
peak RSS (VmHWM) is compared with the same process before sending: the body is streamed
from the files, so the peak does not grow with the request.

    tools/with_env python bench/recorder_stow.py [--quick]
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
from dicom_or_test_common.examples import example_descriptor, now_ns
from dicom_or_test_common.peers import Orthanc
from recorder_store import make_instances

from dicom_or_core.archive.spool import STORED, Spool
from dicom_or_core.iod.video import build_multiframe_sc
from dicom_or_core.model.uid import new_uid
from dicom_or_core.scu.storage import DIMSE, STOWRS, PacsConfig, StorageSender


def send(spool: Spool, config: PacsConfig) -> float:
    """Wall time to store every instance of ``spool``."""
    count = len(spool.rows())
    sender = StorageSender(spool, config)
    start = time.perf_counter()
    while spool.counts()[STORED] < count:
        sender.run_once()
    wall = time.perf_counter() - start
    sender.stop()
    return wall


def throughput(tmp: Path, count: int, batch: int) -> None:
    spool_a, spool_b = Spool(tmp / "rec_a"), Spool(tmp / "rec_b")
    make_instances(spool_a, count)
    make_instances(spool_b, count)
    total = sum(r.size for r in spool_a.rows())
    print(f"recorder_stow: {count} instances, {total / 1e6:.1f} MB per run")
    print(f"{'transport':<44} {'wall s':>8} {'inst/s':>8} {'MB/s':>8}")
    for name, spool, protocol in (("C-STORE (pynetdicom, one association)", spool_a, DIMSE),
                                  (f"STOW-RS (requests, {batch} per request)", spool_b,
                                   STOWRS)):
        with Orthanc(tmp / f"orthanc_{protocol}", dicomweb=True) as orthanc:
            config = PacsConfig(ae_title="ORTHANC", port=orthanc.dicom_port,
                                storage_commitment=False, batch_size=batch, protocol=protocol,
                                stow_url=f"http://127.0.0.1:{orthanc.http_port}/dicom-web")
            wall = send(spool, config)
            assert orthanc.rest("GET", "/statistics")["CountInstances"] == count
        size = sum(r.size for r in spool.rows())
        print(f"{name:<44} {wall:8.2f} {count / wall:8.1f} {size / 1e6 / wall:8.1f}")


def memory(tmp: Path, large: int, large_mib: int) -> None:
    spool = Spool(tmp / "rec_large")
    video = example_descriptor("video")
    frames_per = max(1, large_mib * 2**20 // (1080 * 1920 * 3))
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 255, (1080, 1920, 3), dtype=np.uint8)
    t0 = now_ns()
    for _ in range(large):
        spool.write_instance(build_multiframe_sc(
            video, [frame] * frames_per, [t0 + i * 33_000_000 for i in range(frames_per)],
            new_uid()))
    spool.close()
    with Orthanc(tmp / "orthanc_large", dicomweb=True) as orthanc:
        url = f"http://127.0.0.1:{orthanc.http_port}/dicom-web"
        out = subprocess.run([sys.executable, __file__, "--send-large", str(tmp / "rec_large"),
                              url], capture_output=True, text=True, timeout=1800, check=True)
        figures = json.loads(out.stdout.strip().splitlines()[-1])
        assert orthanc.rest("GET", "/statistics")["CountInstances"] == large
    print(f"STOW-RS one request of {large} x {figures['mib'] / large:.0f} MiB = "
          f"{figures['mib']:.0f} MiB in {figures['wall_s']:.1f} s "
          f"({figures['mib'] / figures['wall_s']:.0f} MiB/s): sender process peak RSS "
          f"{figures['rss_before_mib']:.0f} MiB before, {figures['rss_peak_mib']:.0f} MiB "
          "after")


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM; ru_maxrss would include the parent's at
    fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def send_large(root: str, url: str) -> None:
    """In a fresh process: send the whole spool in one STOW-RS request, print figures."""
    spool = Spool(root)
    rows = spool.rows()
    before = peak_rss_mib()
    wall = send(spool, PacsConfig(protocol=STOWRS, stow_url=url, batch_size=len(rows),
                                  max_request_bytes=1 << 40, timeout_s=600))
    peak = peak_rss_mib()
    print(json.dumps({"mib": sum(r.size for r in rows) / 2**20, "wall_s": wall,
                      "rss_before_mib": before, "rss_peak_mib": peak}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 instances, 2 x 64 MiB")
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--large", type=int, default=4)
    parser.add_argument("--large-mib", type=int, default=128)
    parser.add_argument("--send-large", nargs=2, metavar=("SPOOL", "URL"),
                        help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.send_large:
        send_large(*options.send_large)
        return 0
    count = 8 if options.quick else 60
    if options.quick:
        options.large, options.large_mib = 2, 64
    with tempfile.TemporaryDirectory() as tmp:
        throughput(Path(tmp), count, options.batch)
        memory(Path(tmp), options.large, options.large_mib)
    return 0


if __name__ == "__main__":
    sys.exit(main())
