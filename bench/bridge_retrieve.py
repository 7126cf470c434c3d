"""C-GET / C-MOVE of large archived instances from the dicom_or bridge: time to first byte,
total time, and the bridge process's peak RSS.

    tools/with_env python bench/bridge_retrieve.py [--video-mb 300] [--poses 20000]

The archive holds a Video Endoscopic instance of ``--video-mb`` MB (H.264 High Profile
Level 4.1, 1.2.840.10008.1.2.4.102; the "bit stream" is random bytes, which is all a
transfer needs) and a Comprehensive 3D SR with two tracked tools of ``--poses`` poses each
(the recorder's ``max_poses_per_instance`` default) in the content tree of the SRs
users retrieved slowly (one CONTAINER + DATETIME + SCOORD3D per pose, ~120 000 items; the
header from the project's IOD builder), stored H.264 / Explicit VR Little Endian as the
recorder stores them.

Each case runs a fresh bridge SCP in its own process (``--serve``), so its peak RSS
(VmHWM) is the peak of that one retrieval. The requestor is pynetdicom on loopback. *First byte*
is the time from sending the C-GET / C-MOVE request to the first PDU of the C-STORE
sub-operation at the receiver (for C-GET the requestor itself, for C-MOVE a pynetdicom
Storage SCP in this process); *total* is until the final C-GET / C-MOVE response.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from dicom_or_test_common.examples import example_descriptor
from pydicom.dataset import Dataset
from pydicom.uid import (
    MPEG4HP41,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, build_context, build_role, evt
from pynetdicom import sop_class as sc

from dicom_or_core.iod.codec import choose_codec
from dicom_or_core.iod.pose import ToolTrack, build_pose_sr
from dicom_or_core.iod.video import build_video
from dicom_or_core.model.uid import new_uid

GET = sc.StudyRootQueryRetrieveInformationModelGet
MOVE = sc.StudyRootQueryRetrieveInformationModelMove
VIDEO = sc.VideoEndoscopicImageStorage
SR = sc.Comprehensive3DSRStorage


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "99DICOMOR", meaning
    return item


def _item(value_type: str, code: tuple[str, str]) -> Dataset:
    item = Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", value_type
    item.ConceptNameCodeSequence = [_code(*code)]
    return item


def _tool_container(tool: str, poses: int, frame_of_reference_uid: str) -> Dataset:
    """A "Tracked tool" CONTAINER with one "Pose sample" CONTAINER per pose."""
    container = _item("CONTAINER", ("DOR002", "Tracked tool"))
    container.ContinuityOfContent = "SEPARATE"
    text = _item("TEXT", ("DOR003", "Tool identifier"))
    text.TextValue = tool
    samples = []
    for i in range(poses):
        when = _item("DATETIME", ("DOR005", "Acquisition DateTime"))
        when.DateTime = f"20261124080000.{i % 1000000:06d}+0000"
        where = _item("SCOORD3D", ("DOR006", "Tool pose"))
        where.GraphicType = "MULTIPOINT"
        where.GraphicData = [float(i % 97), 1.5, 2.5, 101.0, 1.5, 2.5, float(i % 97), 101.5, 2.5]
        where.ReferencedFrameOfReferenceUID = frame_of_reference_uid
        sample = _item("CONTAINER", ("DOR004", "Pose sample"))
        sample.ContinuityOfContent = "SEPARATE"
        sample.ContentSequence = [when, where]
        samples.append(sample)
    container.ContentSequence = [text, *samples]
    return container


def make_archive(root: Path, video_mb: int, poses: int) -> dict[str, Dataset]:
    """Write the two instances under ``root`` as the recorder lays them out; returns
    {name: identifier of an IMAGE-level retrieval}."""
    out = {}
    stream = example_descriptor("video", rows=1080, columns=1920)
    choice = choose_codec(1080, 1920, 30.0)
    bitstream = np.random.default_rng(1).integers(0, 256, video_mb * 2**20, np.uint8).tobytes()
    stamps = [1_795_550_000_000_000_000 + i * 33_333_333 for i in range(9000)]
    video = build_video(stream, bitstream, choice, stamps, new_uid())
    del bitstream
    pose_stream = example_descriptor("pose", session=stream.session)
    rng = np.random.default_rng(2)
    tracks = []
    for tool in ("pointer", "patient_reference"):
        q = rng.normal(size=(poses, 4))
        tracks.append(ToolTrack(tool, 1_795_550_000_000_000_000 + np.arange(poses) * 16_666_667,
                                rng.normal(size=(poses, 3)) * 0.1,
                                q / np.linalg.norm(q, axis=1, keepdims=True)))
    sr = build_pose_sr(pose_stream, tracks, new_uid())
    # The content tree of the SRs users retrieved slowly (the recorder before its compact
    # trajectory encoding): one CONTAINER + DATETIME + SCOORD3D per pose, ~120 000 items.
    sr.ContentSequence = [_tool_container(tool, poses, pose_stream.frame_of_reference_uid)
                          for tool in ("pointer", "patient_reference")]
    for name, ds in (("video", video), ("sr", sr)):
        path = root / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        ident = Dataset()
        ident.QueryRetrieveLevel = "IMAGE"
        ident.StudyInstanceUID = ds.StudyInstanceUID
        ident.SeriesInstanceUID = ds.SeriesInstanceUID
        ident.SOPInstanceUID = ds.SOPInstanceUID
        out[name] = ident
        print(f"{name}: {path.stat().st_size / 2**20:.0f} MB ({ds.file_meta.TransferSyntaxUID})",
              flush=True)
    return out


def serve(archive: str, move_port: int) -> None:
    """The bridge SCP over ``archive`` in this process: prints its port, then its peak
    RSS (VmHWM, kB) when stdin closes."""
    from dicom_or_bridge.scp import BridgeScp, ScpConfig
    from dicom_or_core.qr.model import ArchiveIndex, ModelStore

    store = ModelStore(ArchiveIndex(archive), retrieve_ae_title="DICOM_OR",
                       archive_rescan_s=0.0)
    store.snapshot()  # read the archive's headers before the clock starts
    config = ScpConfig(port=0, move_destinations={"BENCH_STORE": ("127.0.0.1", move_port)},
                       dimse_timeout_s=600, network_timeout_s=600)
    scp = BridgeScp(store, config, logging.getLogger("bench.scp"))
    print(scp.start(), flush=True)
    sys.stdin.read()
    scp.stop()
    # VmHWM, not ru_maxrss: Linux carries the parent's peak into ru_maxrss across
    # fork + exec, and the parent built a 300 MB instance.
    status = Path("/proc/self/status").read_text()
    print(next(line.split()[1] for line in status.splitlines()
               if line.startswith("VmHWM:")), flush=True)


class Receiver:
    """Timestamps of the first C-STORE PDU and counts of what arrived."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.stored: list[tuple[str, str, int]] = []

    def on_pdu(self, event: evt.Event) -> None:
        if self.first is None and type(event.pdu).__name__ == "P_DATA_TF":
            self.first = time.perf_counter()

    def on_store(self, event: evt.Event) -> int:
        self.stored.append((str(event.request.AffectedSOPInstanceUID),
                            str(event.context.transfer_syntax),
                            len(event.request.DataSet.getvalue())))
        return 0


