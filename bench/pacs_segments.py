#!/usr/bin/env python3
"""PACS ingest of one OR's recorder segments at full size (issue 15 §3: PACS ingest).

    tools/with_env python bench/pacs_segments.py [--quick] [--minutes M]

The recorder cuts every stream into an instance per ``max_segment_s`` (300 s): one OR
recording for 5 minutes hands the PACS one instance per stream. This bench builds that set
at the nominal rates of the demo OR with the recorder's own IOD builders: 12-channel ECG at
1 kHz (General ECG), ART + PLETH at 250 Hz (Hemodynamic), 4 tools x 1 kHz of poses
(Comprehensive 3D SR) and 1080p30 H.264 (Video Endoscopic; one 1 s GOP of the driver's
encoder on the synthetic pattern, repeated, so the bit rate is the pattern's), then:

* sends the set to a fresh Orthanc with the recorder's ``StorageSender`` (C-STORE, one
  association, no Storage Commitment), and the same set built again to another Orthanc
  (DICOMweb plugin) by STOW-RS in one request (PS3.18 10.5);
* reference, same run: dcmtk ``storescu`` sends each file alone (one association per file)
  to another fresh Orthanc: the time per instance kind.

From the set's time follows how many ORs one such Orthanc keeps up with: 300 s / (seconds
to ingest one OR's 5-minute set), if all ORs record at once.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from dicom_or_test_common.examples import example_descriptor, example_session, now_ns
from dicom_or_test_common.peers import Orthanc, have, run_tool

from dicom_or_core.archive.spool import STORED, Spool
from dicom_or_core.iod.codec import EncodedPacket, mux_mpegts
from dicom_or_core.iod.h264 import live_encoder
from dicom_or_core.iod.pose import ToolTrack, build_pose_sr
from dicom_or_core.iod.video import build_video
from dicom_or_core.iod.waveform import build_waveform
from dicom_or_core.model.uid import new_uid
from dicom_or_core.scu.storage import DIMSE, STOWRS, PacsConfig, StorageSender
from dicom_or_core.sim.video import PatternSource
from dicom_or_core.sim.waveform import GROUPS

DCMTK_STORESCU = "/usr/bin/storescu"
FPS = 30.0


def waveform(n: int, channels: int, seed: int) -> np.ndarray:
    """Smooth int16 traces with a little noise (a flat line would compress nothing away
    either: waveform Pixel Data is not compressed, PS3.3 C.10.9)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)[:, None]
    values = 8000 * np.sin(2 * np.pi * t / 800 + np.arange(channels)) \
        + rng.normal(0, 50, (n, channels))
    return values.astype(np.int16)


