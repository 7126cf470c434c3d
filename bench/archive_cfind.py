"""C-FIND latency of the dicom_or bridge as its archive grows (0 / 100 / 2,000 recorded
instances, a few of them large), next to Orthanc holding the same files; and the per-file
cost of indexing an archived instance, small against large.

    tools/with_env python bench/archive_cfind.py [--quick]

Archive: the recorder's own layout and spool (``Spool.write_instance``:
``<root>/<Study>/<Series>/<SOP>.dcm`` plus ``<root>/.spool``), made with the IOD builders
and the example descriptors of one session: short video clips (Video Endoscopic, a
synthetic 64 KiB bitstream), 10 s ECG and hemodynamic waveforms, 1 s pose SRs; plus the
large ones: a 1-hour ECG (WaveformSequence ~11 MB), a pose SR of ~5 MB (the demo's case)
and a video of ~200 MB (one hour of Frame Time Vector, synthetic bitstream). ``--quick``
makes them smaller and stops at 500 instances.

Bridge side: a ``ModelStore`` over an ``ArchiveIndex`` of that folder (rescan every 1 s, as
the node's default, so rescans run during the measurement) with the session's four live
streams, served by the real ``BridgeScp`` on loopback. Orthanc side: the same files uploaded
through REST. Same pynetdicom client for both, one association per cell, Nagle off, 2
warm-up requests. Queries (Study Root): SERIES ``StudyInstanceUID=<study>`` (all series);
IMAGE ``StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID=<one instance>`` (one match,
none at 0). The bridge answers four live series even with an empty archive; Orthanc has no
series then.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import logging
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
import warnings
from pathlib import Path

import numpy as np
from dicom_or_test_common.examples import example_descriptor, example_session, synthetic_waveform
from dicom_or_test_common.peers import Orthanc
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom import sop_class as sc

from dicom_or_bridge.scp import BridgeScp, ScpConfig
from dicom_or_core.archive.spool import Spool
from dicom_or_core.iod.codec import choose_codec
from dicom_or_core.iod.pose import ToolTrack, build_pose_sr
from dicom_or_core.iod.video import build_video
from dicom_or_core.iod.waveform import build_waveform
from dicom_or_core.model.uid import new_uid
from dicom_or_core.qr.model import ArchiveIndex, LiveStream, ModelStore, read_instance

FIND = sc.StudyRootQueryRetrieveInformationModelFind
T0 = 1_795_000_000 * 1_000_000_000   # session clock of the recorded data (ns)


class Session:
    """One session's four streams and templates of their instances."""

    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.session = example_session()
        self.study = self.session.study.study_instance_uid
        types = {"video": "ImageFrame", "ecg": "WaveformChunk", "hd": "WaveformChunk",
                 "pose": "PoseSample"}
        self.streams = {kind: example_descriptor(kind, self.session, series_number=n + 1,
                                                 message_type=f"dicom_or_msgs/msg/{name}")
                        for n, (kind, name) in enumerate(types.items())}
        self.templates = {
            "video": self.video(64 * 1024, 30),
            "ecg": self.waveform("ecg", 10),
            "hd": self.waveform("hd", 10),
            "pose": self.pose(60),
        }

    def video(self, size: int, frames: int) -> Dataset:
        d = self.streams["video"]
        choice = choose_codec(d.rows, d.columns, 30)
        # Jittered stamps, as a real capture: the builder then writes a Frame Time Vector.
        rng = np.random.default_rng(1)
        stamps = (T0 + np.arange(frames) * 33_333_333
                  + rng.integers(0, 2_000_000, frames)).tolist()
        blob = np.random.default_rng(2).integers(0, 256, size, dtype=np.uint8).tobytes()
        return build_video(d, blob, choice, stamps, new_uid())

    def waveform(self, kind: str, seconds: float) -> Dataset:
        d = self.streams[kind]
        n = int(seconds * d.sampling_frequency_hz)
        return build_waveform(d, synthetic_waveform(n, len(d.channels)), T0, new_uid())

    def pose(self, samples: int, pad_to: int = 0) -> Dataset:
        """A pose SR; ``pad_to`` bytes of TEXT content items make its tree as large as the
        pose SRs users already have on disk (5.4 MB), whatever the builder's layout now."""
        d = self.streams["pose"]
        stamps = T0 + np.arange(samples, dtype=np.int64) * 16_666_667
        tracks = [ToolTrack(tool, stamps, np.full((samples, 3), 0.1),
                            np.tile([0.0, 0.0, 0.0, 1.0], (samples, 1)))
                  for tool in d.tool_ids]
        ds = build_pose_sr(d, tracks, new_uid())
        concept = Dataset()
        concept.CodeValue, concept.CodingSchemeDesignator = "121106", "DCM"
        concept.CodeMeaning = "Comment"
        for n in range(pad_to // 100):   # ~100 bytes per item
            item = Dataset()
            item.RelationshipType, item.ValueType = "CONTAINS", "TEXT"
            item.ConceptNameCodeSequence = [concept]
            item.TextValue = f"note {n}"
            ds.ContentSequence.append(item)
        return ds

    def large(self) -> dict[str, Dataset]:
        """The large instances: 1-hour ECG, ~5 MB pose SR, ~200 MB video (quick: smaller)."""
        if self.quick:
            return {"ecg 10 min": self.waveform("ecg", 600),
                    "pose SR 1 MB": self.pose(1000, 2**20),
                    "video 20 MB": self.video(20 * 2**20, 18_000)}
        return {"ecg 1 h": self.waveform("ecg", 3600),
                "pose SR 5 MB": self.pose(5000, 5 * 2**20),
                "video 200 MB": self.video(200 * 2**20, 108_000)}


def add_instances(spool: Spool, templates: dict[str, Dataset], first: int,
                  last: int) -> list[Path]:
    """Instances first..last-1 from the templates, round robin, each with its own UID."""
    kinds = list(templates)
    paths = []
    for index in range(first, last):
        ds = templates[kinds[index % len(kinds)]]
        uid = new_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.InstanceNumber = index + 1
        paths.append(spool.write_instance(ds))
    return paths


def upload(orthanc: Orthanc, paths: list[Path]) -> None:
    for path in paths:
        request = urllib.request.Request(f"http://127.0.0.1:{orthanc.http_port}/instances",
                                         data=path.read_bytes(), method="POST")
        with urllib.request.urlopen(request, timeout=300) as response:
            response.read()


def series_query(study: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    ds.StudyInstanceUID = study
    for keyword in ("SeriesInstanceUID", "Modality", "SeriesNumber",
                    "NumberOfSeriesRelatedInstances"):
        setattr(ds, keyword, None)
    return ds


def image_query(study: str, series: str, sop: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, sop
    for keyword in ("SOPClassUID", "InstanceNumber", "ContentDate"):
        setattr(ds, keyword, None)
    return ds


def measure(port: int, aet: str, identifier: Dataset, repeats: int,
            expected: int) -> list[float]:
    """C-FIND latencies (ms) over one association, each until the final response."""
    ae = AE(ae_title="BENCH")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
    ae.add_requested_context(FIND)
    assoc = ae.associate("127.0.0.1", port, ae_title=aet)
    if not assoc.is_established:
        raise RuntimeError(f"no association with {aet}:{port}")
    assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    times = []
    try:
        for n in range(repeats + 2):
            start = time.perf_counter()
            responses = list(assoc.send_c_find(identifier, FIND))
            elapsed = (time.perf_counter() - start) * 1000
            answers = [a for s, a in responses if s and s.Status == 0xFF00]
            if len(answers) != expected:
                final = responses[-1][0] if responses else None
                raise RuntimeError(f"{aet}: {len(answers)} answers, expected {expected}; "
                                   f"final status {final}")
            if n >= 2:
                times.append(elapsed)
    finally:
        assoc.release()
    return times


def p50_p99(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.median(values), ordered[min(len(ordered) - 1,
                                                  round(0.99 * (len(ordered) - 1)))]


class _Counting(io.FileIO):
    """A raw file that counts the bytes actually read from disk (below the buffer)."""

    read_bytes = 0

    def readinto(self, buffer) -> int | None:  # type: ignore[override]
        n = super().readinto(buffer)
        _Counting.read_bytes += n or 0
        return n


def index_cost(path: Path, old: bool) -> tuple[float, int, float | None]:
    """(new index ms median of 5, bytes read by it, old index ms or None)."""
    times = []
    for _ in range(5):
        _Counting.read_bytes = 0
        start = time.perf_counter()
        read_instance(path, open_file=lambda p: io.BufferedReader(_Counting(p)))
        times.append((time.perf_counter() - start) * 1000)
    read = _Counting.read_bytes
    old_ms = None
    if old:  # what ArchiveIndex._read did before: full header parse + private-tag walk
        start = time.perf_counter()
        header = dcmread(path, stop_before_pixels=True)
        header.remove_private_tags()
        old_ms = (time.perf_counter() - start) * 1000
    return statistics.median(times), read, old_ms


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smaller large files, 0/100/500 instances, 10 queries (< 2 min)")
    args = parser.parse_args()
    repeats = 10 if args.quick else 50
    counts = (0, 100, 500) if args.quick else (0, 100, 2000)
    logging.getLogger("pynetdicom").setLevel(logging.ERROR)
    logging.getLogger("dicom_or_core.archive.index").setLevel(logging.ERROR)
    # A Frame Time Vector over 64 KiB cannot have VR DS in Explicit VR (2-byte length);
    # pydicom writes it as UN and warns once per file.
    warnings.filterwarnings("ignore", message="The value for the data element")
    started = dt.datetime.now(dt.UTC)
    session = Session(args.quick)
    rows: list[tuple] = []
    cost_rows: list[tuple] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "recordings"
        spool = Spool(root)
        # The per-file index cost: one file of each kind, small and large.
        small = {f"{kind} (small)": ds for kind, ds in session.templates.items()}
        for name, ds in {**small, **session.large()}.items():
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = new_uid()
            path = spool.write_instance(ds)
            ms, read, old_ms = index_cost(path, old=not args.quick or "small" in name)
            cost_rows.append((name, path.stat().st_size, ms, read, old_ms))
        large_paths = [Path(p) for p in sorted(root.glob("*/*/*.dcm"))]
        store = ModelStore(ArchiveIndex(root), domain_id=0, retrieve_ae_title="DICOM_OR",
                           archive_rescan_s=1.0)
        store.set_streams([LiveStream(d) for d in session.streams.values()])
        scp = BridgeScp(store, ScpConfig(port=0))
        scp.start()
        try:
            with Orthanc(Path(tmp) / "orthanc") as orthanc:
                # Level 0: an empty archive (the cost files are moved aside meanwhile).
                aside = Path(tmp) / "aside"
                aside.mkdir()
                for path in large_paths:
                    target = aside / path.relative_to(root)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    path.rename(target)
                store.rescan(timeout=60)
                written: list[Path] = []
                for count in counts:
                    if count:
                        if not written:  # the large files are part of every level but 0
                            for path in sorted(aside.rglob("*.dcm")):
                                target = root / path.relative_to(aside)
                                target.parent.mkdir(parents=True, exist_ok=True)
                                path.rename(target)
                                written.append(target)
                        written += add_instances(spool, session.templates, len(written),
                                                 count)
                        # Catch-up: until a scan started now has indexed every file (the
                        # 1 s background scans have read some during the writing).
                        start = time.perf_counter()
                        store.rescan(timeout=600)
                        index_s = time.perf_counter() - start
                        uploaded = len(rows) and rows[-1][0] or 0
                        upload(orthanc, written[uploaded:count])
                    else:
                        index_s = 0.0
                    assert len(written) == count, (len(written), count)
                    series = {str(p.parent.name) for p in written}
                    target = written[len(written) // 2] if written else None
                    sop = target.stem if target else new_uid()
                    series_uid = target.parent.name if target else \
                        session.streams["video"].series_instance_uid
                    cell = [count, index_s]
                    for port, aet, live in ((scp.port, "DICOM_OR", 4),
                                            (orthanc.dicom_port, "ORTHANC", 0)):
                        cell += p50_p99(measure(port, aet, series_query(session.study),
                                                repeats, max(live, len(series))))
                        cell += p50_p99(measure(port, aet,
                                                image_query(session.study, series_uid, sop),
                                                repeats, 1 if target else 0))
                    rows.append(tuple(cell))
        finally:
            scp.stop()
            store.close()
            spool.close()
    print("Per-file index cost (page cache warm; new = read_instance, median of 5; old = "
          "dcmread(stop_before_pixels) + remove_private_tags, one run)")
    print(f"{'file':>16} | {'size MB':>9} | {'new ms':>8} | {'bytes read':>10} | "
          f"{'old ms':>9}")
    for name, size, ms, read, old_ms in cost_rows:
        old = f"{old_ms:9.1f}" if old_ms is not None else f"{'-':>9}"
        print(f"{name:>16} | {size / 2**20:9.2f} | {ms:8.2f} | {read:10d} | {old}")
    print()
    print(f"C-FIND latency, ms ({repeats} queries per cell, loopback, one association; "
          f"archive rescan every 1 s in the background)")
    header = ("instances", "catch-up s", "br SER p50", "br SER p99", "br IMG p50", "br IMG p99",
              "Or SER p50", "Or SER p99", "Or IMG p50", "Or IMG p99")
    print(" | ".join(f"{h:>10}" for h in header))
    for row in rows:
        print(" | ".join(f"{row[0]:>10}" if i == 0 else f"{v:>10.2f}"
                         for i, v in enumerate(row)))
    load = os.getloadavg()
    print(f"started {started:%Y-%m-%d %H:%M} UTC; load average at end {load[0]:.2f} "
          f"{load[1]:.2f} {load[2]:.2f}; {platform.machine()} python "
          f"{platform.python_version()}, {platform.system()} {platform.release()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