def run_case(archive: Path, ident: Dataset, op: str, sop: str, syntaxes: list[str]) -> dict:
    receiver = Receiver()
    store_server = None
    move_port = 0
    if op == "move":
        store_ae = AE(ae_title="BENCH_STORE")
        store_ae.maximum_pdu_size = 65536
        store_ae.dimse_timeout = store_ae.network_timeout = 600
        store_ae.add_supported_context(sop, syntaxes)
        store_server = store_ae.start_server(
            ("127.0.0.1", 0), block=False,
            evt_handlers=[(evt.EVT_C_STORE, receiver.on_store),
                          (evt.EVT_PDU_RECV, receiver.on_pdu)])
        move_port = store_server.server_address[1]
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(archive), str(move_port)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        ae = AE(ae_title="BENCH")
        ae.maximum_pdu_size = 65536
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 600
        handlers = []
        roles = []
        if op == "get":
            ae.add_requested_context(GET)
            ae.requested_contexts.append(build_context(sop, syntaxes))
            roles = [build_role(sop, scp_role=True)]
            handlers = [(evt.EVT_C_STORE, receiver.on_store),
                        (evt.EVT_PDU_RECV, receiver.on_pdu)]
        else:
            ae.add_requested_context(MOVE)
        assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_OR", ext_neg=roles,
                             evt_handlers=handlers)
        assert assoc.is_established
        receiver.first = None
        start = time.perf_counter()
        if op == "get":
            responses = list(assoc.send_c_get(ident, GET))
        else:
            responses = list(assoc.send_c_move(ident, "BENCH_STORE", MOVE))
        total = time.perf_counter() - start
        final = responses[-1][0]
        assoc.release()
        proc.stdin.close()
        rss_kb = int(proc.stdout.readline())
    finally:
        proc.kill() if proc.poll() is None else None
        proc.wait()
        if store_server is not None:
            store_server.shutdown()
    return {"status": f"0x{final.Status:04X}" if "Status" in final else "none",
            "first": (receiver.first - start) if receiver.first else None, "total": total,
            "rss_mb": rss_kb / 1024, "stored": receiver.stored}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", nargs=2, metavar=("ARCHIVE", "MOVE_PORT"))
    parser.add_argument("--video-mb", type=int, default=300)
    parser.add_argument("--poses", type=int, default=20000)
    parser.add_argument("--archive", help="reuse (or create) this archive folder")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]))
        return
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(args.archive or tmp)
        idents = make_archive(archive, args.video_mb, args.poses)
        print(f"{platform.node()} {platform.python_version()} {os.cpu_count()} cores")
        cases = [
            ("video", "get", VIDEO, [ImplicitVRLittleEndian, ExplicitVRLittleEndian, MPEG4HP41]),
            ("video", "get", VIDEO, [MPEG4HP41]),
            ("video", "move", VIDEO, [MPEG4HP41]),
            ("sr", "get", SR, [ImplicitVRLittleEndian, ExplicitVRLittleEndian]),
            ("sr", "get", SR, [ImplicitVRLittleEndian]),
            ("sr", "move", SR, [ExplicitVRLittleEndian]),
        ]
        print("| instance | op | offered | status | first byte s | total s | bridge peak RSS MB |")
        print("|---|---|---|---|---|---|---|")
        for name, op, sop, syntaxes in cases:
            r = run_case(archive, idents[name], op, sop, syntaxes)
            offered = ", ".join(s.name.replace(" Little Endian", " LE") for s in
                                map(type(MPEG4HP41), syntaxes))
            first = f"{r['first']:.2f}" if r["first"] is not None else "-"
            got = ",".join(type(MPEG4HP41)(ts).name for _, ts, _ in r["stored"]) or "nothing"
            print(f"| {name} | {op} | {offered} | {r['status']} ({got}) | {first} | "
                  f"{r['total']:.2f} | {r['rss_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
