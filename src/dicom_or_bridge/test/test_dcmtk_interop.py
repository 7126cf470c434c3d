"""Interoperability with real dcmtk peers: findscu (Patient and Study Root, every level,
wildcard and range queries), getscu, and movescu into a storescp."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from bridge_fixtures import (
    ECG_SERIES,
    PATIENT_ID,
    STUDY,
    VIDEO_SERIES,
    running_scp,
    write_instance,
)
from pydicom import dcmread

from dicom_or_core.peers import free_tcp_port, have, run_tool

# pynetdicom can install same-named apps (findscu, getscu, ...) into the venv's bin, ahead of
# dcmtk's on PATH: name dcmtk's binaries by their full path.
DCMTK = Path("/usr/bin")
pytestmark = pytest.mark.skipif(not have(str(DCMTK / "findscu")), reason="dcmtk is not installed")


def tool(name: str) -> str:
    return str(DCMTK / name)


def findscu(port: int, out: Path, model: str, *keys: str) -> tuple[int, list]:
    """Run findscu, return (exit code, answers read back from the extracted files)."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("rsp*.dcm"):
        old.unlink()
    args = [tool("findscu"), model, "-aet", "FINDSCU", "-aec", "DICOM_OR", "-X", "-od", str(out)]
    for key in keys:
        args += ["-k", key]
    result = run_tool([*args, "127.0.0.1", str(port)], timeout_s=60)
    answers = [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]
    return result.returncode, answers


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    archive = tmp_path_factory.mktemp("archive")
    for n in range(2):
        write_instance(archive, sop=f"1.2.826.0.1.3680043.8.498.500.{n}", number=n + 1)
    with running_scp(archive, move_destinations={}) as scp:
        yield scp, archive


@pytest.mark.parametrize("model", ["-P", "-S"])
def test_findscu_every_level(bridge, tmp_path, model):
    scp, _ = bridge
    above = ["PatientID=" + PATIENT_ID] if model == "-P" else []
    if model == "-P":
        code, patients = findscu(scp.port, tmp_path, model, "QueryRetrieveLevel=PATIENT",
                                 "PatientID", "PatientName", "NumberOfPatientRelatedSeries")
        assert code == 0
        assert [(p.PatientID, p.NumberOfPatientRelatedSeries) for p in patients] == \
            [(PATIENT_ID, 2)]
    code, studies = findscu(scp.port, tmp_path, model, "QueryRetrieveLevel=STUDY", *above,
                            "StudyInstanceUID", "StudyDate", "ModalitiesInStudy")
    assert code == 0 and [s.StudyInstanceUID for s in studies] == [STUDY]
    code, series = findscu(scp.port, tmp_path, model, "QueryRetrieveLevel=SERIES", *above,
                           f"StudyInstanceUID={STUDY}", "SeriesInstanceUID", "Modality",
                           "RetrieveURL", "NumberOfSeriesRelatedInstances")
    assert code == 0
    got = {s.SeriesInstanceUID: s for s in series}
    assert set(got) == {VIDEO_SERIES, ECG_SERIES}
    assert got[VIDEO_SERIES].RetrieveURL.startswith("ros2:/or/endoscope/frames?")
    assert got[VIDEO_SERIES].NumberOfSeriesRelatedInstances == 2
    code, images = findscu(scp.port, tmp_path, model, "QueryRetrieveLevel=IMAGE", *above,
                           f"StudyInstanceUID={STUDY}", f"SeriesInstanceUID={VIDEO_SERIES}",
                           "SOPInstanceUID", "InstanceNumber")
    assert code == 0 and sorted(i.InstanceNumber for i in images) == [1, 2]


@pytest.mark.parametrize("key, expected", [
    ("Modality=E*", {"ES", "ECG"}),
    ("Modality=E?", {"ES"}),
    ("SeriesDescription=*cope", {"ES"}),
    ("SeriesTime=081501-", {"ECG"}),
    ("SeriesTime=-081500", {"ES"}),
    ("SeriesDate=20241101-20241130", {"ES", "ECG"}),
    ("SeriesDate=20250101-", set()),
    (f"SeriesInstanceUID={VIDEO_SERIES}\\{ECG_SERIES}", {"ES", "ECG"}),
])
def test_findscu_wildcard_range_and_uid_list(bridge, tmp_path, key, expected):
    scp, _ = bridge
    code, series = findscu(scp.port, tmp_path, "-S", "QueryRetrieveLevel=SERIES",
                           f"StudyInstanceUID={STUDY}", "Modality", key)
    assert code == 0
    assert {s.Modality for s in series} == expected


def test_findscu_failure_status_is_reported(bridge, tmp_path):
    scp, _ = bridge
    result = run_tool([tool("findscu"), "-v", "-S", "-aec", "DICOM_OR", "-k",
                       "QueryRetrieveLevel=SERIES",
                       "-k", "Modality", "127.0.0.1", str(scp.port)], timeout_s=60)
    assert "DataSetDoesNotMatchSOPClass" in result.stdout + result.stderr


def test_getscu_series(bridge, tmp_path):
    scp, _ = bridge
    result = run_tool([tool("getscu"), "-S", "-aec", "DICOM_OR", "-od", str(tmp_path),
                       "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={STUDY}",
                       "-k", f"SeriesInstanceUID={VIDEO_SERIES}", "127.0.0.1",
                       str(scp.port)], timeout_s=60)
    assert result.returncode == 0, result.stderr
    got = sorted(dcmread(p).SOPInstanceUID for p in tmp_path.iterdir())
    assert got == ["1.2.826.0.1.3680043.8.498.500.0", "1.2.826.0.1.3680043.8.498.500.1"]


def test_movescu_into_storescp(bridge, tmp_path):
    scp, _ = bridge
    store_port = free_tcp_port()
    scp.config.move_destinations["STORESCP"] = ("127.0.0.1", store_port)
    received = tmp_path / "received"
    received.mkdir()
    storescp = subprocess.Popen([tool("storescp"), "-aet", "STORESCP", "-od", str(received),
                                 str(store_port)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while run_tool([tool("echoscu"), "-aec", "STORESCP", "127.0.0.1", str(store_port)],
                       timeout_s=10).returncode != 0:
            assert time.monotonic() < deadline, "storescp did not start"
            time.sleep(0.1)
        result = run_tool([tool("movescu"), "-P", "-aec", "DICOM_OR", "-aem", "STORESCP",
                           "-k", "QueryRetrieveLevel=IMAGE", "-k", f"PatientID={PATIENT_ID}",
                           "-k", f"StudyInstanceUID={STUDY}",
                           "-k", f"SeriesInstanceUID={VIDEO_SERIES}",
                           "-k", "SOPInstanceUID=1.2.826.0.1.3680043.8.498.500.1",
                           "127.0.0.1", str(scp.port)], timeout_s=60)
        assert result.returncode == 0, result.stderr
        files = list(received.iterdir())
        assert [dcmread(p).SOPInstanceUID for p in files] == \
            ["1.2.826.0.1.3680043.8.498.500.1"]
    finally:
        storescp.terminate()
        storescp.wait(timeout=10)
        scp.config.move_destinations.pop("STORESCP", None)
