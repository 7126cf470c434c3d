#!/usr/bin/env python3
"""Recorder: C-STORE throughput to Orthanc, next to dcmtk storescu sending the same files.

Builds a recorder-like set of instances (1-minute ECG and hemodynamic waveforms, 10 s
320x240 H.264 video, pose SR), then sends them to a fresh Orthanc (a) with the recorder's
StorageSender (pynetdicom, one association per batch, no Storage Commitment, so both sides do
the same work) and (b) with ``storescu -R`` (dcmtk) to another fresh Orthanc.

    tools/with_env python bench/recorder_store.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from dicom_or_test_common.examples import (
    example_descriptor,
    example_session,
    now_ns,
    synthetic_rgb,
    synthetic_waveform,
)
from dicom_or_test_common.peers import Orthanc, have, run_tool

from dicom_or_core.archive.spool import STORED, Spool
from dicom_or_core.iod.codec import PTS_HZ, PacketEncoder, choose_codec, mux_mpegts
from dicom_or_core.iod.pose import ToolTrack, build_pose_sr
from dicom_or_core.iod.video import build_video
from dicom_or_core.iod.waveform import build_waveform
from dicom_or_core.model.uid import new_uid
from dicom_or_core.scu.storage import PacsConfig, StorageSender

# dcmtk's storescu (the venv also has pynetdicom's app of the same name on PATH).
DCMTK_STORESCU = "/usr/bin/storescu"


def make_instances(spool: Spool, count: int) -> None:
    session = example_session()
    ecg, hd = example_descriptor("ecg", session), example_descriptor("hd", session)
    video, pose = example_descriptor("video", session), example_descriptor("pose", session)
    choice = choose_codec(240, 320, 30)
    encoder = PacketEncoder(choice, 240, 320, "rgb8", 30)
    packets = []
    for i in range(300):
        packets += encoder.encode(synthetic_rgb(240, 320, i), round(i * PTS_HZ / 30))
    ts = mux_mpegts(choice, 240, 320, 30, packets)
    t0 = now_ns()
    stamps = [t0 + round(i * 1e9 / 30) for i in range(300)]
    q = np.tile([0.0, 0.0, 0.0, 1.0], (3600, 1))
    for i in range(count):
        kind = i % 4
        if kind == 0:
            ds = build_waveform(ecg, synthetic_waveform(30000, 3), t0, new_uid(), i + 1)
        elif kind == 1:
            ds = build_waveform(hd, synthetic_waveform(15000, 2), t0, new_uid(), i + 1)
        elif kind == 2:
            ds = build_video(video, ts, choice, stamps, new_uid(), i + 1)
        else:
            ds = build_pose_sr(pose, [ToolTrack("pointer", t0 + np.arange(3600) * 16_666_667,
                                                np.zeros((3600, 3)), q)], new_uid(), i + 1)
        spool.write_instance(ds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 instances instead of 60")
    options = parser.parse_args()
    if not have(DCMTK_STORESCU):
        print("dcmtk not installed", file=sys.stderr)
        return 2
    count = 8 if options.quick else 60
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        spool = Spool(tmp / "rec")
        start = time.perf_counter()
        make_instances(spool, count)
        built = time.perf_counter() - start
        files = [spool.absolute(r) for r in spool.rows()]
        total = sum(f.stat().st_size for f in files)
        print(f"recorder_store: {count} instances, {total / 1e6:.1f} MB (ECG 60 s, HD 60 s, "
              f"H.264 10 s, pose SR 3600 poses), built in {built:.1f} s")
        with Orthanc(tmp / "orthanc_a") as orthanc:
            sender = StorageSender(spool, PacsConfig(ae_title="ORTHANC",
                                                     port=orthanc.dicom_port,
                                                     storage_commitment=False,
                                                     batch_size=count))
            start = time.perf_counter()
            while spool.counts()[STORED] < count:
                sender.run_once()
            ours = time.perf_counter() - start
            sender.stop()
            assert orthanc.rest("GET", "/statistics")["CountInstances"] == count
        with Orthanc(tmp / "orthanc_b") as orthanc:
            start = time.perf_counter()
            result = run_tool([DCMTK_STORESCU, "-R", "-xn", "-aet", "STORESCU", "-aec", "ORTHANC",
                               "127.0.0.1", str(orthanc.dicom_port), *map(str, files)],
                              timeout_s=600)
            ref = time.perf_counter() - start
            assert result.returncode == 0, result.stderr
            assert orthanc.rest("GET", "/statistics")["CountInstances"] == count
    print(f"{'sender':<42} {'wall s':>8} {'inst/s':>8} {'MB/s':>8}")
    print(f"{'dicom_or StorageSender (pynetdicom)':<42} {ours:8.2f} {count / ours:8.1f} "
          f"{total / 1e6 / ours:8.1f}")
    print(f"{'reference: dcmtk storescu -R':<42} {ref:8.2f} {count / ref:8.1f} "
          f"{total / 1e6 / ref:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