def video_instance(session, seconds: float, uid_number: int):
    """1080p30 H.264 from the driver's encoder: one GOP repeated for ``seconds``."""
    descriptor = example_descriptor("video", session, rows=1080, columns=1920)
    encoder = live_encoder(1080, 1920, FPS, "rgb8")
    source = PatternSource(1920, 1080)
    gop: list[EncodedPacket] = []
    for i in range(int(FPS)):
        gop += encoder.encode(source.frame(i, 0), i)
    gop += encoder.flush()
    step = round(90_000 / FPS)
    frames = int(seconds * FPS)
    packets = []
    for k in range(frames // len(gop)):
        base = k * len(gop) * step
        packets += [EncodedPacket(base + p.pts * step, base + p.dts * step, p.keyframe,
                                  p.data) for p in gop]
    choice = encoder.choice
    ts = mux_mpegts(choice, 1080, 1920, FPS, packets)
    t0 = now_ns()
    stamps = [t0 + round(i * 1e9 / FPS) for i in range(len(packets))]
    return build_video(descriptor, ts, choice, stamps, new_uid(), uid_number)


def build_set(spool: Spool, minutes: float) -> dict[str, Path]:
    session = example_session()
    seconds = minutes * 60
    t0 = now_ns()
    kinds: dict[str, object] = {}
    ecg12 = GROUPS["ecg12"]   # the waveform driver's 12-lead group
    ecg = example_descriptor("ecg", session, rate_hz=ecg12.sampling_hz,
                             sampling_frequency_hz=ecg12.sampling_hz,
                             channels=ecg12.channels())
    kinds["ECG 12 x 1 kHz"] = build_waveform(
        ecg, waveform(int(seconds * 1000), len(ecg.channels), 1), t0, new_uid(), 1)
    hd = example_descriptor("hd", session)
    kinds["HD 2 x 250 Hz"] = build_waveform(
        hd, waveform(int(seconds * 250), len(hd.channels), 2), t0, new_uid(), 1)
    tools = ["pointer", "patient_reference", "drill", "probe"]
    pose = example_descriptor("pose", session, tool_ids=tools, rate_hz=1000.0)
    n = int(seconds * 1000)
    stamps = t0 + np.arange(n, dtype=np.int64) * 1_000_000
    rng = np.random.default_rng(3)
    quaternion = np.tile([0.0, 0.0, 0.0, 1.0], (n, 1))
    tracks = [ToolTrack(tool, stamps, 0.1 * rng.standard_normal((n, 3)), quaternion)
              for tool in tools]
    kinds["SR poses 4 x 1 kHz"] = build_pose_sr(pose, tracks, new_uid(), 1)
    kinds["ES H.264 1080p30"] = video_instance(session, seconds, 1)
    paths = {}
    for name, ds in kinds.items():
        paths[name] = spool.write_instance(ds)
    return paths


def store(folder: Path, spool: Spool, count: int, protocol: str) -> float:
    """Seconds for the recorder's sender to store every instance of ``spool`` into a fresh
    Orthanc (no Storage Commitment: both transports do the same work)."""
    with Orthanc(folder, dicomweb=protocol == STOWRS) as orthanc:
        sender = StorageSender(spool, PacsConfig(
            ae_title="ORTHANC", port=orthanc.dicom_port, storage_commitment=False,
            batch_size=count, protocol=protocol,
            stow_url=f"http://127.0.0.1:{orthanc.http_port}/dicom-web"))
        start = time.perf_counter()
        while spool.counts()[STORED] < count:
            sender.run_once()
        wall = time.perf_counter() - start
        sender.stop()
        assert orthanc.rest("GET", "/statistics")["CountInstances"] == count
    return wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1-minute segments")
    parser.add_argument("--minutes", type=float, help="segment length (default 5)")
    options = parser.parse_args()
    if not have(DCMTK_STORESCU):
        print("dcmtk not installed", file=sys.stderr)
        return 2
    minutes = options.minutes or (1.0 if options.quick else 5.0)
    print(f"pacs_segments: {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC, "
          f"{minutes:g}-minute segments, uptime load "
          f"{Path('/proc/loadavg').read_text().strip()}")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        spool = Spool(tmp / "rec")
        start = time.perf_counter()
        paths = build_set(spool, minutes)
        print(f"built in {time.perf_counter() - start:.1f} s")
        count = len(paths)
        sizes = {name: p.stat().st_size for name, p in paths.items()}
        total = sum(sizes.values())
        ours = store(tmp / "orthanc_a", spool, count, DIMSE)
        # The same set again (new UIDs) by STOW-RS, one request, to an Orthanc with DICOMweb.
        spool_stow = Spool(tmp / "rec_stow")
        build_set(spool_stow, minutes)
        stow = store(tmp / "orthanc_stow", spool_stow, count, STOWRS)
        per_kind = {}
        with Orthanc(tmp / "orthanc_b") as orthanc:
            for name, path in paths.items():
                start = time.perf_counter()
                result = run_tool([DCMTK_STORESCU, "-R", "-xn", "-aet", "STORESCU", "-aec",
                                   "ORTHANC", "127.0.0.1", str(orthanc.dicom_port), str(path)],
                                  timeout_s=600)
                per_kind[name] = time.perf_counter() - start
                assert result.returncode == 0, result.stderr
            assert orthanc.rest("GET", "/statistics")["CountInstances"] == count
        load = Path("/proc/loadavg").read_text().split()[0]
    print()
    print(f"| instance ({minutes:g} min) | MB | reference: dcmtk storescu s | MB/s |")
    print("|---|---|---|---|")
    for name in paths:
        mb = sizes[name] / 1e6
        print(f"| {name} | {mb:.1f} | {per_kind[name]:.2f} | {mb / per_kind[name]:.1f} |")
    ref = sum(per_kind.values())
    print(f"| all, dcmtk storescu one file per association | {total / 1e6:.1f} | {ref:.2f} | "
          f"{total / 1e6 / ref:.1f} |")
    print(f"| **all, dicom_or StorageSender (one association)** | {total / 1e6:.1f} | "
          f"**{ours:.2f}** | {total / 1e6 / ours:.1f} |")
    print(f"| all, dicom_or StorageSender by STOW-RS (one request) | {total / 1e6:.1f} | "
          f"{stow:.2f} | {total / 1e6 / stow:.1f} |")
    print()
    print(f"one OR's {minutes:g} minutes ingested in {ours:.2f} s: one Orthanc like this "
          f"keeps up with {minutes * 60 / ours:.0f} ORs recording at once (load {load})")
    print(f"end load {Path('/proc/loadavg').read_text().strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
