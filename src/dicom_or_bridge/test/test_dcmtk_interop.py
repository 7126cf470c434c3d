"""Interoperability with real dcmtk peers: findscu (Patient and Study Root, every level,
wildcard and range queries), getscu (also of an H.264 video), and movescu into a
storescp."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from bridge_fixtures import (
    ECG_SERIES,
    PATIENT_ID,
    STUDY,
    VIDEO_SERIES,
    running_scp,
    video,
    write_instance,
)
from dicom_or_test_common.peers import have, run_tool, storescp
from dicom_or_test_common.peers import tool_path as tool  # dcmtk's, not pynetdicom's scripts
from pydicom import dcmread
from pydicom.uid import MPEG4HP41
from test_scp import write_video

from dicom_or_bridge.snapshot import snapshot_dataset

pytestmark = pytest.mark.skipif(not have(tool("findscu")), reason="dcmtk is not installed")


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


def test_findscu_one_step_series_query_without_the_study(bridge, tmp_path):
    """"Which ES streams are live?" in one query: a Study Root SERIES query whose
    StudyInstanceUID is universal is answered over every study, as Orthanc answers it."""
    scp, _ = bridge
    code, series = findscu(scp.port, tmp_path, "-S", "QueryRetrieveLevel=SERIES",
                           "StudyInstanceUID", "Modality=ES", "RetrieveURL")
    assert code == 0
    assert [(s.StudyInstanceUID, s.Modality) for s in series] == [(STUDY, "ES")]
    assert series[0].RetrieveURL.startswith("ros2:/or/endoscope/frames?")
    code, any_study = findscu(scp.port, tmp_path, "-S", "QueryRetrieveLevel=SERIES",
                              "StudyInstanceUID=*", "SeriesInstanceUID")
    assert code == 0 and {s.SeriesInstanceUID for s in any_study} == {VIDEO_SERIES, ECG_SERIES}
    # Patient Root STUDY query without PatientID: every patient's studies.
    code, studies = findscu(scp.port, tmp_path, "-P", "QueryRetrieveLevel=STUDY",
                            "StudyInstanceUID", "PatientID")
    assert code == 0 and [(s.StudyInstanceUID, s.PatientID) for s in studies] == \
        [(STUDY, PATIENT_ID)]


def test_findscu_failure_status_is_reported(bridge, tmp_path):
    scp, _ = bridge
    result = run_tool([tool("findscu"), "-v", "-S", "-aec", "DICOM_OR", "-k",
                       "QueryRetrieveLevel=SERIES", "-k", "StudyInstanceUID=1.2.*",
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
    received = tmp_path / "received"
    with storescp(received) as store_port:
        scp.config.move_destinations["STORESCP"] = ("127.0.0.1", store_port)
        try:
            result = run_tool([tool("movescu"), "-P", "-aec", "DICOM_OR", "-aem", "STORESCP",
                               "-k", "QueryRetrieveLevel=IMAGE", "-k", f"PatientID={PATIENT_ID}",
                               "-k", f"StudyInstanceUID={STUDY}",
                               "-k", f"SeriesInstanceUID={VIDEO_SERIES}",
                               "-k", "SOPInstanceUID=1.2.826.0.1.3680043.8.498.500.1",
                               "127.0.0.1", str(scp.port)], timeout_s=60)
        finally:
            scp.config.move_destinations.pop("STORESCP", None)
    assert result.returncode == 0, result.stderr
    files = list(received.iterdir())
    assert [dcmread(p).SOPInstanceUID for p in files] == ["1.2.826.0.1.3680043.8.498.500.1"]


def test_movescu_of_a_live_video_series_delivers_archive_and_current_frame(tmp_path):
    """SERIES-level C-MOVE of a live video Series: its archived instances plus a snapshot of
    the current frame (what C-GET also returns), stored by a real storescp."""
    archive = tmp_path / "archive"
    archived = write_instance(archive, sop="1.2.826.0.1.3680043.8.498.600.1")
    pixels = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    asked = []

    def current_frame(series_uid: str):
        asked.append(series_uid)
        return snapshot_dataset(video(), pixels, "rgb8")

    received = tmp_path / "received"
    with storescp(received) as store_port, \
            running_scp(archive, snapshot=current_frame,
                        move_destinations={"STORESCP": ("127.0.0.1", store_port)}) as scp:
        result = run_tool([tool("movescu"), "-v", "-S", "-aec", "DICOM_OR", "-aem", "STORESCP",
                           "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={STUDY}",
                           "-k", f"SeriesInstanceUID={VIDEO_SERIES}", "127.0.0.1",
                           str(scp.port)], timeout_s=60)
    assert result.returncode == 0, result.stderr
    assert asked == [VIDEO_SERIES]  # the ECG Series is live but not video: no snapshot
    # Success (not 0xB000 warning): both sub-operations completed.
    assert "Received Final Move Response (Success)" in result.stderr + result.stdout
    got = [dcmread(p) for p in received.iterdir()]
    assert len(got) == 2
    archived_sop = dcmread(archived).SOPInstanceUID
    assert archived_sop in [ds.SOPInstanceUID for ds in got]
    (snap,) = [ds for ds in got if ds.SOPInstanceUID != archived_sop]
    assert snap.SOPClassUID == "1.2.840.10008.5.1.4.1.1.77.1.1"  # VL Endoscopic Image
    assert snap.SeriesInstanceUID == VIDEO_SERIES and snap.StudyInstanceUID == STUDY
    assert (snap.Rows, snap.Columns, snap.PhotometricInterpretation) == (4, 6, "RGB")
    assert snap.PixelData == pixels.tobytes()
    # A new instance of the Series: numbered after the archived one (1), not 1 again.
    assert snap.InstanceNumber == 2


def test_getscu_retrieves_an_h264_video_as_archived(tmp_path):
    """getscu +xn ("prefer MPEG4 AVC/H.264 HP / Level 4.1" for the storage contexts of its
    C-GET): the video arrives in 1.2.840.10008.1.2.4.102 with its bit stream unchanged."""
    archive = tmp_path / "archive"
    sop = "1.2.826.0.1.3680043.8.498.700.1"
    archived = dcmread(write_video(archive, sop, size=3 * 2**20 + 5))
    out = tmp_path / "out"
    out.mkdir()
    with running_scp(archive) as scp:
        result = run_tool([tool("getscu"), "-S", "+xn", "-aec", "DICOM_OR", "-od", str(out),
                           "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={STUDY}",
                           "-k", f"SeriesInstanceUID={VIDEO_SERIES}",
                           "-k", f"SOPInstanceUID={sop}", "127.0.0.1", str(scp.port)],
                          timeout_s=60)
    assert result.returncode == 0, result.stderr
    [path] = list(out.iterdir())
    got = dcmread(path)
    assert got.SOPInstanceUID == sop
    assert got.file_meta.TransferSyntaxUID == MPEG4HP41
    assert got.PixelData == archived.PixelData


def _make_pki(tmp_path: Path) -> dict[str, Path]:
    """A CA, a server certificate (localhost / 127.0.0.1) and a client certificate, both
    signed by the CA, made with the openssl CLI."""
    f = {name: tmp_path / f"{name}.pem" for name in
         ("ca", "ca_key", "server", "server_key", "client", "client_key", "rogue",
          "rogue_key")}

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    for name in ("ca", "rogue"):  # "rogue": a self-signed CA the bridge does not trust
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                str(f[f"{name}_key"]), "-out", str(f[name]), "-days", "1", "-subj",
                f"/CN=dicom_or test {name}")
    ext = tmp_path / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, cn, issuer in (("server", "localhost", "ca"), ("client", "FINDSCU", "ca")):
        csr = tmp_path / f"{name}.csr"
        openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout",
                str(f[f"{name}_key"]), "-out", str(csr), "-subj", f"/CN={cn}")
        openssl("x509", "-req", "-in", str(csr), "-CA", str(f[issuer]), "-CAkey",
                str(f[f"{issuer}_key"]), "-CAcreateserial", "-out", str(f[name]), "-days", "1",
                *(["-extfile", str(ext)] if name == "server" else []))
    return f


def _dcmtk_has_tls() -> bool:
    # findscu --version lists "OpenSSL" among its external libraries when built with TLS.
    result = run_tool([tool("findscu"), "--version"], timeout_s=30)
    return "openssl" in (result.stdout + result.stderr).lower()


def test_findscu_over_dicom_tls(tmp_path):
    """dcmtk findscu +tls against the bridge with mutual authentication (PS3.15 B.1): the
    bridge's certificate and the client's are signed by a test CA; a client without a
    certificate, and a client that does not trust the bridge's CA, are refused."""
    if not _dcmtk_has_tls():
        pytest.skip("this dcmtk is built without OpenSSL (findscu --version)")
    pki = _make_pki(tmp_path)
    with running_scp(tls_cert=str(pki["server"]), tls_key=str(pki["server_key"]),
                     tls_ca=str(pki["ca"])) as scp:
        def find(*tls: str) -> tuple[int, list]:
            out = tmp_path / "out"
            out.mkdir(exist_ok=True)
            for old in out.glob("rsp*.dcm"):
                old.unlink()
            result = run_tool([tool("findscu"), "-S", "-aet", "FINDSCU", "-aec", "DICOM_OR",
                               *tls, "-X", "-od", str(out), "-k", "QueryRetrieveLevel=SERIES",
                               "-k", f"StudyInstanceUID={STUDY}", "-k", "Modality",
                               "-k", "RetrieveURL", "127.0.0.1", str(scp.port)], timeout_s=60)
            return result.returncode, [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]

        code, answers = find("+tls", str(pki["client_key"]), str(pki["client"]),
                             "+cf", str(pki["ca"]))
        assert code == 0
        assert {str(a.Modality) for a in answers} == {"ES", "ECG"}
        assert all(str(a.RetrieveURL).startswith("ros2:") for a in answers)
        # No client certificate: the bridge requires one (tls_ca is set).
        code, answers = find("+tla", "+cf", str(pki["ca"]))
        assert code != 0 and answers == []
        # The client does not trust the bridge's CA: dcmtk refuses the handshake.
        code, answers = find("+tls", str(pki["client_key"]), str(pki["client"]),
                             "+cf", str(pki["rogue"]))
        assert code != 0 and answers == []
        # A client certificate from a CA the bridge does not know is refused as well.
        code, answers = find("+tls", str(pki["rogue_key"]), str(pki["rogue"]),
                             "+cf", str(pki["ca"]))
        assert code != 0 and answers == []
        # Plain TCP to a TLS port gets nothing.
        code, answers = find()
        assert code != 0 and answers == []
