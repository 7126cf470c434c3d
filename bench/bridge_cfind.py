"""SERIES-level C-FIND latency of the dicom_or bridge with 10 / 100 / 200 live streams, next
to Orthanc answering the equivalent query over the same number of stored series.

    tools/with_env python bench/bridge_cfind.py [--quick]

Bridge side: the streams are fed straight into the bridge's ModelStore (the snapshot the
C-FIND handlers read; DDS discovery is not part of what is measured) and the real
pynetdicom SCP answers on loopback. Orthanc side: one small Secondary Capture instance per
series, all in one study, uploaded through REST before measuring. The query is identical:
Study Root, QueryRetrieveLevel=SERIES, StudyInstanceUID=<the study>, with Modality,
SeriesDescription, SeriesNumber, NumberOfSeriesRelatedInstances and SeriesInstanceUID as
return keys (RetrieveURL too for the bridge). One association per N; the latency is one
C-FIND request until its final response, all pending answers received. C-ECHO round trips
on each peer are the reference for the transport cost.
"""

from __future__ import annotations

import argparse
import logging
import platform
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
from io import BytesIO
from pathlib import Path

from dicom_or_test_common.peers import Orthanc
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from pynetdicom import AE
from pynetdicom import sop_class as sc

from dicom_or_bridge.scp import BridgeScp, ScpConfig
from dicom_or_core.model import context as ctx
from dicom_or_core.qr.model import LiveStream, ModelStore

FIND = sc.StudyRootQueryRetrieveInformationModelFind
STUDY = "1.2.826.0.1.3680043.8.498.777"
COUNTS = (10, 100, 200)


def session() -> ctx.SessionContext:
    return ctx.SessionContext(
        patient=ctx.Patient(patient_id="BENCH", patient_name="Bench^Patient"),
        study=ctx.Study(study_instance_uid=STUDY, study_date="20241124",
                        study_time="080000"),
        synchronization_frame_of_reference_uid="1.2.3")


def streams(count: int) -> list[LiveStream]:
    out = []
    for i in range(count):
        video = i % 2 == 0
        kind = ctx.KIND_VIDEO if video else ctx.KIND_WAVEFORM
        channel = ctx.WaveformChannel(label="II", source_code_value="2:2",
                                      source_coding_scheme="MDC", unit_ucum="uV")
        out.append(LiveStream(ctx.StreamDescriptor(
            session=session(), stream_uuid=f"s{i}", kind=kind, topic=f"/or/dev{i}/samples",
            message_type="dicom_or_msgs/msg/ImageFrame" if video
            else "dicom_or_msgs/msg/WaveformChunk",
            qos_profile="video" if video else "waveform", nominal_rate_hz=30.0,
            series_instance_uid=f"{STUDY}.{i + 1}", series_number=i + 1,
            modality="ES" if video else "ECG", series_description=f"stream {i}",
            series_date="20241124", series_time="081500", frame_of_reference_uid="1.2.4",
            rows=1080 if video else 0, columns=1920 if video else 0,
            pixel_encoding="rgb8" if video else "", sampling_frequency_hz=500.0,
            channels=[] if video else [channel])))
    return out


def query(with_url: bool) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    ds.StudyInstanceUID = STUDY
    for keyword in ("SeriesInstanceUID", "Modality", "SeriesDescription", "SeriesNumber",
                    "NumberOfSeriesRelatedInstances"):
        setattr(ds, keyword, None)
    if with_url:
        ds.RetrieveURL = None
    return ds


def measure(port: int, aet: str, repeats: int, expected: int,
            with_url: bool) -> tuple[list[float], list[float]]:
    """(C-FIND latencies, C-ECHO latencies) in ms over one association."""
    ae = AE(ae_title="BENCH")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    ae.add_requested_context(FIND)
    ae.add_requested_context(sc.Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=aet)
    if not assoc.is_established:
        raise RuntimeError(f"no association with {aet}:{port}")
    # Same client for both peers; Nagle off so the client's own ACK delays do not dominate.
    assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    finds, echoes = [], []
    try:
        for _ in range(2):  # warm-up
            list(assoc.send_c_find(query(with_url), FIND))
        for _ in range(repeats):
            start = time.perf_counter()
            responses = list(assoc.send_c_find(query(with_url), FIND))
            finds.append((time.perf_counter() - start) * 1000)
            answers = [a for s, a in responses if s and s.Status == 0xFF00]
            if len(answers) != expected:
                final = responses[-1][0] if responses else None
                raise RuntimeError(f"{aet}: {len(answers)} answers, expected {expected}; "
                                   f"final status {final}")
            start = time.perf_counter()
            assoc.send_c_echo()
            echoes.append((time.perf_counter() - start) * 1000)
    finally:
        assoc.release()
    return finds, echoes


def sc_instance(series_index: int) -> bytes:
    sop = generate_uid()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, sop
    ds.PatientName, ds.PatientID = "Bench^Patient", "BENCH"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY, f"{STUDY}.{series_index + 1}"
    ds.StudyDate, ds.StudyTime = "20241124", "080000"
    ds.Modality = "ES" if series_index % 2 == 0 else "ECG"
    ds.SeriesNumber, ds.InstanceNumber = series_index + 1, 1
    ds.SeriesDescription = f"stream {series_index}"
    ds.Rows = ds.Columns = 2
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = b"\x00" * 4
    buffer = BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def upload(orthanc: Orthanc, first: int, last: int) -> None:
    for index in range(first, last):
        request = urllib.request.Request(f"http://127.0.0.1:{orthanc.http_port}/instances",
                                         data=sc_instance(index), method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()


def stats(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return statistics.median(values), p95


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (< 30 s)")
    args = parser.parse_args()
    repeats = 10 if args.quick else 50
    logging.getLogger("pynetdicom").setLevel(logging.ERROR)
    rows = []
    store = ModelStore(domain_id=0, retrieve_ae_title="DICOM_OR")
    scp = BridgeScp(store, ScpConfig(port=0))
    scp.start()
    with tempfile.TemporaryDirectory() as tmp, Orthanc(Path(tmp)) as orthanc:
        uploaded = 0
        for count in COUNTS:
            store.set_streams(streams(count))
            b_find, b_echo = measure(scp.port, "DICOM_OR", repeats, count, True)
            upload(orthanc, uploaded, count)
            uploaded = count
            o_find, o_echo = measure(orthanc.dicom_port, "ORTHANC", repeats, count, False)
            rows.append((count, *stats(b_find), *stats(o_find), statistics.median(b_echo),
                         statistics.median(o_echo)))
    scp.stop()
    print(f"SERIES-level C-FIND latency, ms ({repeats} queries per cell, loopback, "
          f"one association)")
    header = ("series", "bridge med", "bridge p95", "Orthanc med", "Orthanc p95",
              "echo bridge", "echo Orthanc")
    print(" | ".join(f"{h:>12}" for h in header))
    for row in rows:
        print(" | ".join(f"{row[0]:>12}" if i == 0 else f"{v:>12.2f}"
                         for i, v in enumerate(row)))
    print(f"machine: {platform.machine()} {platform.processor() or ''} "
          f"python {platform.python_version()}, {platform.system()} {platform.release()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
